"""Tool calling and structured output, shared by the OpenAI and Ollama surfaces.

A model whose chat template has its own tool syntax (it reads ``tools``) gets the tool list
through it. Any other template gets the fallback: a system block that lists the functions and
asks for ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``. Calls are parsed from
either that form or a bare JSON object ``{"name": ..., "arguments": ...}``. When a call is
required or named, sampling is constrained by a grammar to exactly one such JSON object whose
arguments match the function's schema."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from lokal.engine.grammar import SchemaError, check_valid, schema_grammar
from lokal.engine.sampling import SamplingParams
from lokal.options import MAX_STOP_STRINGS
from lokal.runtime.errors import InvalidRequest

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_BLOCK = re.compile(re.escape(CALL_OPEN) + r"(.*?)(?:" + re.escape(CALL_CLOSE) + r"|$)", re.S)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)
MAX_TOOLS = 128
MAX_PARALLEL_CALLS = 8  # calls one forced answer may hold when parallel calls are allowed
# Arguments of a tool call, in a request or a model's answer: deeper JSON is refused (a request) or
# left as text (an answer) before anything recursive (json.dumps, a template's tojson) walks it.
MAX_ARGUMENT_DEPTH = 128

FALLBACK_INSTRUCTIONS = (
    "You can call functions. Each one is listed below with the JSON schema of its arguments.\n"
    "{functions}\n"
    "To call a function, answer with only:\n"
    '<tool_call>{{"name": "<function name>", "arguments": {{<arguments as a JSON object>}}}}</tool_call>\n'
    "If no function is needed, answer normally."
)


@dataclass(frozen=True)
class Tool:
    """One function the model may call."""

    name: str
    description: str
    parameters: dict[str, Any]

    def spec(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


@dataclass
class ToolCall:
    """A parsed call: ``arguments`` is the decoded JSON object."""

    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: f"call_{secrets.token_hex(12)}")

    def openai(self, index: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "type": "function",
                               "function": {"name": self.name, "arguments": self.arguments_json()}}
        return out if index is None else {"index": index, **out}

    def ollama(self) -> dict[str, Any]:
        return {"function": {"name": self.name, "arguments": self.arguments}}

    def arguments_json(self) -> str:
        return json.dumps(self.arguments, ensure_ascii=False)


# ---- the request side ------------------------------------------------------------------------

def parse_tools(raw: list[dict[str, Any]], param: str = "tools") -> list[Tool]:
    """Checked tool definitions (OpenAI's shape, which Ollama shares); InvalidRequest otherwise."""
    if len(raw) > MAX_TOOLS:
        raise InvalidRequest(f"at most {MAX_TOOLS} tools are allowed", param=param)
    tools: list[Tool] = []
    for i, item in enumerate(raw):
        where = f"{param}[{i}]"
        fn = item.get("function") if isinstance(item, dict) else None
        if not isinstance(item, dict) or item.get("type", "function") != "function" or not isinstance(fn, dict):
            raise InvalidRequest(f'{where}: expected {{"type": "function", "function": {{...}}}}', param=param)
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidRequest(f"{where}.function.name must be 1-64 letters, digits, _ . or -", param=param)
        if any(t.name == name for t in tools):
            raise InvalidRequest(f"{where}: function {name!r} is defined twice", param=param)
        params = fn.get("parameters")
        if params is None:
            params = {"type": "object", "properties": {}}
        if not isinstance(params, dict):
            raise InvalidRequest(f"{where}.function.parameters must be a JSON schema object", param=param)
        try:
            # Only valid and bounded: the model reads the schema; keywords a grammar could not
            # enforce are refused only where one is compiled (call_grammar, a forced call).
            check_valid(params)
        except SchemaError as exc:
            raise schema_error(exc, f"{param}.{i}.function.parameters", prefix=f"{where} ({name}): ") from exc
        tools.append(Tool(name, str(fn.get("description") or ""), params))
    return tools


def call_schema(tools: list[Tool]) -> dict[str, Any]:
    """JSON schema of one call to any of ``tools``."""
    alternatives = [
        {"type": "object", "properties": {"name": {"const": t.name}, "arguments": t.parameters},
         "required": ["name", "arguments"], "additionalProperties": False}
        for t in tools
    ]
    return alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}


