"""Model management: ``GET /api/tags``, ``POST /api/show``, ``GET /api/ps``, ``POST /api/copy``,
``DELETE /api/delete``, ``GET /api/version``."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Response

from lokal import __version__
from lokal.runtime.runtime import Runtime
from lokal.server.errors import APIError
from lokal.server.generation import get_runtime
from lokal.server.ollama.capabilities import capabilities
from lokal.server.ollama.schemas import (
    CopyRequest,
    DeleteRequest,
    ListedModel,
    ModelDetails,
    PsResponse,
    RunningModel,
    ShowRequest,
    ShowResponse,
    TagsResponse,
    VersionResponse,
    rfc3339,
)
from lokal.store.errors import InvalidModelName, ModelNotFound, StoreError
from lokal.store.gguf_facts import ArraySummary, GgufFacts
from lokal.store.manifest import Manifest

router = APIRouter(tags=["ollama"])

def human_number(n: int) -> str:
    """Ollama's parameter_size: "135M", "134.52M", "8.0B"-style (format.HumanNumber)."""
    for unit, scale, decimals in (("B", 1e9, 1), ("M", 1e6, 2), ("K", 1e3, 0)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{unit}" if value == math.floor(value) or unit == "K" else f"{value:.{decimals}f}{unit}"
    return str(n)


def details(manifest: Manifest) -> ModelDetails:
    facts = manifest.facts
    family = facts.architecture or ""
    return ModelDetails(
        format=manifest.format,
        family=family,
        families=[family] if family else None,
        parameter_size=human_number(facts.parameter_count) if facts.parameter_count else "",
        quantization_level=facts.quantization or "",
        kind=manifest.kind,
    )


def short_digest(digest: str) -> str:
    """Ollama lists digests as bare hex."""
    return digest.removeprefix("sha256:")


def _get_manifest(runtime: Runtime, name: str) -> Manifest:
    try:
        return runtime.store.get(name)
    except InvalidModelName as exc:
        raise APIError(400, str(exc), param="model") from exc
    except ModelNotFound as exc:
        raise APIError(404, f'model "{name}" not found', param="model") from exc


@router.get("/tags", response_model=TagsResponse)
async def tags(runtime: Runtime = Depends(get_runtime)) -> TagsResponse:
    models = await asyncio.to_thread(runtime.store.list)
    return TagsResponse(models=[
        ListedModel(name=m.name, model=m.name, modified_at=rfc3339(m.modified_at), size=m.size,
                    digest=short_digest(m.digest), details=details(m))
        for m in sorted(models, key=lambda m: m.modified_at, reverse=True)
    ])


@router.get("/ps", response_model=PsResponse)
async def ps(runtime: Runtime = Depends(get_runtime)) -> PsResponse:
    running = []
    for status in runtime.status():
        m = status.manifest
        running.append(RunningModel(
            name=status.name, model=status.name, size=status.memory_bytes, digest=short_digest(m.digest),
            details=details(m), expires_at=rfc3339(status.expires_at),
            size_vram=status.offload.size_vram if status.offload is not None else 0,
            context_length=status.context_length,
        ))
    for speech in runtime.speech.status():  # Whisper and Piper models: weights in RAM, no context
        running.append(RunningModel(
            name=speech.name, model=speech.name, size=speech.memory_bytes, digest=short_digest(speech.manifest.digest),
            details=details(speech.manifest), expires_at=rfc3339(speech.expires_at), size_vram=0, context_length=0,
        ))
    return PsResponse(models=running)


@router.post("/show", response_model=ShowResponse)
async def show(req: ShowRequest, runtime: Runtime = Depends(get_runtime)) -> ShowResponse:
    m = _get_manifest(runtime, req.model)
    return ShowResponse(
        license=m.license or m.facts.license or "",
        modelfile=_modelfile(m),
        parameters=modelfile_parameters(m.parameters),
        template=m.template or m.facts.chat_template or "",
        system=m.system or "",
        messages=list(m.messages),
        details=details(m),
        model_info=model_info(m.facts, verbose=req.verbose),
        capabilities=await asyncio.to_thread(capabilities, m.facts, m.template, _gguf_path(runtime, m),
                                          m.projector is not None),
        modified_at=rfc3339(m.modified_at),
    )


def _modelfile(manifest: Manifest) -> str:
    try:
        from lokal.store.modelfile import render_modelfile
    except ImportError:  # store/modelfile.py not there yet: at least say where the model comes from
        return f"FROM {manifest.name}\n"
    return render_modelfile(manifest)


def modelfile_parameters(parameters: dict[str, Any]) -> str:
    """Ollama's ``parameters`` text: one ``name value`` line per value (lists repeat the name)."""
    lines = []
    for key, value in parameters.items():
        for v in value if isinstance(value, list) else [value]:
            lines.append(f"{key:<30} {json.dumps(v) if isinstance(v, str) else v}")
    return "\n".join(lines)


def model_info(facts: GgufFacts, verbose: bool) -> dict[str, Any]:
    """The GGUF metadata; long arrays (vocabulary, merges) are null, as in Ollama without verbose
    (lokal does not keep them, so verbose cannot show them either)."""
    info: dict[str, Any] = {}
    for key, value in sorted(facts.metadata.items()):
        if key == "tokenizer.chat_template":
            continue  # shown as template
        info[key] = None if isinstance(value, ArraySummary) else value
    if facts.parameter_count is not None:
        info.setdefault("general.parameter_count", facts.parameter_count)
    return info


def _gguf_path(runtime: Runtime, manifest: Manifest) -> Path | None:
    try:
        return runtime.store.gguf_path(manifest.name)
    except StoreError:  # a model llama.cpp cannot load: shown, but no vocabulary to read
        return None


@router.post("/copy")
async def copy(req: CopyRequest, runtime: Runtime = Depends(get_runtime)) -> Response:
    try:
        await asyncio.to_thread(runtime.store.copy, req.source, req.destination)
    except InvalidModelName as exc:
        raise APIError(400, str(exc)) from exc
    except ModelNotFound as exc:
        raise APIError(404, f'model "{req.source}" not found') from exc
    except StoreError as exc:
        raise APIError(500, str(exc), type="server_error") from exc
    return Response(status_code=200)


@router.delete("/delete")
async def delete(req: DeleteRequest, runtime: Runtime = Depends(get_runtime)) -> Response:
    _get_manifest(runtime, req.model)
    if runtime.is_loaded(req.model):
        await runtime.unload(req.model)
    try:
        await asyncio.to_thread(runtime.store.delete, req.model)
    except ModelNotFound as exc:
        raise APIError(404, f'model "{req.model}" not found') from exc
    return Response(status_code=200)


@router.get("/version", response_model=VersionResponse)
async def version() -> VersionResponse:
    return VersionResponse(version=__version__)
