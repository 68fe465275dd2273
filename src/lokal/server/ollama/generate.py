"""``POST /api/generate`` and ``POST /api/chat``: Ollama's wire format to and from the runtime's
``GenerateRequest`` and events. NDJSON streams (the default) or one object."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from lokal.options import OptionError, from_ollama
from lokal.runtime.errors import InvalidRequest
from lokal.runtime.events import Delta, Event, Failed, Finished, Queued, TokenLogprob
from lokal.runtime.images import ImagePart, decode_base64
from lokal.runtime.keep_alive import parse_keep_alive
from lokal.runtime.reasoning import EFFORTS
from lokal.runtime.request import GenerateRequest as Generation
from lokal.runtime.request import JsonOutput, ToolUse
from lokal.runtime.runtime import Runtime
from lokal.runtime.tools import call_message, parse_tools
from lokal.server.errors import api_error
from lokal.server.generation import caller, collect, get_runtime, option_error
from lokal.server.ollama.ndjson import ndjson_response
from lokal.server.ollama.schemas import ChatRequest, GenerateRequest, Message, rfc3339

router = APIRouter(tags=["ollama"])

CHAT_ROLES = ("system", "user", "assistant", "tool")
NOT_QUEUED = Queued(position=0, load_s=0.0)
Piece = Callable[[str, str], dict[str, Any]]  # (answer text, thinking text) -> the message's fields


def keep_alive_seconds(value: object) -> float | None:
    if value is None:
        return None
    try:
        return parse_keep_alive(value)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="keep_alive") from exc


def _options(options: dict[str, Any] | None) -> dict[str, Any]:
    """Request options (Ollama's names) as canonical ones; unknown keys are ignored, as Ollama does."""
    try:
        return from_ollama(options or {})
    except OptionError as exc:
        raise option_error(exc) from None


def json_format(value: Any) -> JsonOutput | None:
    """Ollama's ``format``: "json" or a JSON schema object."""
    if value in (None, ""):
        return None
    if value == "json":
        return JsonOutput(None, "format")
    if isinstance(value, dict):
        return JsonOutput(value, "format")
    raise InvalidRequest('format must be "json" or a JSON schema object', param="format")


def think_fields(think: bool | str | None) -> dict[str, Any]:
    """Ollama's ``think`` (true/false, or "low", "medium", "high") as the runtime's think and
    reasoning_effort; the runtime refuses true for a model that cannot think."""
    if think is None or isinstance(think, bool):
        return {"think": think}
    if think in EFFORTS:
        return {"think": True, "reasoning_effort": think}
    raise InvalidRequest(f"invalid think value {think!r}: expected true, false, " + ", ".join(EFFORTS), param="think")


def thinking_piece(shape: Callable[[str, dict[str, Any]], dict[str, Any]], think: bool | str | None) -> Piece:
    """A message's fields with ``thinking`` when there is some and it was not turned off."""
    def piece(text: str, thinking: str) -> dict[str, Any]:
        return shape(text, {"thinking": thinking} if thinking and think is not False else {})
    return piece


def _top_logprobs(logprobs: bool | None, top: int | None) -> int | None:
    """The runtime's ``logprobs`` for Ollama's ``logprobs`` and ``top_logprobs`` (None: none)."""
    return (top or 0) if logprobs else None


def ollama_logprobs(logprobs: tuple[TokenLogprob, ...]) -> list[dict[str, Any]]:
    """Ollama's ``logprobs``: per token its text, logprob and bytes, and the top alternatives."""
    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return [{**entry(lp.token, lp.logprob), "top_logprobs": [entry(t, p) for t, p in lp.top]} for lp in logprobs]


async def _content(text: str, images: list[str] | None, runtime: Runtime, model: str,
                   param: str) -> str | list[dict[str, Any]]:
    """A message's content: its text, or with ``images`` (base64) content parts, the images first
    as Ollama places them (refused for a model without a vision projector)."""
    if not images:
        return text
    runtime.check_images(model, param)
    decoded = [await asyncio.to_thread(decode_base64, b64, runtime.settings, f"{param}.{j}")
               for j, b64 in enumerate(images)]
    return [*({"type": "image", "image": ImagePart(b)} for b in decoded), {"type": "text", "text": text}]


async def _load_or_unload(runtime: Runtime, model: str, keep_alive: float | None,
                          empty: dict[str, Any]) -> dict[str, Any]:
    """A request with nothing to generate: keep_alive 0 unloads the model (``ollama stop``),
    anything else loads it. Answers like Ollama, with done_reason "unload" or "load"."""
    head = {"model": model, "created_at": rfc3339(), **empty, "done": True}
    if keep_alive == 0:
        runtime.check_name(model)
        await runtime.unload(model)
        return {**head, "done_reason": "unload"}
    await runtime.load(model, keep_alive)
    return {**head, "done_reason": "load"}


# ---- /api/generate ---------------------------------------------------------------------------

@router.post("/generate", response_model=None)
async def generate(
    req: GenerateRequest, request: Request, runtime: Runtime = Depends(get_runtime)
) -> dict[str, Any] | StreamingResponse:
    started = time.perf_counter()
    if req.images and (req.raw or req.suffix):
        raise InvalidRequest("images go through the model's template: not with raw or suffix", param="images")
    top = _top_logprobs(req.logprobs, req.top_logprobs)
    output = json_format(req.format)
    keep_alive = keep_alive_seconds(req.keep_alive)
    if not req.prompt:
        return await _load_or_unload(runtime, req.model, keep_alive, {"response": ""})
    if req.suffix:  # fill-in-the-middle with the model's FIM tokens; the template is not used
        shape: dict[str, Any] = {"prompt": req.prompt, "raw": True, "suffix": req.suffix}
    elif req.raw:
        shape = {"prompt": req.prompt, "raw": True}
    else:
        system = [{"role": "system", "content": req.system}] if req.system else []
        content = await _content(req.prompt, req.images, runtime, req.model, "images")
        shape = {"messages": [*system, {"role": "user", "content": content}], "template": req.template}
    stream = await runtime.generate(Generation(
        model=req.model, **shape, context=req.context, options=_options(req.options), output=output,
        return_context=not req.raw, keep_alive=keep_alive, caller=caller(request), **think_fields(req.think),
        logprobs=top,
    ))
    piece = thinking_piece(lambda text, thinking: {"response": text, **thinking}, req.think)
    return await _respond(req.model, stream, started, request, req.stream, piece, top is not None)


# ---- /api/chat -------------------------------------------------------------------------------

@router.post("/chat", response_model=None)
async def chat(
    req: ChatRequest, request: Request, runtime: Runtime = Depends(get_runtime)
) -> dict[str, Any] | StreamingResponse:
    started = time.perf_counter()
    top = _top_logprobs(req.logprobs, req.top_logprobs)
    output = json_format(req.format)
    tools = tuple(parse_tools(req.tools)) if req.tools else ()
    messages = await _chat_messages(req.model, req.messages or [], runtime)
    keep_alive = keep_alive_seconds(req.keep_alive)
    if not messages:
        return await _load_or_unload(runtime, req.model, keep_alive, {"message": {"role": "assistant", "content": ""}})
    stream = await runtime.generate(Generation(
        model=req.model, messages=messages, options=_options(req.options), output=output,
        tools=ToolUse(tools, tools), keep_alive=keep_alive, caller=caller(request), **think_fields(req.think),
        truncate=req.truncate is not False,  # Ollama's default: drop the oldest turns rather than fail
        logprobs=top,
    ))
    piece = thinking_piece(lambda text, thinking: {"message": {"role": "assistant", "content": text, **thinking}},
                           req.think)
    return await _respond(req.model, stream, started, request, req.stream, piece, top is not None)


async def _chat_messages(model: str, messages: list[Message], runtime: Runtime) -> list[dict[str, Any]]:
    out = []
    for i, m in enumerate(messages):
        if m.role not in CHAT_ROLES:
            raise InvalidRequest(f"messages[{i}].role: invalid role {m.role!r}; expected one of "
                                 + ", ".join(CHAT_ROLES), param=f"messages.{i}.role")
        msg: dict[str, Any] = {"role": m.role,
                               "content": await _content(m.content, m.images, runtime, model, f"messages.{i}.images")}
        if m.tool_calls and m.role == "assistant":
            msg["tool_calls"] = [call_message(c, f"messages[{i}].tool_calls[{j}]") for j, c in enumerate(m.tool_calls)]
        if m.tool_name:
            msg["name"] = m.tool_name
        out.append(msg)
    return out


# ---- one generation, streamed or not ---------------------------------------------------------

async def _respond(model: str, stream: AsyncGenerator[Event, None], started: float, request: Request,
                   streaming: bool, piece: Piece, logprobs: bool = False) -> dict[str, Any] | StreamingResponse:
    if streaming:
        return ndjson_response(_chunks(model, stream, started, piece, logprobs))
    first = await anext(stream)
    queued = first if isinstance(first, Queued) else NOT_QUEUED
    done = await collect(stream, request)
    body = piece(done.content, done.reasoning)
    if done.tool_calls:
        body = {"message": {**piece(done.content, done.reasoning)["message"],
                            "tool_calls": [c.ollama() for c in done.tool_calls]}}
    if logprobs:
        body["logprobs"] = ollama_logprobs(done.logprobs)
    return {"model": model, "created_at": rfc3339(), **body, "done": True, **_summary(done, started, queued)}


async def _chunks(model: str, stream: AsyncGenerator[Event, None], started: float, piece: Piece,
                  logprobs: bool = False) -> AsyncIterator[dict[str, Any]]:
    try:
        queued = NOT_QUEUED
        async for event in stream:
            if isinstance(event, Queued):
                queued = event
            elif isinstance(event, Failed):
                yield {"error": api_error(event.error).ollama_body()["error"]}
                return
            elif isinstance(event, Delta):
                probs = {"logprobs": ollama_logprobs(event.logprobs)} if logprobs and event.logprobs else {}
                yield {"model": model, "created_at": rfc3339(), **piece(event.text, event.reasoning), **probs,
                       "done": False}
            elif isinstance(event, Finished):
                if event.tool_calls:
                    # Ollama streams a tool call whole, in one message, before the final chunk.
                    msg = {"role": "assistant", "content": "", "tool_calls": [c.ollama() for c in event.tool_calls]}
                    yield {"model": model, "created_at": rfc3339(), "message": msg, "done": False}
                yield {"model": model, "created_at": rfc3339(), **piece("", ""), "done": True,
                       **_summary(event, started, queued)}
                return
    finally:
        await stream.aclose()


def _summary(done: Finished, started: float, queued: Queued) -> dict[str, Any]:
    """done_reason, Ollama's counters and (for /api/generate) the context; durations in ns; and,
    when the chat was too long for the context, how many of its oldest messages were left out."""
    timings = done.timings
    first = timings.ttft_s if timings.ttft_s is not None else timings.total_s
    prompt_s = max(0.0, first - timings.queued_s)
    eval_s = max(0.0, timings.total_s - first)
    out: dict[str, Any] = {
        "done_reason": "length" if done.reason.value == "length" else "stop",
        "total_duration": _ns(time.perf_counter() - started),
        "load_duration": _ns(queued.load_s),
        "prompt_eval_count": done.usage.prompt_tokens,
        "prompt_eval_duration": _ns(prompt_s),
        "eval_count": done.usage.completion_tokens,
        "eval_duration": _ns(eval_s),
    }
    if done.context is not None:
        out["context"] = list(done.context)
    if queued.dropped_messages:
        out["truncated_messages"] = queued.dropped_messages  # lokal's: Ollama only logs it
    return out


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)
