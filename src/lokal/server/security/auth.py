"""Bearer-key authentication for every API route, on exactly when keys exist.

Contract for every client (OpenAI SDKs, Ollama clients, the web UI): send
``Authorization: Bearer <key>``. The web UI keeps the key in ``localStorage`` and sends it the
same way on its ``/v1``, ``/api`` and ``/ui/api`` calls; a 401 (``WWW-Authenticate: Bearer``)
tells it to ask for a key. Open without a key: liveness and readiness, the UI's page and static
files, the Ollama heartbeat ``/`` and the OpenAPI docs — nothing that serves a model or data.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from lokal.server.errors import APIError, is_ollama_path
from lokal.server.security.keys import KeyStore
from lokal.server.security.tracking import current_request

OPEN_PATHS = frozenset({"/", "/health", "/ready", "/ui", "/docs", "/docs/oauth2-redirect", "/redoc",
                        "/openapi.json", "/favicon.ico"})
OPEN_PREFIXES = ("/ui/static/",)


def is_open(method: str, path: str) -> bool:
    if method == "OPTIONS":  # CORS preflight never carries credentials
        return True
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def bearer_key(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, key = value.decode("latin-1").partition(" ")
            return key.strip() if scheme.lower() == "bearer" and key.strip() else None
    return None


async def send_error(scope: Scope, send: Send, err: APIError) -> None:
    """Answer with an APIError in the shape of the API the path belongs to (ASGI level)."""
    import json

    body = json.dumps(err.ollama_body() if is_ollama_path(scope["path"]) else err.openai_body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (err.headers or {}).items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class AuthMiddleware:
    """401 for an API request without a valid key, once any key exists."""

    def __init__(self, app: ASGIApp, keys: KeyStore) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys.enabled() or is_open(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        key = bearer_key(scope)
        name = self.keys.verify(key) if key else None
        if name is None:
            message = "invalid API key" if key else "missing API key: send Authorization: Bearer <key>"
            await send_error(scope, send, APIError(
                401, message, type="authentication_error", code="invalid_api_key",
                headers={"WWW-Authenticate": 'Bearer realm="lokal"'},
            ))
            return
        facts = current_request.get()
        if facts is not None:
            facts.key_name = name
        await self.app(scope, receive, send)
