"""One error type for every route, rendered in the shape of the API the client speaks: OpenAI's
``{"error": {"message", "type", "param", "code"}}`` everywhere except under ``/api/``, where
Ollama's clients expect ``{"error": "message"}``, and under ``/v1/messages``, where Anthropic's
expect ``{"type": "error", "error": {"type", "message"}}`` with Anthropic's statuses (529 when busy)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lokal.runtime import errors

OLLAMA_BUSY = "server busy, please try again.  maximum pending requests exceeded"  # Ollama's words
# Anthropic's error type for each status it uses; other 4xx are invalid_request_error, other 5xx api_error.
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                   504: "timeout_error", 529: "overloaded_error"}
ANTHROPIC_OVERLOADED = 529


class APIError(Exception):
    """An error a client caused or must handle, with its HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        ollama_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers
        self.ollama_message = ollama_message  # Ollama's own wording, where clients may match on it

    def openai_body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def ollama_body(self) -> dict[str, object]:
        return {"error": self.ollama_message or self.message}

    def anthropic_status(self) -> int:
        """Anthropic's status for this error: 529 overloaded for a busy server, else the same."""
        return ANTHROPIC_OVERLOADED if self.code == "server_busy" else self.status

    def anthropic_body(self) -> dict[str, object]:
        status = self.anthropic_status()
        kind = ANTHROPIC_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": self.message}}

    def status_for(self, path: str) -> int:
        return self.anthropic_status() if is_anthropic_path(path) else self.status

    def body_for_path(self, path: str) -> dict[str, object]:
        if is_ollama_path(path):
            return self.ollama_body()
        return self.anthropic_body() if is_anthropic_path(path) else self.openai_body()

    def body_for(self, request: Request) -> dict[str, object]:
        return self.body_for_path(request.url.path)

    def response_for(self, request: Request) -> JSONResponse:
        path = request.url.path
        return JSONResponse(self.body_for_path(path), status_code=self.status_for(path), headers=self.headers)


def ollama_not_found(name: str) -> str:
    return f'model "{name}" not found, try pulling it first'


def api_error(exc: errors.LokalError) -> APIError:
    """The one mapping from the runtime's errors to HTTP statuses and each API's wording."""
    if isinstance(exc, errors.InvalidRequest):
        return APIError(400, exc.message, param=exc.param, code=exc.code)
    if isinstance(exc, errors.ModelNotFound):
        return APIError(404, exc.message, param="model", code=exc.code, ollama_message=ollama_not_found(exc.name))
    if isinstance(exc, errors.ServerBusy):
        return APIError(503, exc.message, type="server_error", code=exc.code,
                        headers={"Retry-After": str(exc.retry_after_s)}, ollama_message=OLLAMA_BUSY)
    if isinstance(exc, errors.RequestTimedOut):
        return APIError(504, exc.message, type="timeout", code=exc.code)
    if isinstance(exc, errors.ModelLoadFailed):
        return APIError(422, exc.message, param="model", code=exc.code)
    if isinstance(exc, errors.ClientDisconnected):
        return APIError(499, exc.message, type="client_disconnected")
    return APIError(500, exc.message, type="server_error", code=exc.code)


def is_ollama_path(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


def is_anthropic_path(path: str) -> bool:
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    parts = []
    param = None
    for err in exc.errors()[:5]:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        where = ".".join(loc)
        param = param or where or None
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "invalid request body: " + "; ".join(parts), param


def _ollama_validation_message(exc: RequestValidationError) -> str:
    """Ollama's words for the common cases ("model is required", "missing request body")."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    if first.get("type") == "json_invalid":
        return f"invalid JSON in request body: {first.get('ctx', {}).get('error', first.get('msg'))}"
    if first.get("type") == "missing" and not loc:
        return "missing request body"
    if first.get("type") == "missing" and loc == ["model"]:
        return "model is required"
    return _validation_message(exc)[0]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response_for(request)

    @app.exception_handler(errors.LokalError)
    async def _lokal_error(request: Request, exc: errors.LokalError) -> JSONResponse:
        return api_error(exc).response_for(request)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        err = APIError(400, message, param=param, ollama_message=_ollama_validation_message(exc))
        return err.response_for(request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = APIError(exc.status_code, str(exc.detail), type="invalid_request_error",
                       headers=dict(exc.headers) if exc.headers else None)
        return err.response_for(request)
