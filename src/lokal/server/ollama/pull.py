"""``POST /api/pull``: the store's pull in a thread, its progress as Ollama's NDJSON status lines.
``POST /api/push``: refused in Ollama's error shape (lokal has no registry to push to)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from lokal.runtime.runtime import Runtime
from lokal.server.errors import APIError
from lokal.server.generation import get_runtime
from lokal.server.ollama.ndjson import ndjson_response
from lokal.server.ollama.progress import as_status_lines, last_status, run_in_thread_with_progress
from lokal.server.ollama.schemas import PullRequest, PushRequest
from lokal.workshop.hf_import import pull_or_convert

router = APIRouter(tags=["ollama"])


@router.post("/pull", response_model=None)
async def pull(req: PullRequest, runtime: Runtime = Depends(get_runtime)) -> dict[str, Any] | StreamingResponse:
    """Pull a catalog or hf.co/ model (an hf.co/ repository with no GGUF file is converted from its
    safetensors: docs/workshop.md). A pull whose client goes away still finishes."""
    store, name, settings = runtime.store, req.model, runtime.settings
    lines = run_in_thread_with_progress(lambda report: pull_or_convert(store, name, settings, report).manifest)
    if req.stream:
        return ndjson_response(as_status_lines(lines))
    return await last_status(lines)


PUSH_UNSUPPORTED = ("pushing models is not supported: lokal serves models from its local store and has no registry "
                    "to push to; copy the model's GGUF or use `ollama push` against an Ollama registry")


@router.post("/push", response_model=None)
async def push(req: PushRequest) -> dict[str, Any]:
    """Ollama's push: always a 400 saying lokal cannot push (not a 404 that reads as a missing route)."""
    raise APIError(400, f"{PUSH_UNSUPPORTED} (model {req.model!r})", code="push_not_supported")
