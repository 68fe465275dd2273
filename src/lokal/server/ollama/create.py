"""``POST /api/create`` (a model from another one or from an uploaded GGUF, with its system
prompt, template, parameters, messages and license) and ``HEAD/POST /api/blobs/sha256:<hex>``."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from lokal.runtime.runtime import Runtime
from lokal.server.errors import APIError
from lokal.server.generation import get_runtime
from lokal.server.ollama.ndjson import ndjson_response
from lokal.server.ollama.progress import as_status_lines, last_status, run_in_thread_with_progress
from lokal.server.ollama.schemas import CreateRequest
from lokal.store.digests import parse_digest
from lokal.store.errors import InvalidGguf, InvalidModelName, ModelNotFound, StoreError
from lokal.store.gguf_facts import read_gguf_facts
from lokal.store.loadable import UnloadableGguf, check_loadable
from lokal.store.model_store import ModelStore
from lokal.store.progress import ProgressCallback, PullProgress

if TYPE_CHECKING:
    from lokal.store.modelfile import Modelfile

router = APIRouter(tags=["ollama"])

_CHUNK = 1 << 20


# ---- blobs ------------------------------------------------------------------------------------

def _digest(digest: str) -> str:
    try:
        return parse_digest(digest)
    except StoreError as exc:
        raise APIError(400, f"invalid digest {digest!r}: expected sha256:<64 hex digits>", param="digest") from exc


@router.head("/blobs/{digest}")
async def blob_exists(digest: str, runtime: Runtime = Depends(get_runtime)) -> Response:
    exists = runtime.store.blob_path(_digest(digest)).is_file()
    return Response(status_code=200 if exists else 404)


@router.post("/blobs/{digest}", status_code=201)
async def upload_blob(digest: str, request: Request, runtime: Runtime = Depends(get_runtime)) -> Response:
    """Store the body as a blob if its sha256 is ``digest`` and it is a GGUF file (the only
    kind of file lokal can use in ``files``): a model llama.cpp can load, or a LoRA adapter for
    ``adapters`` (checked against its base model by /api/create)."""
    expected = _digest(digest)
    store = runtime.store
    if store.blob_path(expected).is_file():
        return Response(status_code=201)  # already stored (blobs only ever appear verified)
    with store.partial_file("upload") as (partial, f):  # locked: the store's clean-up leaves it alone
        sha = hashlib.sha256()
        async for chunk in request.stream():
            sha.update(chunk)
            f.write(chunk)
        f.flush()
        got = f"sha256:{sha.hexdigest()}"
        if got != expected:
            raise APIError(400, f"digest mismatch, expected {expected}, got {got}", param="digest")
        try:
            facts = await asyncio.to_thread(read_gguf_facts, partial)
            if facts.metadata.get("general.type") != "adapter":
                check_loadable(facts, partial)
        except UnloadableGguf as exc:
            raise APIError(400, f"llama.cpp cannot load this GGUF file: {exc.reason}") from exc
        except InvalidGguf as exc:
            raise APIError(400, f"the blob is not a GGUF file; lokal only stores GGUF models ({exc})") from exc
        await asyncio.to_thread(store.add_blob, partial, expected)
    return Response(status_code=201)


# ---- create ----------------------------------------------------------------------------------

@router.post("/create", response_model=None)
async def create(req: CreateRequest, runtime: Runtime = Depends(get_runtime)) -> dict[str, Any] | StreamingResponse:
    store, name = runtime.store, req.model
    if req.quantize:
        work = _quantizing(req, runtime)
    else:
        modelfile = _modelfile(req, store)

        def work(report: ProgressCallback) -> None:
            _create(store, name, modelfile, report)

    lines = run_in_thread_with_progress(work)
    if req.stream:
        return ndjson_response(as_status_lines(lines))
    return await last_status(lines)


def _modelfile(req: CreateRequest, store: ModelStore) -> Modelfile:
    """The request as a Modelfile: the old API's Modelfile text, overridden by the JSON fields."""
    from lokal.store.modelfile import AdapterRef, Modelfile, parse_modelfile, parse_parameter

    try:
        base = parse_modelfile(req.modelfile) if req.modelfile else None
    except ValueError as exc:
        raise APIError(400, f"invalid modelfile: {exc}", param="modelfile") from exc
    source = req.from_ or (base.from_ if base else None)
    if req.files:
        source = _gguf_from_files(req.files, store)
    if not source:
        raise APIError(400, "neither 'from' nor 'files' was specified", param="from")
    license = "\n".join(req.license) if isinstance(req.license, list) else req.license
    try:
        parameters = {key: parse_parameter(key, value) for key, value in (req.parameters or {}).items()}
    except ValueError as exc:
        raise APIError(400, f"invalid parameters: {exc}", param="parameters") from exc
    messages = [{"role": m.role, "content": m.content} for m in req.messages or []]
    # Ollama's adapters: {file name: digest of an uploaded blob}; each is checked against the base by create
    adapters = [AdapterRef(_digest(digest)) for digest in (req.adapters or {}).values()]
    return Modelfile(
        from_=source,
        parameters={**(base.parameters if base else {}), **parameters},
        system=req.system if req.system is not None else (base.system if base else None),
        template=req.template if req.template is not None else (base.template if base else None),
        messages=messages or (list(base.messages) if base else []),
        license=license if license is not None else (base.license if base else None),
        adapters=adapters or (list(base.adapters) if base else []),
    )


