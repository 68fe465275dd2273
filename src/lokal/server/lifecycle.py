"""Serving lifecycle: liveness (``GET /health``: the process answers, with the loaded models and
the llama.cpp backend and devices),
readiness (``GET /ready``: 200 when the default model is loaded or can be loaded from the store,
503 otherwise or while draining), and ``serve``: uvicorn with lokal's signal rules and graceful
shutdown (``GracefulServer``) and a bound on request heads (``HeadLimitedHttpToolsProtocol``),
run by ``lokal serve``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import threading
from collections.abc import Generator
from types import FrameType
from typing import Any

import httptools
import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from lokal import __version__
from lokal.config import Settings
from lokal.engine.devices import backend
from lokal.runtime.runtime import Runtime

log = logging.getLogger("lokal.server")
router = APIRouter(tags=["lokal"])


@router.get("/health")
async def health(request: Request) -> dict[str, object]:
    """Liveness: the server answers. Lists the loaded models and their engine load, and the
    llama.cpp backend ("cpu", "cuda") with its devices and their memory now."""
    runtime: Runtime = request.app.state.runtime
    models = [{"name": m.name, "running": m.engine.running, "waiting": m.engine.waiting} for m in runtime.status()]
    # off the event loop: a CUDA device's first memory query makes its context (seconds)
    found = (await asyncio.to_thread(backend)).to_dict()
    return {"status": "ok", "version": __version__, "loaded": models,
            "backend": found["backend"], "devices": found["devices"]}


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


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop httptools at a head over the bound."""


class HeadLimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (llhttp, in C) with a bound on each request's head, the request
    line plus headers, enforced while it arrives: beyond ``max_head_bytes`` the client gets
    ``431 Request Header Fields Too Large`` and the connection closes. Parsing is unchanged;
    the bound costs a few integer operations per read.

    httptools hands a header over only once it is complete, gathering its bytes itself, so the
    bound counts reads: the raw bytes of the reads that end inside a head are head, and once they
    pass the bound the head is refused, as it streams in. A connection thus holds at most the
    bound plus one read (the event loop reads up to 256 KiB at a time) of any head. A head that
    completes inside a read is measured when it completes (URL and headers as parsed), only
    when the reads it may span could pass the bound. After a 431 the server reads and drops what
    the client still sends, for up to ``LINGER_S`` seconds or ``LINGER_BYTES`` bytes, so that the
    client can read the answer before the close (closing on unread data would reset it).

    uvicorn's h11 protocol has the like ``h11_max_incomplete_event_size`` (16 KiB by default,
    counted on its receive buffer), but answers 400 and parses in Python."""

    max_head_bytes = 64 * 1024
    LINGER_S = 2.0
    LINGER_BYTES = 16 * 1024 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # waiting for a request, or reading its request line and headers
        self._heads = 0  # heads completed on this connection
        self._head_reads = 0  # bytes of the reads that were all head (of the current head)
        self._head_span = 0  # bytes of the earlier reads the current head may span (an upper bound)
        self._read = 0  # bytes of the read being parsed
        self._refused = False
        self._dropped = 0
        self._linger: asyncio.TimerHandle | None = None

    @classmethod
    def limited_to(cls, max_head_bytes: int) -> type[HeadLimitedHttpToolsProtocol]:
        """This protocol with its bound set (uvicorn.Config takes a class, and makes one per connection)."""
        return type(cls.__name__, (cls,), {"max_head_bytes": max_head_bytes})

    def data_received(self, data: bytes) -> None:
        if self._refused:  # lingering after a 431
            self._dropped += len(data)
            if self._dropped > self.LINGER_BYTES:
                self.transport.close()
            return
        counting, heads, self._read = self._in_head, self._heads, len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._refused:  # on_headers_complete raised _HeadTooLarge
                self._refused = False
                self._refuse()
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if not self._in_head:
            return
        if counting and self._heads == heads:  # the whole read was head
            self._head_reads += self._read
            self._head_span += self._read
            if self._head_reads > self.max_head_bytes:
                self._refuse()
        else:  # a head began inside this read
            self._head_span = self._read

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._heads += 1
        span, self._head_span, self._head_reads = self._head_span + self._read, 0, 0
        if span > self.max_head_bytes and (
            len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers) > self.max_head_bytes
        ):
            self._refused = True
            raise _HeadTooLarge  # stops the parser; data_received answers 431
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        super().connection_lost(exc)

    def _refuse(self) -> None:
        """431 and close (after the lingering read); a connection still answering an earlier
        pipelined request is closed at once, as a 431 would land inside that answer."""
        self._refused = True
        prefix = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
        self.logger.warning("%srequest line and headers over %d bytes (LOKAL_MAX_HEADER_BYTES): 431",
                            prefix, self.max_head_bytes)
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()
            return
        msg = f"request line and headers are larger than {self.max_head_bytes} bytes (LOKAL_MAX_HEADER_BYTES)"
        content = [STATUS_LINE[431]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: " + str(len(msg)).encode("ascii") + b"\r\n",
            b"connection: close\r\n",
            b"\r\n",
            msg.encode("ascii"),
        ])
        self.transport.write(b"".join(content))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._linger = self.loop.call_later(self.LINGER_S, self.transport.close)


def serve(app: FastAPI, settings: Settings) -> None:
    """Run app on settings.host:port until a signal, with LOKAL_SHUTDOWN_GRACE for running requests
    and LOKAL_MAX_HEADER_BYTES for each request's line and headers."""
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            timeout_graceful_shutdown=int(math.ceil(settings.shutdown_grace)),
                            http=HeadLimitedHttpToolsProtocol.limited_to(settings.max_header_bytes),
                            h11_max_incomplete_event_size=settings.max_header_bytes)
    GracefulServer(config, app).run()
