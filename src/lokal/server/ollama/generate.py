"""``POST /api/generate`` and ``POST /api/chat``: Ollama's wire format to and from the runtime's
``GenerateRequest`` and events. NDJSON streams (the default) or one object."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from lokal.options import OptionError, from_ollama
from lokal.runtime.errors import InvalidRequest
from lokal.runtime.events import Delta, Event, Failed, Finished, Queued
from lokal.runtime.keep_alive import parse_keep_alive
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
Piece = Callable[[str], dict[str, Any]]


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


def _refuse_common(model: str, think: bool | str | None, logprobs: bool | None) -> None:
    if think not in (None, False):
        raise InvalidRequest(f'"{model}" does not support thinking (think)', param="think")
    if logprobs:
        raise InvalidRequest("logprobs are not supported yet", param="logprobs")


def _no_images(model: str, images: list[str] | None) -> None:
    if images:
        raise InvalidRequest(f'"{model}" does not support images: the model has no vision', param="images")


async def _load_or_unload(runtime: Runtime, model: str, keep_alive: float | None,
                          empty: dict[str, Any]) -> dict[str, Any]:
    """A request with nothing to generate: keep_alive 0 unloads the model (``ollama stop``),
    anything else loads it. Answers like Ollama, with done_reason "unload" or "load"."""
    head = {"model": model, "created_at": rfc3339(), **empty, "done": True}
    if keep_alive == 0:
        runtime.check_name(model)
        await runtime.unload(model)
        return {**head, "done_reason": "unload"}
    await runtime.model(model, keep_alive)
    return {**head, "done_reason": "load"}


# ---- /api/generate ---------------------------------------------------------------------------

@router.post("/generate", response_model=None)
async def generate(
    req: GenerateRequest, request: Request, runtime: Runtime = Depends(get_runtime)
) -> dict[str, Any] | StreamingResponse:
    started = time.perf_counter()
    if req.suffix:
        raise InvalidRequest(f'"{req.model}" does not support insert (suffix, fill-in-the-middle)', param="suffix")
    _no_images(req.model, req.images)
    _refuse_common(req.model, req.think, req.logprobs)
    output = json_format(req.format)
    keep_alive = keep_alive_seconds(req.keep_alive)
    if not req.prompt:
        return await _load_or_unload(runtime, req.model, keep_alive, {"response": ""})
    if req.raw:
        shape: dict[str, Any] = {"prompt": req.prompt, "raw": True}
    else:
        system = [{"role": "system", "content": req.system}] if req.system else []
        shape = {"messages": [*system, {"role": "user", "content": req.prompt}], "template": req.template}
    stream = await runtime.generate(Generation(
        model=req.model, **shape, context=req.context, options=_options(req.options), output=output,
        return_context=not req.raw, keep_alive=keep_alive, caller=caller(request),
    ))
    return await _respond(req.model, stream, started, request, req.stream, lambda text: {"response": text})


# ---- /api/chat -------------------------------------------------------------------------------

@router.post("/chat", response_model=None)
async def chat(
    req: ChatRequest, request: Request, runtime: Runtime = Depends(get_runtime)
) -> dict[str, Any] | StreamingResponse:
    started = time.perf_counter()
    _refuse_common(req.model, req.think, req.logprobs)
    output = json_format(req.format)
    tools = tuple(parse_tools(req.tools)) if req.tools else ()
    messages = _chat_messages(req.model, req.messages or [])
    keep_alive = keep_alive_seconds(req.keep_alive)
    if not messages:
        return await _load_or_unload(runtime, req.model, keep_alive, {"message": {"role": "assistant", "content": ""}})
    stream = await runtime.generate(Generation(
        model=req.model, messages=messages, options=_options(req.options), output=output,
        tools=ToolUse(tools, tools), keep_alive=keep_alive, caller=caller(request),
    ))

    def piece(text: str) -> dict[str, Any]:
        return {"message": {"role": "assistant", "content": text}}

    return await _respond(req.model, stream, started, request, req.stream, piece)


def _chat_messages(model: str, messages: list[Message]) -> list[dict[str, Any]]:
    out = []
    for i, m in enumerate(messages):
        if m.role not in CHAT_ROLES:
            raise InvalidRequest(f"messages[{i}].role: invalid role {m.role!r}; expected one of "
                                 + ", ".join(CHAT_ROLES), param=f"messages.{i}.role")
        _no_images(model, m.images)
        msg: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls and m.role == "assistant":
            msg["tool_calls"] = [call_message(c, f"messages[{i}].tool_calls[{j}]") for j, c in enumerate(m.tool_calls)]
        if m.tool_name:
            msg["name"] = m.tool_name
        out.append(msg)
    return out


# ---- one generation, streamed or not ---------------------------------------------------------

async def _respond(model: str, stream: AsyncGenerator[Event, None], started: float, request: Request,
                   streaming: bool, piece: Piece) -> dict[str, Any] | StreamingResponse:
    if streaming:
        return ndjson_response(_chunks(model, stream, started, piece))
    load_s = 0.0
    queued = await anext(stream)
    if isinstance(queued, Queued):
        load_s = queued.load_s
    done = await collect(stream, request)
    body = piece(done.text)
    if done.tool_calls:
        body = {"message": {"role": "assistant", "content": done.content,
                            "tool_calls": [c.ollama() for c in done.tool_calls]}}
    return {"model": model, "created_at": rfc3339(), **body, "done": True, **_summary(done, started, load_s)}


async def _chunks(model: str, stream: AsyncGenerator[Event, None], started: float, piece: Piece
                  ) -> AsyncIterator[dict[str, Any]]:
    try:
        load_s = 0.0
        async for event in stream:
            if isinstance(event, Queued):
                load_s = event.load_s
            elif isinstance(event, Failed):
                yield {"error": api_error(event.error).ollama_body()["error"]}
                return
            elif isinstance(event, Delta):
                yield {"model": model, "created_at": rfc3339(), **piece(event.text), "done": False}
            elif isinstance(event, Finished):
                if event.tool_calls:
                    # Ollama streams a tool call whole, in one message, before the final chunk.
                    msg = {"role": "assistant", "content": "", "tool_calls": [c.ollama() for c in event.tool_calls]}
                    yield {"model": model, "created_at": rfc3339(), "message": msg, "done": False}
                yield {"model": model, "created_at": rfc3339(), **piece(""), "done": True,
                       **_summary(event, started, load_s)}
                return
    finally:
        await stream.aclose()


def _summary(done: Finished, started: float, load_s: float) -> dict[str, Any]:
    """done_reason, Ollama's counters and (for /api/generate) the context; durations in ns."""
    timings = done.timings
    first = timings.ttft_s if timings.ttft_s is not None else timings.total_s
    prompt_s = max(0.0, first - timings.queued_s)
    eval_s = max(0.0, timings.total_s - first)
    out: dict[str, Any] = {
        "done_reason": "length" if done.reason.value == "length" else "stop",
        "total_duration": _ns(time.perf_counter() - started),
        "load_duration": _ns(load_s),
        "prompt_eval_count": done.usage.prompt_tokens,
        "prompt_eval_duration": _ns(prompt_s),
        "eval_count": done.usage.completion_tokens,
        "eval_duration": _ns(eval_s),
    }
    if done.context is not None:
        out["context"] = list(done.context)
    return out


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)
