"""Anthropic's Messages API: ``POST /v1/messages`` (streamed or not) and
``POST /v1/messages/count_tokens``, an adapter over ``Runtime.generate``.

A request becomes lokal's chat: the system prompt first, ``tool_use`` blocks the assistant's tool
calls, ``tool_result`` blocks tool messages (each must answer an earlier ``tool_use``). Tools and
``tool_choice`` map onto lokal's ``ToolUse``: ``any`` and ``tool`` force a call through the grammar.
Errors are Anthropic's (``lokal.server.errors``: every path under ``/v1/messages``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from lokal.engine.sequence import FinishReason, Usage
from lokal.engine.vision import Bitmap
from lokal.options import BY_NAME, OptionError, check
from lokal.runtime.errors import InvalidRequest
from lokal.runtime.events import Delta, Event, Failed, Finished, Queued
from lokal.runtime.images import ImagePart, decode_base64, image_from_url
from lokal.runtime.request import GenerateRequest, JsonOutput, ToolUse
from lokal.runtime.runtime import Runtime
from lokal.runtime.tools import ToolCall, argument_fragments, call_message, chosen_tools, parse_tools
from lokal.server.anthropic.schemas import (
    CountTokensRequest,
    ImageBlock,
    MessageResponse,
    MessagesRequest,
    RedactedThinkingBlock,
    TextBlock,
    TextOut,
    ThinkingBlock,
    ThinkingDisabled,
    ThinkingEnabled,
    ThinkingOut,
    TokenCount,
    ToolChoiceAny,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlock,
    ToolUseBlock,
    ToolUseOut,
    UsageOut,
)
from lokal.server.errors import api_error
from lokal.server.generation import caller, collect, get_runtime, option_error

router = APIRouter(prefix="/v1", tags=["anthropic"])

PING_EVERY_S = 5.0  # while a streamed request waits for its slot or reads a long prompt
# Anthropic's request fields that are lokal options, and the option each one is.
SAMPLING = {"max_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
            "stop_sequences": "stop"}
NO_VISION = "image blocks are accepted in user messages only"


# ---- the request side ------------------------------------------------------------------------

def _system(system: str | list[TextBlock] | None) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    return "\n\n".join(b.text for b in system)


def _result_text(block: ToolResultBlock, where: str, param: str) -> str:
    if block.content is None or isinstance(block.content, str):
        text = block.content or ""
    else:
        if any(isinstance(b, ImageBlock) for b in block.content):
            raise InvalidRequest(f"{where}: {NO_VISION}", param=param)
        text = "\n\n".join(b.text for b in block.content if isinstance(b, TextBlock))
    return f"Error: {text}" if block.is_error else text


async def image_bitmaps(req: CountTokensRequest, runtime: Runtime) -> dict[int, Bitmap]:
    """The user messages' image blocks decoded (base64 sources; url sources when LOKAL_IMAGE_URLS
    allows them), by the block's id(); refused for a model without a vision projector."""
    settings = runtime.settings
    out: dict[int, Bitmap] = {}
    for i, message in enumerate(req.messages):
        if message.role != "user" or isinstance(message.content, str):
            continue
        for j, block in enumerate(message.content):
            if not isinstance(block, ImageBlock):
                continue
            param, source = f"messages.{i}.content.{j}.source", block.source
            runtime.check_images(req.model, f"messages.{i}.content.{j}")
            if source.get("type") == "base64":
                out[id(block)] = await asyncio.to_thread(decode_base64, source.get("data"), settings, param)
            elif source.get("type") == "url":
                out[id(block)] = await image_from_url(source.get("url"), settings, param)
            else:
                raise InvalidRequest(f"messages[{i}].content[{j}]: image source type must be base64 or url",
                                     param=param)
    return out


