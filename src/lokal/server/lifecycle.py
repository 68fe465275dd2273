"""Serving lifecycle: liveness (``GET /health``: the process answers, with the loaded models),
readiness (``GET /ready``: 200 when the default model is loaded or can be loaded from the store,
503 otherwise or while draining), and ``serve``: uvicorn with lokal's signal rules and graceful
shutdown (``GracefulServer``), run by ``lokal serve``."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
from collections.abc import Generator
from types import FrameType

import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from lokal import __version__
from lokal.config import Settings
from lokal.runtime.runtime import Runtime

log = logging.getLogger("lokal.server")
router = APIRouter(tags=["lokal"])


@router.get("/health")
async def health(request: Request) -> dict[str, object]:
    """Liveness: the server answers. Lists the loaded models and their engine load."""
    runtime: Runtime = request.app.state.runtime
    models = [{"name": m.name, "running": m.engine.running, "waiting": m.engine.waiting} for m in runtime.status()]
    return {"status": "ok", "version": __version__, "loaded": models}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """Readiness: 200 when the default model is loaded or loadable, else 503 with the reason."""
    runtime: Runtime = request.app.state.runtime
    model = runtime.settings.default_model
    if getattr(request.app.state, "draining", False):
        return JSONResponse({"status": "shutting down", "model": model}, status_code=503)
    if runtime.is_loaded(model):
        return JSONResponse({"status": "ready", "model": model, "loaded": True})
    try:
        runtime.store.get(model)
    except Exception as exc:  # any store failure means "not ready", with its reason
        return JSONResponse({"status": "not ready", "model": model, "reason": str(exc)}, status_code=503)
    return JSONResponse({"status": "ready", "model": model, "loaded": False})


class GracefulServer(uvicorn.Server):
    """uvicorn with lokal's signal rules: the first SIGTERM or SIGINT stops accepting connections,
    marks the server not ready and lets running requests finish for up to
    ``timeout_graceful_shutdown`` seconds, then the models are unloaded and the process exits 0;
    a second signal (either kind) exits at once."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.api = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            log.warning("second %s: exiting now", signal.Signals(sig).name)
            os._exit(128 + sig)
        self.api.state.draining = True
        log.warning("%s: finishing running requests for up to %g s (signal again to exit now)",
                    signal.Signals(sig).name, self.config.timeout_graceful_shutdown or 0)
        self.should_exit = True

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """SIGTERM and SIGINT are blocked in every thread and taken by one waiting thread
        (sigwait). A signal handler that runs on the engine's thread or llama.cpp's worker threads
        was seen to stall decoding mid-stream; blocked signals never interrupt them. (uvicorn
        would also re-raise the signal after a graceful stop, so that the process dies by it;
        lokal exits 0.) Threads made later (the model's engine) inherit the mask."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = {signal.SIGINT, signal.SIGTERM}
        # threads that existed before (none of lokal's) keep the signals unblocked: for them, a handler
        handlers = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        log.debug("threads before serving: %s", [t.name for t in threading.enumerate()])

        def wait() -> None:
            while True:
                self.handle_exit(signal.sigwait(signals), None)

        threading.Thread(target=wait, name="signals", daemon=True).start()
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)


def serve(app: FastAPI, settings: Settings) -> None:
    """Run app on settings.host:port until a signal, with LOKAL_SHUTDOWN_GRACE for running requests."""
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            timeout_graceful_shutdown=int(math.ceil(settings.shutdown_grace)))
    GracefulServer(config, app).run()
