"""Bearer-key authentication for every API route, on exactly when keys exist.

Contract for every client (OpenAI SDKs, Ollama clients, the web UI): send
``Authorization: Bearer <key>`` (Anthropic's SDKs send ``x-api-key: <key>``, taken as well). The web
UI keeps the key in ``localStorage`` and sends it the same way on its ``/v1``, ``/api`` and
``/ui/api`` calls; a 401 (``WWW-Authenticate: Bearer``) tells it to ask for a key. Open without a
key: liveness and readiness, the UI's page and static files, the Ollama heartbeat ``/`` and the
OpenAPI docs — nothing that serves a model or data.

A keys file that exists but cannot be read (``KeyFileError``: corrupt, empty, unreadable) fails
closed: every other route answers 503 ``keys_unavailable`` until it is fixed, while the open routes
keep answering. 503 rather than refusing to start: the file is re-read whenever it changes, so it
can break under a running server too, and liveness probes should not turn a keys-file typo into a
restart loop. The server log names the file; clients are told only that the keys file is broken.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from lokal.server.errors import APIError
from lokal.server.security.keys import KeyFileError, KeyStore
from lokal.server.security.tracking import current_request

log = logging.getLogger("lokal.server")

OPEN_PATHS = frozenset({"/", "/health", "/ready", "/ui", "/docs", "/docs/oauth2-redirect", "/redoc",
                        "/openapi.json", "/favicon.ico"})
OPEN_PREFIXES = ("/ui/static/",)


def is_open(method: str, path: str) -> bool:
    if method == "OPTIONS":  # CORS preflight never carries credentials
        return True
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def bearer_key(scope: Scope) -> str | None:
    """The key of ``Authorization: Bearer <key>``, else of ``x-api-key: <key>`` (Anthropic's)."""
    api_key = None
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, key = value.decode("latin-1").partition(" ")
            return key.strip() if scheme.lower() == "bearer" and key.strip() else None
        if name == b"x-api-key" and api_key is None:
            api_key = value.decode("latin-1").strip() or None
    return api_key


async def send_error(scope: Scope, send: Send, err: APIError) -> None:
    """Answer with an APIError in the shape of the API the path belongs to (ASGI level)."""
    import json

    body = json.dumps(err.body_for_path(scope["path"])).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (err.headers or {}).items()]
    await send({"type": "http.response.start", "status": err.status_for(scope["path"]), "headers": headers})
    await send({"type": "http.response.body", "body": body})


class AuthMiddleware:
    """401 for an API request without a valid key, once any key exists; 503 while the keys file
    is broken."""

    def __init__(self, app: ASGIApp, keys: KeyStore) -> None:
        self.app = app
        self.keys = keys
        self._logged_problem: str | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        key = bearer_key(scope)
        try:
            if not self.keys.keys():
                await self.app(scope, receive, send)
                return
            name = self.keys.verify(key) if key else None
        except KeyFileError as exc:
            await send_error(scope, send, self._keys_unavailable(exc))
            return
        self._logged_problem = None
        if name is None:
            message = ("invalid API key" if key
                       else "missing API key: send Authorization: Bearer <key> or x-api-key: <key>")
            await send_error(scope, send, APIError(
                401, message, type="authentication_error", code="invalid_api_key",
                headers={"WWW-Authenticate": 'Bearer realm="lokal"'},
            ))
            return
        facts = current_request.get()
        if facts is not None:
            facts.key_name = name
        await self.app(scope, receive, send)

    def _keys_unavailable(self, exc: KeyFileError) -> APIError:
        if str(exc) != self._logged_problem:  # once per distinct problem, not once per request
            log.error("API keys unavailable, refusing every keyed request: %s", exc)
            self._logged_problem = str(exc)
        return APIError(
            503, f"API keys unavailable: the server's {exc.path.name} is broken ({exc.reason}); "
            "its operator must fix or delete it", type="server_error", code="keys_unavailable",
        )
