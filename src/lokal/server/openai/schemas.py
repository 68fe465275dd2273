"""Request and response bodies of OpenAI's API, as far as lokal serves it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lokal.engine.engine import MAX_CHOICES
from lokal.engine.sampling import MAX_TOP_LOGPROBS
from lokal.options import BY_OPENAI


class _Request(BaseModel):
    # Unknown fields are ignored like OpenAI does for forward compatibility; known ones are checked.
    model_config = ConfigDict(extra="ignore")


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def has_images(self) -> bool:
        """Whether the content holds image_url parts (for a vision model)."""
        return isinstance(self.content, list) and any(p.get("type") == "image_url" for p in self.content)

    def text(self) -> str:
        """The message's text; content parts other than text are refused."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        texts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"content part of type {part.get('type')!r} is not supported; only text")
            texts.append(part["text"])
        return "".join(texts)


class StreamOptions(_Request):
    include_usage: bool = False


class SamplingFields(_Request):
    """Fields shared by chat and text completions (OpenAI's, plus llama.cpp's usual extras)."""

    model: str = Field(min_length=1, max_length=512)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Sampling fields: types here, ranges and limits in lokal.options (checked by the adapter).
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool | None = None  # vLLM / llama.cpp extension, used by benchmarks
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)  # choices from one prompt (openai.choices)
    user: str | None = None
    # Output constraints of llama.cpp's server (grammar: GBNF; json_schema) and vLLM's
    # (structured_outputs, and its older guided_* names); checked in openai.constraints.
    grammar: Any = None
    json_schema: Any = None
    structured_outputs: Any = None
    guided_json: Any = None
    guided_regex: Any = None
    guided_choice: Any = None
    guided_grammar: Any = None

    def sampling_fields(self) -> dict[str, Any]:
        """The request's fields that are generation options (lokal.options' OpenAI names)."""
        return {k: getattr(self, k) for k in BY_OPENAI if k in type(self).model_fields}

    def constraint_fields(self) -> dict[str, Any]:
        """The output-constraint fields, as sent (None: absent)."""
        return {k: getattr(self, k) for k in ("grammar", "json_schema", "structured_outputs", "guided_json",
                                              "guided_regex", "guided_choice", "guided_grammar")}


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None  # ToolUse.parallel: False one call, True several, absent see there
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int]
    max_tokens: int | None = 16
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = Field(default=None, ge=0, le=5)  # OpenAI's bound for completions


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class UsageBody(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = PromptTokensDetails()


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "lokal"
    kind: str = "chat"  # lokal's model kind: chat, embedding, reranker, … (an extra field clients ignore)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