def _quantizing(req: CreateRequest, runtime: Runtime) -> Callable[[ProgressCallback], None]:
    """Ollama's ``{"model": new, "from": model, "quantize": "q4_K_M"}``: the work that quantizes the
    stored model ``from`` into ``model`` (lokal.workshop.quantize), then applies the request's other
    fields (system, template, parameters, …) to it. What can be refused is refused here, before any
    line streams: an unknown type or model, a source that is already quantized (as in Ollama)."""
    from lokal.workshop.quantize import QuantizeError, check_source, parse_quant_type, quantize_model

    store = runtime.store
    if req.files or not req.from_:
        raise APIError(400, "quantize needs 'from': a model in the store (uploaded files are not quantized)",
                       param="from")
    try:
        qtype = parse_quant_type(req.quantize or "")
        check_source(store.get(req.from_), qtype, allow_requantize=False)
    except QuantizeError as exc:
        raise APIError(400, str(exc), param="quantize") from exc
    except ModelNotFound as exc:
        raise APIError(404, str(exc), param="from") from exc
    except InvalidModelName as exc:
        raise APIError(400, str(exc), param="from") from exc
    rest = req.model_copy(update={"quantize": None, "from_": req.model})  # the other fields, on the new model
    overlay = _modelfile(rest, store) if rest.model_fields_set & _MODELFILE_FIELDS else None
    source, name, threads = req.from_, req.model, runtime.settings.threads

    def work(report: ProgressCallback) -> None:
        quantize_model(store, source, qtype, name=name, threads=threads, progress=report)
        if overlay is not None:
            _create(store, name, overlay, report)

    return work


_MODELFILE_FIELDS = {"template", "license", "system", "parameters", "messages", "modelfile", "adapters"}


def _gguf_from_files(files: dict[str, str], store: ModelStore) -> str:
    """The one uploaded GGUF blob named in ``files`` ({file name: digest}), as ``sha256:<hex>``."""
    ggufs = {name: digest for name, digest in files.items() if name.lower().endswith(".gguf")}
    if len(ggufs) != 1 or len(files) != 1:
        raise APIError(400, "files must name exactly one .gguf file (safetensors and other files are not supported)",
                       param="files")
    (digest,) = ggufs.values()
    digest = _digest(digest)
    if not store.blob_path(digest).is_file():
        raise APIError(400, f"blob {digest} not found: upload it with POST /api/blobs/{digest} first",
                       param="files")
    return digest


def _create(store: ModelStore, name: str, modelfile: Modelfile, report: ProgressCallback) -> None:
    from lokal.store.create import create_model

    if modelfile.from_.startswith("sha256:"):
        report(PullProgress("parsing GGUF"))
    # FROM a path would read any file the server can: over HTTP only names and uploaded blobs.
    create_model(store, name, modelfile, progress=report, allow_paths=False)
