"""Request bodies of OpenAI's Responses API (``POST /v1/responses``), as far as lokal serves it.

Unknown fields are ignored, as OpenAI does; fields lokal knows but does not serve (built-in tools,
``background``, ``conversation``, ``prompt``) are refused by the adapter with a 400."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

ItemStatus = Literal["in_progress", "completed", "incomplete"]
MAX_METADATA_KEYS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class ContentPart(_Body):
    """One part of a message's content: ``input_text`` (user, system, developer), ``output_text`` or
    ``refusal`` (assistant). Images and files are refused by the adapter."""

    type: Literal["input_text", "output_text", "refusal", "input_image", "input_file", "input_audio"]
    text: str | None = None
    refusal: str | None = None


class MessageItem(_Body):
    """A message; ``type`` may be left out (OpenAI's "easy" input message)."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]
    id: str | None = None
    status: ItemStatus | None = None


class FunctionCallItem(_Body):
    """A call the model made earlier (an output item sent back as input)."""

    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=64)
    arguments: str
    id: str | None = None
    status: ItemStatus | None = None


class FunctionCallOutputItem(_Body):
    """The result of a function call, tied to it by ``call_id``."""

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=256)
    output: str | list[ContentPart]
    id: str | None = None
    status: ItemStatus | None = None


class ReasoningItem(_Body):
    """A reasoning item sent back as input: accepted and not shown to the model again."""

    type: Literal["reasoning"]
    id: str | None = None
    summary: list[dict[str, Any]] = []
    content: list[dict[str, Any]] | None = None
    encrypted_content: str | None = None


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem


class FunctionTool(_Body):
    """Responses' flat function tool: ``{"type": "function", "name", "description", "parameters", "strict"}``."""

    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class OtherTool(_Body):
    """Any other tool type (web_search, file_search, computer, mcp...): refused by the adapter."""

    model_config = ConfigDict(extra="allow")
    type: str


class FunctionChoice(_Body):
    type: Literal["function"]
    name: str


class TextFormat(_Body):
    """``text.format``: plain text, any JSON object, or JSON of a schema (flat: ``name``, ``schema``)."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    def echo(self) -> dict[str, Any]:
        """As the response shows it."""
        if self.type != "json_schema":
            return {"type": self.type}
        return {"type": "json_schema", "name": self.name, "description": self.description,
                "schema": self.json_schema, "strict": self.strict}


class TextConfig(_Body):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponseRequest(_Body):
    """``POST /v1/responses``."""

    model: str = Field(min_length=1, max_length=512)
    input: str | list[InputItem]
    instructions: str | None = None
    tools: list[FunctionTool | OtherTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None  # absent: the runtime's default (a forced answer is one call)
    text: TextConfig | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None  # lokal's extension, as on chat completions
    metadata: dict[str, str] | None = None
    store: bool = True
    previous_response_id: str | None = Field(default=None, max_length=256)
    stream: bool = False
    background: bool = False
    # Known and refused (400 naming them); left out of the OpenAPI schema, as lokal does not serve them.
    conversation: SkipJsonSchema[str | dict[str, Any] | None] = None
    prompt: SkipJsonSchema[dict[str, Any] | None] = None
    user: str | None = None


class InputItemList(BaseModel):
    """``GET /v1/responses/{id}/input_items``."""

    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True
