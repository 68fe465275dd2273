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


@dataclass(frozen=True)
class GenerateRequest:
    """One generation. Give ``messages`` (a chat, rendered through the model's template, or
    ``template`` when set) or ``prompt``: text read as it is (``raw``: already in the model's
    format, special tokens parsed) or token ids.

    ``options`` are canonical (``lokal.options``; None or absent: the model's default, then
    lokal's). ``context``: tokens of an earlier exchange to put before the prompt (Ollama's).
    ``keep_alive``: seconds the model stays loaded after this request (None: the server's)."""

    model: str
    messages: list[dict[str, Any]] | None = None
    prompt: str | list[int] | None = None
    raw: bool = False
    template: str | None = None
    context: list[int] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    grammar: str | None = None
    tools: ToolUse = ToolUse()
    return_context: bool = False
    keep_alive: float | None = None
    caller: Caller = Caller()
