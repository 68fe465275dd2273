"""Limits on what one client may ask: requests and tokens per minute (per API key, or per client
address when auth is off), request body size, and CORS. Limits on a single generation
(max_tokens, prompt length, timeout) are the runtime's (``lokal.runtime.pipeline``).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lokal.runtime.events import Event, Failed, Finished, GenerationRecord
from lokal.server.errors import APIError
from lokal.server.security.auth import is_open, send_error
from lokal.server.security.keys import KeyFileError, KeyStore
from lokal.server.security.tracking import current_request, identity

WINDOW_S = 60.0
UNLIMITED_PATHS = frozenset({"/metrics"})
OLLAMA_RATE_LIMITED = "rate limit exceeded, try again later"


@dataclass
class _Usage:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_sum: int = 0


class RateLimiter:
    """Sliding one-minute windows of requests and tokens per identity (key name or address)."""

    def __init__(self, rpm: int, tpm: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self._clock = clock
        self._usage: dict[str, _Usage] = {}

    @property
    def enabled(self) -> bool:
        """Whether the server-wide limits are on (a key may still have its own)."""
        return self.rpm > 0 or self.tpm > 0

    def _window(self, who: str, now: float) -> _Usage:
        usage = self._usage.setdefault(who, _Usage())
        while usage.requests and usage.requests[0] <= now - WINDOW_S:
            usage.requests.popleft()
        while usage.tokens and usage.tokens[0][0] <= now - WINDOW_S:
            usage.token_sum -= usage.tokens.popleft()[1]
        return usage

    def admit(self, who: str, rpm: int | None = None, tpm: int | None = None) -> float | None:
        """Count one request; None if admitted, else the seconds until one would be. rpm and tpm
        replace the limiter's own limits for this identity (a key's own limits)."""
        rpm = self.rpm if rpm is None else rpm
        tpm = self.tpm if tpm is None else tpm
        now = self._clock()
        usage = self._window(who, now)
        if rpm and len(usage.requests) >= rpm:
            return usage.requests[0] + WINDOW_S - now
        if tpm and usage.token_sum >= tpm:
            # wait until enough old tokens leave the window to bring the sum under the limit
            over = usage.token_sum - tpm
            for t, n in usage.tokens:
                over -= n
                if over < 0:
                    return t + WINDOW_S - now
        usage.requests.append(now)
        if len(self._usage) > 10_000:  # forget idle identities so addresses cannot grow the map
            for idle in [k for k, u in self._usage.items() if not u.requests and not u.tokens]:
                del self._usage[idle]
        return None

    def charge(self, who: str, tokens: int) -> None:
        """Count tokens a finished request used."""
        if tokens > 0:
            usage = self._window(who, self._clock())
            usage.tokens.append((self._clock(), tokens))
            usage.token_sum += tokens

    def charge_generation(self, record: GenerationRecord, event: Event) -> None:
        """Runtime subscriber: charge a finished generation's tokens to its caller's identity."""
        if isinstance(event, Finished | Failed) and record.caller.identity:
            self.charge(record.caller.identity, record.prompt_tokens + record.completion_tokens)


class RateLimitMiddleware:
    """429 with Retry-After once an identity is over its requests or tokens per minute.
    Sits inside AuthMiddleware, which names the key."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter, keys: KeyStore) -> None:
        self.app = app
        self.limiter = limiter
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        facts = current_request.get()
        if (scope["type"] != "http" or facts is None
                or is_open(scope["method"], scope["path"]) or scope["path"] in UNLIMITED_PATHS):
            await self.app(scope, receive, send)
            return
        try:
            key = self.keys.keys().get(facts.key_name) if facts.key_name else None
        except KeyFileError:  # broken since auth read it: auth answers 503 on the next request
            key = None
        rpm = key.rpm if key is not None and key.rpm is not None else self.limiter.rpm
        tpm = key.tpm if key is not None and key.tpm is not None else self.limiter.tpm
        if not rpm and not tpm:
            await self.app(scope, receive, send)
            return
        wait = self.limiter.admit(identity(facts), rpm, tpm)
        if wait is not None:
            retry = str(max(1, math.ceil(wait)))
            await send_error(scope, send, APIError(
                429, f"rate limit exceeded for this key: retry in {retry} s", type="rate_limit_error",
                code="rate_limit_exceeded", headers={"Retry-After": retry}, ollama_message=OLLAMA_RATE_LIMITED,
            ))
            return
        await self.app(scope, receive, send)


STREAMED_UPLOADS = ("/api/blobs/",)  # written to disk as they arrive, checked against their digest


class BodyLimitMiddleware:
    """413 for a request body over ``max_bytes``, declared (Content-Length) or streamed (chunked).
    Blob uploads (``ollama create`` pushing a GGUF) are streamed to disk and exempt."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _error(self) -> APIError:
        return APIError(413, f"request body is larger than {self.max_bytes} bytes (LOKAL_MAX_BODY_BYTES)",
                        code="request_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(STREAMED_UPLOADS):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await send_error(scope, send, self._error())
                return
        received = 0
        too_large = False

        async def receive_() -> Message:
            nonlocal received, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # stop reading; the app's answer is replaced below
                    too_large = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def send_(message: Message) -> None:
            if not too_large:
                await send(message)
            elif message["type"] == "http.response.start":
                await send_error(scope, send, self._error())

        await self.app(scope, receive_, send_)


def install_cors(app: FastAPI, origins: str) -> None:
    """CORS for the listed origins only (comma-separated; ``*`` for any); nothing when empty."""
    allowed = [o.strip() for o in origins.split(",") if o.strip()]
    if allowed:
        app.add_middleware(
            CORSMiddleware, allow_origins=allowed, allow_methods=["*"], allow_headers=["*"],
            expose_headers=["Retry-After"], max_age=600,
        )
