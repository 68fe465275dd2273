"""The composition root: one FastAPI app that wires the runtime to every API surface, the web UI,
metrics, security and the serving lifecycle. Nothing else imports both ``server`` and ``ui``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

from lokal import __version__
from lokal.config import Settings
from lokal.runtime.runtime import Runtime
from lokal.server import security
from lokal.server.anthropic.routes import router as anthropic_router
from lokal.server.audio import router as audio_router
from lokal.server.embeddings import router as embeddings_router
from lokal.server.errors import install_error_handlers
from lokal.server.json_body import JsonBodyMiddleware
from lokal.server.lifecycle import router as lifecycle_router
from lokal.server.metrics import Metrics
from lokal.server.metrics import router as metrics_router
from lokal.server.ollama.routes import router as ollama_router
from lokal.server.openai.routes import router as openai_router
from lokal.server.rerank import router as rerank_router
from lokal.server.responses.routes import router as responses_router
from lokal.server.tokens import router as tokens_router
from lokal.ui import routes as ui
from lokal.ui.request_log import RequestLog


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
    for router in (openai_router, ollama_router, embeddings_router, lifecycle_router, metrics_router, ui.router):
        app.include_router(router)
    app.include_router(anthropic_router)
    app.include_router(responses_router)
    app.include_router(tokens_router)
    app.include_router(rerank_router)
    app.include_router(audio_router)

    metrics = Metrics(runtime)
    request_log = RequestLog()  # recent generations, for the UI's monitor
    runtime.subscribe(metrics.observe_generation)
    runtime.subscribe(request_log.observe)
    app.state.metrics = metrics
    app.state.request_log = request_log
    app.add_middleware(JsonBodyMiddleware)  # a body without a JSON content type is JSON (as in Ollama)
    security.install(app, settings, runtime, sinks=[metrics.observe])  # keys, limits, audit log; outermost

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

    return app
