"""The FastAPI application: one port for every API surface."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

from lokal import __version__
from lokal.config import Settings
from lokal.runtime.runtime import Runtime
from lokal.server import security
from lokal.server.embeddings import router as embeddings_router
from lokal.server.errors import install_error_handlers
from lokal.server.ollama.routes import router as ollama_router
from lokal.server.openai.routes import router as openai_router
from lokal.ui import routes as ui
from lokal.ui.request_log import RequestLog, RequestLogMiddleware


def create_app(
    settings: Settings | None = None, runtime: Runtime | None = None, preload: list[str] | None = None
) -> FastAPI:
    """Build the app around a runtime (made from settings when not given); models in preload
    are loaded before the server accepts requests."""
    settings = settings or Settings()
    runtime = runtime or Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for name in preload or []:
            await runtime.get(name)
        yield
        await runtime.close()

    app = FastAPI(
        title="lokal",
        version=__version__,
        description="Local LLM runtime: OpenAI- and Ollama-compatible APIs on llama.cpp with continuous batching.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(openai_router)
    app.include_router(ollama_router)
    app.include_router(embeddings_router)
    app.include_router(ui.router)
    app.state.request_log = RequestLog()  # recent generation requests, for the UI's monitor
    app.add_middleware(RequestLogMiddleware, log=app.state.request_log)
    security.install(app, settings, runtime)  # keys, limits, /metrics, audit log, /ready; outermost

    @app.get("/", response_class=PlainTextResponse, tags=["ollama"])
    async def root(request: Request) -> Response:
        """Ollama's heartbeat: clients (the ollama CLI, Open WebUI, editors) probe ``/`` and some
        match its exact text, so lokal answers as Ollama does. ``/health`` says what lokal is.
        A browser (Accept: text/html) gets the web UI instead."""
        if ui.wants_html(request):
            return ui.page()
        return PlainTextResponse("Ollama is running")

    @app.head("/", response_class=PlainTextResponse, tags=["ollama"])
    async def root_head() -> str:
        return "Ollama is running"

    @app.get("/health", tags=["lokal"])
    async def health() -> dict[str, object]:
        """Liveness: the server answers. Lists the loaded models and their engine load."""
        models = []
        for m in runtime.loaded():
            s = m.engine.stats()
            models.append({"name": m.name, "running": s.running, "waiting": s.waiting})
        return {"status": "ok", "version": __version__, "loaded": models}

    return app
