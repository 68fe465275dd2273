"""What a caller asks of the runtime: one ``GenerateRequest``, whatever API it came through."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lokal.runtime.events import Caller
from lokal.runtime.tools import Tool


@dataclass(frozen=True)
class ToolUse:
    """Tools for one request: those shown to the model (through its template, or lokal's fallback
    block), those whose calls are looked for in the answer, and whether a call is required (a
    grammar then makes the answer exactly one call)."""

    shown: tuple[Tool, ...] = ()
    callable: tuple[Tool, ...] = ()
    forced: bool = False
    # OpenAI's parallel_tool_calls. False: at most one call. True: a forced answer may hold several.
    # None (absent): every call of a free answer counts, a forced answer is one call (llama.cpp's way:
    # small models given room for more keep appending invented calls).
    parallel: bool | None = None


@dataclass(frozen=True)
class JsonOutput:
    """The answer must be one JSON value: any object (``schema`` None) or one that validates
    against ``schema``. ``param`` names the request field it came from, for errors."""

    schema: dict[str, Any] | None = None
    param: str = "format"


@dataclass(frozen=True)
class GenerateRequest:
    """One generation. Give ``messages`` (a chat, rendered through the model's template, or
    ``template`` when set) or ``prompt``: text read as it is (``raw``: already in the model's
    format, special tokens parsed) or token ids.

    ``options`` are canonical (``lokal.options``; None or absent: the model's default, then
    lokal's). Output constraints: ``output`` (JSON, or JSON of a schema), ``tools``, or a raw
    GBNF ``grammar`` (the ``LLM`` class's). ``context``: tokens of an earlier exchange to put
    before the prompt (Ollama's). ``timeout_s``: None for the server's LOKAL_REQUEST_TIMEOUT, 0
    for none. ``keep_alive``: seconds the model stays loaded after this request (None: the
    server's). ``suffix``: fill-in-the-middle, ``prompt`` being the text before the gap (the
    model's FIM tokens are used; InvalidRequest if it has none). ``think``: a thinking model
    thinks (True) or not (False; None: as its template decides); True for a model that cannot
    think is an InvalidRequest. ``reasoning_effort``: low, medium or high, for templates that
    read it. A thinking model's reasoning is reported apart from its answer either way.
    ``truncate``: a chat longer than the context loses its oldest turns (system messages, tools
    and the latest turn are kept; ``Queued.dropped_messages`` says how many) instead of being
    refused. ``logprobs``: None for none, k (0 to 20) for each generated token's logprob and the
    k most likely alternatives (the model's raw distribution; ``Delta.logprobs``). ``n``: that
    many answers to one prompt (1 to 16), read once and sampled apart (seed + i); their ``Delta``
    and ``Finished`` events carry ``index``."""

    model: str
    messages: list[dict[str, Any]] | None = None
    prompt: str | list[int] | None = None
    raw: bool = False
    template: str | None = None
    context: list[int] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    output: JsonOutput | None = None
    tools: ToolUse = ToolUse()
    grammar: str | None = None
    return_context: bool = False
    suffix: str | None = None
    think: bool | None = None
    reasoning_effort: str | None = None
    truncate: bool = False  # a chat too long for the context drops its oldest turns (Ollama's) instead of a 400
    logprobs: int | None = None
    n: int = 1
    timeout_s: float | None = None
    keep_alive: float | None = None
    caller: Caller = Caller()