def call_grammar(tools: list[Tool], param: str = "tools", parallel: bool = False) -> str:
    """The grammar of a forced answer: one call, or (``parallel``) a JSON array of 1 to
    MAX_PARALLEL_CALLS calls."""
    for tool in tools:  # a keyword the grammar cannot enforce is a 400 naming its tool
        try:
            schema_grammar(tool.parameters)
        except SchemaError as exc:
            raise schema_error(exc, param, prefix=f"{param} ({tool.name}): ") from exc
    schema = call_schema(tools)
    if parallel:
        schema = {"type": "array", "items": schema, "minItems": 1, "maxItems": MAX_PARALLEL_CALLS}
    try:
        return schema_grammar(schema)
    except SchemaError as exc:
        raise schema_error(exc, param) from exc


def chosen_tools(tools: list[Tool], choice: str | dict[str, Any] | None) -> tuple[list[Tool], bool]:
    """(tools to render, whether a call is forced) for OpenAI's tool_choice. A forced call's
    tools are the ones the grammar allows: all for "required", one for a named function."""
    if choice is None or choice == "auto":
        return tools, False
    if choice == "none":
        return [], False
    if choice == "required":
        if not tools:
            raise InvalidRequest('tool_choice "required" needs at least one tool', param="tool_choice")
        return tools, True
    if isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if choice.get("type") == "function" and isinstance(fn, dict) else None
        if not isinstance(name, str):
            raise InvalidRequest('tool_choice must be {"type": "function", "function": {"name": ...}}',
                                 param="tool_choice")
        match = [t for t in tools if t.name == name]
        if not match:
            raise InvalidRequest(f"tool_choice names function {name!r}, which is not in tools", param="tool_choice")
        return match, True
    raise InvalidRequest(f"tool_choice {choice!r} is not one of none, auto, required or a named function",
                   param="tool_choice")


def schema_error(exc: SchemaError, param: str, prefix: str = "") -> InvalidRequest:
    """The 400 for a schema lokal refuses; its message names the field (Ollama's error body is only
    the message), ``prefix`` or else the param."""
    code = "unsupported_schema_feature" if exc.feature else "invalid_schema"
    return InvalidRequest((prefix or f"{param}: ") + str(exc), param=param, code=code)


def nests_deeper(value: Any, limit: int) -> bool:
    """Whether JSON objects and arrays nest more than ``limit`` levels in ``value`` (no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def stop_after_call(params: SamplingParams, tools: list[Tool], native: bool) -> SamplingParams:
    """With the fallback format, stop at ``</tool_call>``: a small model tends to go on and invent
    the tool's answer itself (the parser takes a call without its closing tag)."""
    if not tools or native or CALL_CLOSE in params.stop or len(params.stop) >= MAX_STOP_STRINGS:
        return params
    return params.model_copy(update={"stop": (*params.stop, CALL_CLOSE)})


def has_native_tools(template_source: str) -> bool:
    """Whether a chat template renders the ``tools`` variable itself."""
    return re.search(r"\btools\b", template_source) is not None


def conversation(messages: list[dict[str, Any]], tools: list[Tool], native: bool) -> list[dict[str, Any]]:
    """Messages ready for the chat template. A native template gets tool calls and results as it
    expects them (arguments as objects); otherwise calls become ``<tool_call>`` text, results
    user turns in ``<tool_response>``, and the tool list a system block."""
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for m in messages:
        calls = m.get("tool_calls") or []
        for c in calls:
            if c.get("id"):
                names[c["id"]] = c["function"]["name"]
        if m["role"] == "tool":
            name = m.get("name") or names.get(m.get("tool_call_id") or "", "")
            if native:
                out.append({**m, "name": name})
            else:
                body = json.dumps({"name": name, "content": m.get("content") or ""}, ensure_ascii=False)
                out.append({"role": "user", "content": f"<tool_response>\n{body}\n</tool_response>"})
        elif calls and not native:
            text = "".join(
                CALL_OPEN + json.dumps({"name": c["function"]["name"], "arguments": c["function"]["arguments"]},
                                       ensure_ascii=False) + CALL_CLOSE
                for c in calls
            )
            out.append({"role": "assistant", "content": ((m.get("content") or "") + text)})
        else:
            out.append(m)
    if tools and not native:
        block = FALLBACK_INSTRUCTIONS.format(functions="\n".join(json.dumps(t.spec(), ensure_ascii=False)
                                                                  for t in tools))
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": (out[0].get("content") or "") + "\n\n" + block}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


