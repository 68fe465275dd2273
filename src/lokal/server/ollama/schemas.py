"""Request and response bodies of Ollama's API (docs/api.md), as far as lokal serves it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lokal.engine.sampling import MAX_TOP_LOGPROBS

KeepAliveValue = float | int | str | None


class _Request(BaseModel):
    # Unknown fields are ignored, as Ollama does; known ones are checked.
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _NamedRequest(_Request):
    """Requests naming a model by ``model`` or, in older clients, by ``name``."""

    model: str = Field(min_length=1, max_length=512)

    @model_validator(mode="before")
    @classmethod
    def _legacy_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("model") and data.get("name"):
            return {**data, "model": data["name"]}
        return data


class Message(_Request):
    role: str = Field(min_length=1)
    content: str = ""
    images: list[str] | None = None
    thinking: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_name: str | None = None


class GenerateRequest(_NamedRequest):
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    stream: bool = True
    raw: bool = False
    format: Any = None
    images: list[str] | None = None
    options: dict[str, Any] | None = None
    keep_alive: KeepAliveValue = None
    think: bool | str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)


class ChatRequest(_NamedRequest):
    messages: list[Message] | None = None
    tools: list[dict[str, Any]] | None = None
    truncate: bool | None = None  # None/true: drop the oldest turns of a chat too long for the context
    stream: bool = True
    format: Any = None
    options: dict[str, Any] | None = None
    keep_alive: KeepAliveValue = None
    think: bool | str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)


class ShowRequest(_NamedRequest):
    verbose: bool = False


class DeleteRequest(_NamedRequest):
    pass


class CopyRequest(_Request):
    source: str = Field(min_length=1)
    destination: str = Field(min_length=1)


class PullRequest(_NamedRequest):
    insecure: bool = False
    stream: bool = True


class PushRequest(_NamedRequest):
    insecure: bool = False
    stream: bool = True


class CreateRequest(_NamedRequest):
    from_: str | None = Field(default=None, alias="from")
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    template: str | None = None
    license: str | list[str] | None = None
    system: str | None = None
    parameters: dict[str, Any] | None = None
    messages: list[Message] | None = None
    modelfile: str | None = None  # the pre-0.5 API sent the Modelfile's text
    quantize: str | None = None
    stream: bool = True


class ModelDetails(BaseModel):
    parent_model: str = ""
    format: str = "gguf"
    family: str = ""
    families: list[str] | None = None
    parameter_size: str = ""
    quantization_level: str = ""
    kind: str = "chat"  # lokal's: chat, embedding, reranker, … (Ollama's clients ignore it)


class ListedModel(BaseModel):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails


class TagsResponse(BaseModel):
    models: list[ListedModel]


class RunningModel(BaseModel):
    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails
    expires_at: str
    size_vram: int = 0
    context_length: int


class PsResponse(BaseModel):
    models: list[RunningModel]


class ShowResponse(BaseModel):
    license: str = ""
    modelfile: str
    parameters: str = ""
    template: str = ""
    system: str = ""
    messages: list[dict[str, str]] = []
    details: ModelDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str


class VersionResponse(BaseModel):
    version: str


def rfc3339(when: datetime | None = None) -> str:
    """Ollama's timestamps: RFC 3339 in UTC with a ``Z`` ("2024-07-22T20:47:51.147561Z")."""
    return (when or datetime.now(UTC)).astimezone(UTC).isoformat().replace("+00:00", "Z")
