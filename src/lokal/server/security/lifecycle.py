"""Readiness: ``GET /ready`` is 200 when the default model is loaded or can be loaded from the
store, 503 otherwise (``/health`` only says the process answers). Graceful shutdown itself is
uvicorn's: ``lokal serve`` passes ``LOKAL_SHUTDOWN_GRACE`` as ``timeout_graceful_shutdown``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from lokal.runtime.runtime import Runtime

router = APIRouter(tags=["lokal"])


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """Readiness: 200 when the default model is loaded or loadable, else 503 with the reason."""
    runtime: Runtime = request.app.state.runtime
    model = runtime.settings.default_model
    if runtime.is_loaded(model):
        return JSONResponse({"status": "ready", "model": model, "loaded": True})
    try:
        runtime.store.get(model)
    except Exception as exc:  # any store failure means "not ready", with its reason
        return JSONResponse({"status": "not ready", "model": model, "reason": str(exc)}, status_code=503)
    return JSONResponse({"status": "ready", "model": model, "loaded": False})
