"""What is known about the request being served, gathered as it runs and handed to the metrics
and the audit log when it ends.

``TrackingMiddleware`` is the outermost of lokal's own middlewares: it makes one
``RequestFacts`` per HTTP request and puts it in a context variable; auth fills in the key
name, and ``attach_generation`` (a subscriber of the runtime's events, called in the request's
context) the model, tokens and TTFT of the generations it ran. When the response is over, every
sink (HTTP metrics, audit) gets the finished facts.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

from fastapi import FastAPI
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lokal.runtime.events import Event, Failed, Finished, GenerationRecord

log = logging.getLogger("lokal.server")

PROMPT_PEEK_BYTES = 1 << 20  # prompt text for the audit log comes from the first MiB of a body


@dataclass
class RequestFacts:
    """One request, as the metrics and the audit log see it (times in seconds)."""

    method: str
    path: str
    client: str
    started_at: float  # Unix time
    started: float = field(default_factory=time.perf_counter)
    route: str = ""  # the matched route's template, e.g. /v1/models/{model_id}
    status: int = 0
    key_name: str | None = None
    request_id: str = ""
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None
    prompt_text: str | None = None
    latency_s: float = 0.0


current_request: ContextVar[RequestFacts | None] = ContextVar("lokal_request", default=None)

Sink = Callable[[RequestFacts], object]


def identity(facts: RequestFacts) -> str:
    """Who a request counts against for rate limits: its API key, else its client address."""
    return f"key:{facts.key_name}" if facts.key_name else f"addr:{facts.client.rsplit(':', 1)[0]}"


def attach_generation(record: GenerationRecord, event: Event) -> None:
    """Runtime subscriber: a generation that ends adds its model, tokens and TTFT to the facts of
    the HTTP request that ran it (none outside an HTTP request: the CLI, the LLM class)."""
    facts = current_request.get()
    if facts is None or not isinstance(event, Finished | Failed):
        return
    facts.model = record.model
    facts.prompt_tokens += record.prompt_tokens
    facts.completion_tokens += record.completion_tokens
    if facts.ttft_s is None:
        facts.ttft_s = record.ttft_s


class TrackingMiddleware:
    """Make the facts of each HTTP request and pass them to the sinks when it ends."""

    def __init__(self, app: ASGIApp, sinks: list[Sink], api: FastAPI, capture_prompts: bool = False) -> None:
        self.app = app
        self.api = api
        self._templates: list[tuple[re.Pattern[str], str]] | None = None
        self.sinks = sinks
        self.capture_prompts = capture_prompts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        facts = RequestFacts(
            method=scope["method"], path=scope["path"], client=f"{client[0]}:{client[1]}" if client else "",
            started_at=time.time(),
        )
        facts.request_id = _header(scope, b"x-request-id")[:128] or uuid.uuid4().hex
        token = current_request.set(facts)
        body = bytearray()

        async def receive_() -> Message:
            message = await receive()
            if self.capture_prompts and message["type"] == "http.request" and len(body) < PROMPT_PEEK_BYTES:
                body.extend(message.get("body", b""))
            return message

        async def send_(message: Message) -> None:
            if message["type"] == "http.response.start":
                facts.status = int(message["status"])
                headers = [*message.get("headers", []), (b"x-request-id", facts.request_id.encode("latin-1"))]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive_, send_)
        except BaseException:
            facts.status = facts.status or 500
            raise
        finally:
            current_request.reset(token)
            facts.latency_s = time.perf_counter() - facts.started
            facts.route = self.route_template(scope["path"])
            if self.capture_prompts and body:
                facts.prompt_text = prompt_text(bytes(body))
            for sink in self.sinks:
                try:
                    sink(facts)
                except Exception:  # observing a request must never break serving it
                    log.exception("request sink %r failed", sink)


    def route_template(self, path: str) -> str:
        """The template of the route a path matches (``/v1/models/{model_id}``), whether or not the
        request got that far (a 401 or 429 comes before routing); ``unmatched`` for unknown paths,
        so that scanners cannot grow the metrics' label sets. Templates come from the OpenAPI
        schema, which lists every route with its full prefix."""
        if self._templates is None:
            try:
                paths = self.api.openapi().get("paths", {})
            except Exception:  # a schema that cannot be built must not break serving
                log.exception("no OpenAPI schema: every route is labelled unmatched")
                paths = {}
            self._templates = [(compile_path(p)[0], p) for p in paths]
        for pattern, template in self._templates:
            if pattern.match(path):
                return template
        return "unmatched"


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1").strip()
    return ""


def prompt_text(body: bytes) -> str | None:
    """The prompt of an OpenAI or Ollama request body (messages, prompt or input), as JSON text."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    for name in ("messages", "prompt", "input", "system"):
        if name in data:
            value = data[name]
            return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return None
