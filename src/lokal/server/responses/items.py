"""Responses API items: the request's input items in their stored form, the chat messages they
become for the runtime, and the output items a finished generation becomes."""

from __future__ import annotations

import secrets
from typing import Any

from lokal.runtime.errors import InvalidRequest
from lokal.runtime.events import Finished
from lokal.runtime.tools import Tool, call_message
from lokal.server.responses.schemas import (
    ContentPart,
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionChoice,
    FunctionTool,
    InputItem,
    MessageItem,
    OtherTool,
    ReasoningItem,
)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def _part_text(part: ContentPart, where: str) -> str:
    if part.type in ("input_text", "output_text"):
        return part.text or ""
    if part.type == "refusal":
        return part.refusal or part.text or ""
    raise InvalidRequest(f"{where}: content of type {part.type!r} is not supported; only text", param="input")


def _stored_parts(content: str | list[ContentPart], role: str, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        content = [ContentPart(type="output_text" if role == "assistant" else "input_text", text=content)]
    parts = []
    for j, part in enumerate(content):
        text = _part_text(part, f"{where}.content[{j}]")
        if part.type == "output_text":
            parts.append({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
        elif part.type == "refusal":
            parts.append({"type": "refusal", "refusal": text})
        else:
            parts.append({"type": "input_text", "text": text})
    return parts


def stored_items(raw: str | list[InputItem] | None) -> list[dict[str, Any]]:
    """The request's input as stored and listed by ``input_items``: every item with an id, a
    status, and its content as a list of parts."""
    if raw is None:
        return []
    if isinstance(raw, str):
        raw = [MessageItem(role="user", content=raw)]
    out: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        if isinstance(item, MessageItem):
            out.append({"type": "message", "id": item.id or new_id("msg"), "role": item.role,
                        "status": item.status or "completed", "content": _stored_parts(item.content, item.role, where)})
        elif isinstance(item, FunctionCallItem):
            out.append({"type": "function_call", "id": item.id or new_id("fc"), "call_id": item.call_id,
                        "name": item.name, "arguments": item.arguments, "status": item.status or "completed"})
        elif isinstance(item, FunctionCallOutputItem):
            output = item.output if isinstance(item.output, str) else \
                "".join(_part_text(p, f"{where}.output[{j}]") for j, p in enumerate(item.output))
            out.append({"type": "function_call_output", "id": item.id or new_id("fco"), "call_id": item.call_id,
                        "output": output, "status": item.status or "completed"})
        elif isinstance(item, ReasoningItem):
            out.append({"type": "reasoning", "id": item.id or new_id("rs"), "summary": item.summary,
                        **({"content": item.content} if item.content is not None else {})})
    return out


def _text(parts: list[dict[str, Any]]) -> str:
    return "".join(str(p.get("text") if p.get("type") != "refusal" else p.get("refusal")) or "" for p in parts)


def chat_messages(items: list[dict[str, Any]], instructions: str | None, first_new: int) -> list[dict[str, Any]]:
    """The conversation as chat messages for the runtime. A ``function_call_output`` must answer a
    ``function_call`` earlier in the conversation (400 otherwise). ``first_new``: index of the
    first item of this request (earlier ones come from ``previous_response_id``), for errors."""
    out: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions else []
    calls: dict[str, str] = {}  # call_id -> function name
    for i, item in enumerate(items):
        where = f"input[{i - first_new}]" if i >= first_new else f"previous response's item {i}"
        kind = item["type"]
        if kind == "message":
            role = "system" if item["role"] == "developer" else item["role"]
            out.append({"role": role, "content": _text(item["content"])})
        elif kind == "function_call":
            try:
                call = call_message({"id": item["call_id"], "function": {"name": item["name"],
                                                                         "arguments": item["arguments"]}}, where)
            except InvalidRequest as exc:
                raise InvalidRequest(exc.message.replace(".function.arguments", ".arguments"), param="input") from None
            calls[item["call_id"]] = item["name"]
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)  # parallel calls, or text then a call: one turn
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            name = calls.get(item["call_id"])
            if name is None:
                raise InvalidRequest(f"{where}: no function_call with call_id {item['call_id']!r} is in the "
                                     "conversation for this function_call_output", param="input")
            out.append({"role": "tool", "tool_call_id": item["call_id"], "name": name, "content": item["output"]})
        # reasoning items are not shown to the model again, as chat templates drop earlier thinking
    return out


def function_tools(raw: list[FunctionTool | OtherTool] | None) -> list[dict[str, Any]]:
    """Responses' flat function tools in the chat shape ``parse_tools`` reads; other types are refused."""
    out = []
    for i, tool in enumerate(raw or []):
        if isinstance(tool, OtherTool):
            raise InvalidRequest(f"tools[{i}]: tool type {tool.type!r} is not supported; only function tools",
                                 param="tools")
        out.append({"type": "function", "function": {"name": tool.name, "description": tool.description or "",
                                                     "parameters": tool.parameters}})
    return out


def chat_tool_choice(raw: str | FunctionChoice | dict[str, Any] | None) -> str | dict[str, Any] | None:
    """Responses' tool_choice in the chat shape ``chosen_tools`` reads."""
    if raw is None or isinstance(raw, str):
        return raw
    if isinstance(raw, FunctionChoice):
        return {"type": "function", "function": {"name": raw.name}}
    raise InvalidRequest(f"tool_choice of type {raw.get('type')!r} is not supported; use none, auto, required or "
                         '{"type": "function", "name": ...}', param="tool_choice")


def tool_echo(tool: Tool) -> dict[str, Any]:
    return {"type": "function", "name": tool.name, "description": tool.description or None,
            "parameters": tool.parameters, "strict": False}


def text_item(kind: str, message_id: str, reasoning_id: str, text: str, status: str) -> dict[str, Any]:
    """A ``reasoning`` or assistant ``message`` output item holding ``text``."""
    if kind == "reasoning":
        return {"type": "reasoning", "id": reasoning_id, "summary": [], "status": status,
                "content": [{"type": "reasoning_text", "text": text}]}
    return {"type": "message", "id": message_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def output_items(done: Finished, message_id: str, reasoning_id: str, parallel: bool) -> list[dict[str, Any]]:
    """A finished generation's output items: its reasoning (when the model thought), its message
    (unless it only called functions) and its function calls."""
    status = "incomplete" if done.reason.value == "length" else "completed"
    calls = list(done.tool_calls) if parallel else list(done.tool_calls[:1])
    items: list[dict[str, Any]] = []
    if done.reasoning:
        items.append(text_item("reasoning", message_id, reasoning_id, done.reasoning, status))
    if done.content or not calls:
        items.append(text_item("message", message_id, reasoning_id, done.content, status))
    for call in calls:
        items.append({"type": "function_call", "id": new_id("fc"), "call_id": call.id, "name": call.name,
                      "arguments": call.arguments_json(), "status": "completed"})
    return items


def usage(done: Finished) -> dict[str, Any]:
    u = done.usage
    return {"input_tokens": u.prompt_tokens,
            "input_tokens_details": {"cached_tokens": u.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": u.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.total_tokens}