def chat_messages(req: CountTokensRequest, images: dict[int, Bitmap] | None = None) -> list[dict[str, Any]]:
    """lokal's chat (OpenAI-shaped messages, tool calls with decoded arguments) from Anthropic's;
    ``images``: the image blocks' decoded images (``image_bitmaps``)."""
    out: list[dict[str, Any]] = []
    system = _system(req.system)
    if system:
        out.append({"role": "system", "content": system})
    called: dict[str, str] = {}  # tool_use id -> tool name, for the results that follow
    for i, message in enumerate(req.messages):
        blocks = [TextBlock(type="text", text=message.content)] if isinstance(message.content, str) \
            else message.content
        texts: list[str] = []
        parts: list[dict[str, Any]] = []  # with images: the text and image parts in order
        calls: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        for j, block in enumerate(blocks):
            where, param = f"messages[{i}].content[{j}]", f"messages.{i}.content.{j}"
            if isinstance(block, TextBlock):
                parts.append({"type": "text", "text": ("\n\n" if texts else "") + block.text})
                texts.append(block.text)
            elif isinstance(block, ThinkingBlock | RedactedThinkingBlock) and message.role == "assistant":
                continue  # earlier thinking is not part of the prompt
            elif isinstance(block, ImageBlock) and message.role == "user":
                assert images is not None and id(block) in images, "image_bitmaps decodes every user image block"
                parts.append({"type": "image", "image": ImagePart(images[id(block)])})
            elif isinstance(block, ImageBlock):
                raise InvalidRequest(f"{where}: {NO_VISION}", param=param)
            elif isinstance(block, ToolUseBlock) and message.role == "assistant":
                called[block.id] = block.name
                calls.append(call_message({"id": block.id, "function": {"name": block.name, "arguments": block.input}},
                                          where))
            elif isinstance(block, ToolResultBlock) and message.role == "user":
                if block.tool_use_id not in called:
                    raise InvalidRequest(f"{where}: tool_result for tool_use_id {block.tool_use_id!r}, which no "
                                         "earlier assistant tool_use block has", param=f"{param}.tool_use_id")
                results.append({"role": "tool", "tool_call_id": block.tool_use_id,
                                "name": called[block.tool_use_id], "content": _result_text(block, where, param)})
            else:
                raise InvalidRequest(f"{where}: a {block.type} block cannot be in a {message.role} message",
                                     param=param)
        text = "\n\n".join(texts)
        if message.role == "assistant":
            out.append({"role": "assistant", "content": text, **({"tool_calls": calls} if calls else {})})
        else:
            out.extend(results)
            if len(parts) > len(texts):  # images
                out.append({"role": "user", "content": parts})
            elif text or not results:
                out.append({"role": "user", "content": text})
    return out


def tool_use(req: CountTokensRequest) -> ToolUse:
    """Anthropic's tools and tool_choice as lokal's: ``any`` is OpenAI's required, ``tool`` a named
    function (both forced through the grammar), ``none`` shows no tools."""
    choice = req.tool_choice
    if not req.tools:
        if isinstance(choice, ToolChoiceAny | ToolChoiceTool):
            raise InvalidRequest(f'tool_choice "{choice.type}" needs at least one tool', param="tool_choice")
        return ToolUse()
    tools = parse_tools([{"type": "function", "function": {"name": t.name, "description": t.description or "",
                                                           "parameters": t.input_schema}} for t in req.tools])
    openai_choice: str | dict[str, Any] = "auto"
    if isinstance(choice, ToolChoiceAny):
        openai_choice = "required"
    elif isinstance(choice, ToolChoiceTool):
        openai_choice = {"type": "function", "function": {"name": choice.name}}
    elif isinstance(choice, ToolChoiceNone):
        openai_choice = "none"
    offered, forced = chosen_tools(tools, openai_choice)
    shown = [] if openai_choice == "none" else tools
    parallel = not (choice is not None and not isinstance(choice, ToolChoiceNone) and choice.disable_parallel_tool_use)
    return ToolUse(tuple(shown), tuple(offered), forced, parallel)


def _options(req: MessagesRequest) -> dict[str, Any]:
    options = {}
    for field, name in SAMPLING.items():
        value = getattr(req, field)
        try:
            checked = check(BY_NAME[name], value, field)
        except OptionError as exc:
            raise option_error(exc) from None
        if checked is not None:
            options[name] = checked
    return options


def generate_request(req: CountTokensRequest, request: Request,
                     images: dict[int, Bitmap] | None = None) -> GenerateRequest:
    think = None
    if isinstance(req.thinking, ThinkingEnabled | ThinkingDisabled):
        think = isinstance(req.thinking, ThinkingEnabled)
    config = req.output_config
    output = JsonOutput(config.format.schema_, "output_config.format") if config and config.format else None
    effort = config.effort if config and config.effort else None
    return GenerateRequest(
        model=req.model, messages=chat_messages(req, images), tools=tool_use(req), output=output, think=think,
        reasoning_effort="high" if effort in ("xhigh", "max") else effort,
        options=_options(req) if isinstance(req, MessagesRequest) else {}, caller=caller(request),
    )


# ---- the response side -----------------------------------------------------------------------

def usage_out(usage: Usage) -> UsageOut:
    """Anthropic counts prompt tokens read from a cache apart from those read anew."""
    return UsageOut(input_tokens=usage.prompt_tokens - usage.cached_tokens, output_tokens=usage.completion_tokens,
                    cache_read_input_tokens=usage.cached_tokens)


def tool_use_id(call: ToolCall) -> str:
    return "toolu_" + call.id.removeprefix("call_")


def stop_reason(done: Finished) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence): which of the request's stop sequences ended it, as the engine saw."""
    if done.tool_calls:
        return "tool_use", None
    if done.reason is FinishReason.LENGTH:
        return "max_tokens", None
    if done.stop_sequence is not None:
        return "stop_sequence", done.stop_sequence
    return "end_turn", None


def message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


@router.post("/messages", response_model=MessageResponse, response_model_exclude_none=False,
             responses={200: {"content": {"text/event-stream": {}}}})