def call_message(call: dict[str, Any], where: str) -> dict[str, Any]:
    """An incoming tool call (OpenAI: arguments as a JSON string; Ollama: an object) for templates."""
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise InvalidRequest(f"{where}: a tool call needs function.name", param="messages")
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"{where}.function.arguments is not valid JSON: {exc}", param="messages") from exc
        except RecursionError as exc:  # json.loads recurses once per level
            raise InvalidRequest(f"{where}.function.arguments nests deeper than {MAX_ARGUMENT_DEPTH} levels",
                                 param="messages") from exc
    if not isinstance(args, dict):
        raise InvalidRequest(f"{where}.function.arguments must be a JSON object", param="messages")
    if nests_deeper(args, MAX_ARGUMENT_DEPTH):
        raise InvalidRequest(f"{where}.function.arguments nests deeper than {MAX_ARGUMENT_DEPTH} levels",
                             param="messages")
    return {"id": call.get("id") or "", "type": "function", "function": {"name": fn["name"], "arguments": args}}


# ---- the response side -----------------------------------------------------------------------

def parse_calls(text: str, tools: list[Tool]) -> tuple[str, list[ToolCall]]:
    """(content left over, calls) from a model's answer. Only calls to known functions count;
    anything else stays content."""
    known = {t.name for t in tools}
    calls: list[ToolCall] = []
    if CALL_OPEN in text:
        for body in _BLOCK.findall(text):
            calls.extend(_calls_in(body.strip(), known))
        if calls:
            return _BLOCK.sub("", text).strip(), calls
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    candidate = fenced.group(1) if fenced else stripped
    if candidate.startswith(("{", "[")):
        calls = _calls_in(candidate, known)
        if calls:
            return "", calls
    return text, []


def _calls_in(body: str, known: set[str]) -> list[ToolCall]:
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, RecursionError):  # a model can write "[[[[…" too
        return []
    if nests_deeper(value, MAX_ARGUMENT_DEPTH + 2):
        return []
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or item.get("name") not in known:
            return []
        args = item.get("arguments", item.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except (json.JSONDecodeError, RecursionError):
                return []
        if not isinstance(args, dict) or nests_deeper(args, MAX_ARGUMENT_DEPTH):
            return []
        calls.append(ToolCall(item["name"], args))
    return calls


class CallSniffer:
    """Streams content while holding back text that may be the start of a tool call.

    ``feed`` returns the text that is surely content; ``finish`` the rest and the parsed calls.
    With ``forced`` (a grammar-constrained call) everything is held until the end."""

    def __init__(self, tools: list[Tool], forced: bool = False) -> None:
        self.tools = tools
        self.forced = forced
        self._held = ""
        self._in_call = forced
        self._leading = True  # nothing but whitespace emitted yet: a bare JSON call may still come

    def feed(self, text: str) -> str:
        self._held += text
        if self._in_call:
            return ""
        if self._leading:
            lead = self._held.lstrip()
            if not lead or lead.startswith(("{", "[", "```")) or lead.startswith(CALL_OPEN) or \
                    CALL_OPEN.startswith(lead):
                if lead.startswith(CALL_OPEN) or lead.startswith(("{", "[", "```")):
                    self._in_call = True
                return ""
            self._leading = False
        at = self._held.find(CALL_OPEN)
        if at >= 0:
            out, self._held, self._in_call = self._held[:at], self._held[at:], True
            return out
        keep = _partial_suffix(self._held, CALL_OPEN)
        out, self._held = self._held[: len(self._held) - keep], self._held[len(self._held) - keep:]
        return out

    def finish(self, parse: bool = True) -> tuple[str, list[ToolCall]]:
        """(held content, calls) once generation has ended; ``parse=False`` keeps it all text."""
        rest, self._held = self._held, ""
        return parse_calls(rest, self.tools) if parse else (rest, [])


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of marker."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


def argument_fragments(arguments: str, size: int = 16) -> list[str]:
    """A call's arguments cut into stream-sized pieces, as OpenAI streams them."""
    return [arguments[i:i + size] for i in range(0, len(arguments), size)] or [""]
