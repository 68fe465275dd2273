"""Request and response bodies of Anthropic's Messages API, as far as lokal serves it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    # Unknown fields (cache_control, citations, service_tier...) are ignored, as Anthropic's own
    # clients send fields newer than any server; known ones are checked.
    model_config = ConfigDict(extra="ignore")


# ---- content blocks of a request -------------------------------------------------------------

class TextBlock(_Request):
    type: Literal["text"]
    text: str


class ImageBlock(_Request):
    """An image (``source``: base64 with its media type, or a url) for a vision model."""

    type: Literal["image"]
    source: dict[str, Any]


class ToolUseBlock(_Request):
    """An earlier call by the assistant."""

    type: Literal["tool_use"]
    id: str = Field(min_length=1, max_length=256)
    name: str
    input: dict[str, Any]


class ToolResultBlock(_Request):
    """The result of an earlier ``tool_use`` (by its id), sent in a user turn."""

    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1, max_length=256)
    content: str | list[Annotated[TextBlock | ImageBlock, Field(discriminator="type")]] | None = None
    is_error: bool | None = None


class ThinkingBlock(_Request):
    """The assistant's earlier thinking: accepted and left out of the prompt, as Anthropic does for
    earlier turns."""

    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(_Request):
    type: Literal["redacted_thinking"]
    data: str


ContentBlock = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
    Field(discriminator="type"),
]


class Message(_Request):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


# ---- tools -----------------------------------------------------------------------------------

class ToolDefinition(_Request):
    """A client tool (Anthropic's server tools, such as web search, have other types: refused)."""

    name: str
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None


class ToolChoiceAuto(_Request):
    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(_Request):
    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(_Request):
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(_Request):
    type: Literal["none"]


ToolChoice = Annotated[ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone,
                       Field(discriminator="type")]


class ThinkingEnabled(_Request):
    type: Literal["enabled"]
    budget_tokens: int = Field(ge=1)


class ThinkingDisabled(_Request):
    type: Literal["disabled"]


class ThinkingAdaptive(_Request):
    """The model decides (``adaptive``, ``between_tools``): lokal lets a thinking model's template decide."""

    type: Literal["adaptive", "between_tools"]


ThinkingConfig = Annotated[ThinkingEnabled | ThinkingDisabled | ThinkingAdaptive, Field(discriminator="type")]


class OutputFormat(_Request):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Request):
    """Structured output (``format``: a JSON schema the answer must match) and ``effort``."""

    format: OutputFormat | None = None
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None


# ---- requests --------------------------------------------------------------------------------

class CountTokensRequest(_Request):
    """What makes a prompt: ``POST /v1/messages/count_tokens`` takes only this."""

    model: str = Field(min_length=1, max_length=512)
    messages: list[Message] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None


class MessagesRequest(CountTokensRequest):
    """``POST /v1/messages``. ``max_tokens`` is required, as Anthropic requires it; sampling
    values are checked against lokal's ranges (``lokal.options``)."""

    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    metadata: dict[str, Any] | None = None


# ---- responses -------------------------------------------------------------------------------

class TextOut(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ToolUseOut(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


class ThinkingOut(BaseModel):
    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str = ""  # lokal's thinking is not signed


class UsageOut(BaseModel):
    """Anthropic's usage: ``input_tokens`` are those read anew, ``cache_read_input_tokens`` those
    reused from lokal's prefix cache (their sum is the prompt, what count_tokens counts)."""

    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0


class MessageResponse(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[Annotated[ThinkingOut | TextOut | ToolUseOut, Field(discriminator="type")]]
    stop_reason: Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"] | None
    stop_sequence: str | None = None
    usage: UsageOut


class TokenCount(BaseModel):
    input_tokens: int
