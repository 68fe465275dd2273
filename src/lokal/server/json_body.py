"""Request bodies are JSON whatever their ``Content-Type`` says, as in Ollama and llama-server.

Clients send JSON with no content type (litellm's ``ollama/`` providers), or with the one
``curl -d`` puts there (``application/x-www-form-urlencoded``), or ``text/plain`` (browsers'
``fetch`` with a string body and no headers). FastAPI parses a body as JSON only when it is
declared so, and answers the others 422/400 "Input should be a valid dictionary". This layer
relabels those three as ``application/json`` before routing; every other type (multipart
uploads, ``application/octet-stream`` blob uploads, ``+json`` types) passes untouched.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

# Content types a JSON API client sends by accident, never on purpose for another format.
RELABELLED = frozenset({"", "application/x-www-form-urlencoded", "text/plain"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _media_type(value: bytes) -> str:
    return value.split(b";", 1)[0].strip().lower().decode("latin-1")


class JsonBodyMiddleware:
    """Relabel a request body sent without a JSON content type as ``application/json``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") in BODY_METHODS:
            headers: list[tuple[bytes, bytes]] = list(scope.get("headers") or [])
            found = [v for k, v in headers if k == b"content-type"]
            if not found or (len(found) == 1 and _media_type(found[0]) in RELABELLED):
                headers = [(k, v) for k, v in headers if k != b"content-type"]
                headers.append((b"content-type", b"application/json"))
                scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)
