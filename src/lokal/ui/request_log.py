"""Recent generation requests (any API, any client) with their TTFT and tokens/s, for the monitor.

An ASGI middleware watches the generation endpoints without changing them: it reads the model
name from the request body and times the response's body chunks. Streams are parsed as they pass
(OpenAI SSE, Ollama NDJSON) to find the first token and count tokens; a final usage block or
Ollama's ``eval_count`` replaces the count when present. Records live in a bounded ring buffer.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

GENERATION_PATHS = {"/v1/chat/completions", "/v1/completions", "/api/chat", "/api/generate"}
MAX_BODY_PEEK = 1 << 20  # only the first MiB of a request body is read for its model name


@dataclass
class RequestRecord:
    """One finished generation request (times in seconds; ``started_at`` is Unix time)."""

    path: str
    model: str
    status: int
    started_at: float
    duration_s: float
    ttft_s: float | None
    completion_tokens: int
    tokens_per_second: float | None


class RequestLog:
    """The last ``capacity`` requests, newest last."""

    def __init__(self, capacity: int = 100) -> None:
        self._records: deque[RequestRecord] = deque(maxlen=capacity)
        self.total = 0

    def add(self, record: RequestRecord) -> None:
        self._records.append(record)
        self.total += 1

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        return [asdict(r) for r in list(self._records)[-limit:]]


class _Observation:
    """What one response has shown so far."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.first_token: float | None = None
        self.tokens = 0
        self.reported_tokens: int | None = None
        self.reported_eval_s: float | None = None
        self._pending = b""

    def feed(self, chunk: bytes) -> None:
        self._pending += chunk
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            self._line(line.strip())

    def finish(self) -> None:
        if self._pending.strip():
            self._line(self._pending.strip())
        self._pending = b""

    def _line(self, line: bytes) -> None:
        if line.startswith(b"data:"):
            line = line[5:].strip()
        if not line.startswith(b"{"):
            return
        try:
            event = json.loads(line)
        except ValueError:
            return
        if isinstance(event, dict):
            self._event(event)

    def _event(self, event: dict[str, Any]) -> None:
        text = ""
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or choice.get("message") or {}
            text += (delta.get("content") or "") if isinstance(delta, dict) else ""
            text += choice.get("text") or ""
        message = event.get("message")
        if isinstance(message, dict):
            text += message.get("content") or ""
        text += event.get("response") or ""
        if text:
            self.tokens += 1
            if self.first_token is None:
                self.first_token = time.perf_counter()
        usage = event.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            self.reported_tokens = usage["completion_tokens"]
        if isinstance(event.get("eval_count"), int):
            self.reported_tokens = event["eval_count"]
            if isinstance(event.get("eval_duration"), int) and event["eval_duration"] > 0:
                self.reported_eval_s = event["eval_duration"] / 1e9


class RequestLogMiddleware:
    """Records every generation request into ``log``."""

    def __init__(self, app: ASGIApp, log: RequestLog) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in GENERATION_PATHS:
            await self.app(scope, receive, send)
            return
        body = bytearray()
        seen = _Observation()
        status = 0
        started_at = time.time()

        async def peek_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(body) < MAX_BODY_PEEK:
                body.extend(message.get("body", b""))
            return message

        async def watch_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                seen.feed(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, peek_receive, watch_send)
        finally:
            seen.finish()
            self.log.add(_record(scope["path"], bytes(body), status, started_at, seen))


def _record(path: str, body: bytes, status: int, started_at: float, seen: _Observation) -> RequestRecord:
    now = time.perf_counter()
    model = ""
    try:
        model = str(json.loads(body).get("model", ""))
    except (ValueError, AttributeError):
        pass
    tokens = seen.reported_tokens if seen.reported_tokens is not None else seen.tokens
    ttft = None if seen.first_token is None else seen.first_token - seen.started
    eval_s = seen.reported_eval_s
    if eval_s is None and seen.first_token is not None:
        eval_s = now - seen.first_token
    tps = tokens / eval_s if eval_s and tokens > 1 else None
    return RequestRecord(path, model, status, started_at, now - seen.started, ttft, tokens, tps)