async def create_message(
    req: MessagesRequest, request: Request, runtime: Runtime = Depends(get_runtime)
) -> MessageResponse | StreamingResponse:
    """Anthropic's Messages API; ``stream: true`` answers with its server-sent events."""
    stream = await runtime.generate(generate_request(req, request, await image_bitmaps(req, runtime)))
    head = {"id": message_id(), "model": runtime.canonical_name(req.model)}
    if req.stream:
        return StreamingResponse(_events(stream, head), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    done = await collect(stream, request)
    reason, sequence = stop_reason(done)
    content: list[ThinkingOut | TextOut | ToolUseOut] = []
    if done.reasoning:
        content.append(ThinkingOut(thinking=done.reasoning))
    if done.content.strip() or not done.tool_calls:
        content.append(TextOut(text=done.content))
    content += [ToolUseOut(id=tool_use_id(c), name=c.name, input=c.arguments) for c in done.tool_calls]
    return MessageResponse(id=head["id"], model=head["model"], content=content, stop_reason=reason,  # type: ignore[arg-type]
                           stop_sequence=sequence, usage=usage_out(done.usage))


@router.post("/messages/count_tokens", response_model=TokenCount)
async def count_tokens(req: CountTokensRequest, request: Request, runtime: Runtime = Depends(get_runtime)
                       ) -> TokenCount:
    """The prompt's tokens (system, messages and tools, rendered as a real request renders them):
    ``input_tokens + cache_read_input_tokens`` of a request with the same body."""
    images = await image_bitmaps(req, runtime)
    return TokenCount(input_tokens=await runtime.prompt_tokens(generate_request(req, request, images)))


# ---- streaming -------------------------------------------------------------------------------

def sse(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data}, ensure_ascii=False)}\n\n".encode()


class _Blocks:
    """The content blocks of a streamed message: one open at a time, indexed from 0."""

    def __init__(self) -> None:
        self.count = 0
        self.open: str | None = None

    def start(self, block: dict[str, Any]) -> list[bytes]:
        out = self.stop()
        self.open = block["type"]
        out.append(sse("content_block_start", {"index": self.count, "content_block": block}))
        return out

    def delta(self, kind: str, delta: dict[str, Any]) -> list[bytes]:
        """A delta to a block of ``kind``, opening one when another kind is open."""
        out = [] if self.open == kind else self.start(_EMPTY[kind])
        out.append(sse("content_block_delta", {"index": self.count, "delta": delta}))
        return out

    def stop(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        self.count += 1
        return [sse("content_block_stop", {"index": self.count - 1})]


_EMPTY: dict[str, dict[str, Any]] = {"text": {"type": "text", "text": ""},
                                     "thinking": {"type": "thinking", "thinking": "", "signature": ""}}


async def _events(stream: AsyncGenerator[Event, None], head: dict[str, str]) -> AsyncIterator[bytes]:
    """message_start, ping, the content blocks' start / delta / stop, message_delta, message_stop;
    a failure after the start is an ``error`` event. A ping goes out every PING_EVERY_S while the
    request waits for its slot or its prompt is read."""
    first = await anext(stream)  # Queued: the prompt's length, for message_start's usage
    prompt = first.prompt_tokens if isinstance(first, Queued) else 0
    message: dict[str, Any] = {**head, "type": "message", "role": "assistant", "content": [], "stop_reason": None,
               "stop_sequence": None, "usage": UsageOut(input_tokens=prompt, output_tokens=0).model_dump()}
    yield sse("message_start", {"message": message})
    yield sse("ping", {})
    blocks = _Blocks()
    pending: asyncio.Future[Event] | None = None
    try:
        while True:
            pending = asyncio.ensure_future(anext(stream))
            while not pending.done():
                await asyncio.wait({pending}, timeout=PING_EVERY_S)
                if not pending.done():
                    yield sse("ping", {})
            try:
                event = pending.result()
            except StopAsyncIteration:
                break
            finally:
                pending = None
            if isinstance(event, Failed):
                yield sse("error", {"error": api_error(event.error).anthropic_body()["error"]})
                return
            if isinstance(event, Delta):
                if event.reasoning:
                    for chunk in blocks.delta("thinking", {"type": "thinking_delta", "thinking": event.reasoning}):
                        yield chunk
                if event.text:
                    for chunk in blocks.delta("text", {"type": "text_delta", "text": event.text}):
                        yield chunk
            elif isinstance(event, Finished):
                if blocks.count == 0 and blocks.open is None and not event.tool_calls:
                    for chunk in blocks.start(_EMPTY["text"]):  # an empty answer is still one text block
                        yield chunk
                for call in event.tool_calls:
                    for chunk in blocks.start({"type": "tool_use", "id": tool_use_id(call), "name": call.name,
                                               "input": {}}):
                        yield chunk
                    for piece in argument_fragments(call.arguments_json()):
                        yield sse("content_block_delta", {"index": blocks.count,
                                                          "delta": {"type": "input_json_delta", "partial_json": piece}})
                for chunk in blocks.stop():
                    yield chunk
                reason, sequence = stop_reason(event)
                yield sse("message_delta", {"delta": {"stop_reason": reason, "stop_sequence": sequence},
                                            "usage": usage_out(event.usage).model_dump()})
                yield sse("message_stop", {})
                return
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        await stream.aclose()
