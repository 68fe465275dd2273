"""What can go wrong with a request, once, for every surface. Each API maps these to its own
error shape and status in one place (``lokal.server.errors.api_error``)."""

from __future__ import annotations


class LokalError(Exception):
    """A request that cannot be served. ``param`` names the offending field in the caller's own
    terms (``options.top_k``, ``messages``) where one is to blame; ``code`` is a stable id."""

    code: str | None = None

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequest(LokalError):
    """The request itself is wrong (a value out of range, a template that does not render...)."""


class ContextLengthExceeded(InvalidRequest):
    """The prompt does not fit in the context (the slot's, num_ctx or the server's prompt limit)."""

    code = "context_length_exceeded"


class WrongModelKind(InvalidRequest):
    """The model exists, but its kind cannot serve the request (a chat sent to an embedding model)."""

    code = "model_kind_mismatch"


class InvalidModelName(InvalidRequest):
    code = "invalid_model_name"


class ModelNotFound(LokalError):
    """No model of that name in the store."""

    code = "model_not_found"

    def __init__(self, name: str, detail: str = "") -> None:
        super().__init__(f"The model `{name}` does not exist. {detail}".strip(), param="model")
        self.name = name


class ModelLoadFailed(LokalError):
    """The model is in the store but llama.cpp (or the store) could not load it: the request is
    well formed and the model exists, but it cannot be served, and retrying will not help."""

    code = "model_load_failed"


class ServerBusy(LokalError):
    """Too many requests are waiting; try again after ``retry_after_s``."""

    code = "server_busy"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTimedOut(LokalError):
    """The request ran past LOKAL_REQUEST_TIMEOUT."""

    code = "timeout"


class GenerationFailed(LokalError):
    """The engine failed mid-request (a failed decode, the engine shutting down)."""


class ClientDisconnected(LokalError):
    """The client went away before the answer was complete."""
