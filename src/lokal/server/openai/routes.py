"""OpenAI-compatible endpoints: /v1/models, /v1/chat/completions, /v1/completions."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from lokal.config import Settings
from lokal.engine.sequence import Usage
from lokal.options import OptionError, from_openai
from lokal.runtime.errors import InvalidRequest
from lokal.runtime.events import Delta, Event, Failed, Finished
from lokal.runtime.images import ImagePart, image_from_url
from lokal.runtime.request import GenerateRequest, JsonOutput, ToolUse
from lokal.runtime.runtime import Runtime
from lokal.runtime.tools import (
    argument_fragments,
    call_message,
    chosen_tools,
    parse_tools,
)
from lokal.server.errors import APIError, api_error
from lokal.server.generation import caller, get_runtime, openai_finish_reason, option_error
from lokal.server.openai.choices import chat_logprobs, collect_choices, completion_logprobs, total_usage
from lokal.server.openai.constraints import output_constraint
from lokal.server.openai.schemas import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    ModelCard,
    ModelList,
    PromptTokensDetails,
    SamplingFields,
    UsageBody,
)

router = APIRouter(prefix="/v1", tags=["openai"])


def usage_body(usage: Usage) -> dict[str, Any]:
    return UsageBody(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
    ).model_dump()


def sse(data: dict[str, Any] | str) -> bytes:
    body = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {body}\n\n".encode()


@router.get("/models", response_model=ModelList)
async def list_models(runtime: Runtime = Depends(get_runtime)) -> ModelList:
    cards = [
        ModelCard(id=m.name, created=int(m.modified_at.timestamp()), kind=m.kind)
        for m in runtime.store.list()
    ]
    return ModelList(data=cards)


@router.get("/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, runtime: Runtime = Depends(get_runtime)) -> ModelCard:
    from lokal.store.errors import StoreError

    try:
        m = runtime.store.get(model_id)
    except StoreError as exc:
        raise APIError(404, f"The model `{model_id}` does not exist", param="model",
                       code="model_not_found") from exc
    return ModelCard(id=m.name, created=int(m.modified_at.timestamp()), kind=m.kind)


async def _messages(req: ChatCompletionRequest, runtime: Runtime) -> list[dict[str, Any]]:
    out = []
    for i, m in enumerate(req.messages):
        if m.has_images():
            runtime.check_images(req.model, f"messages.{i}.content")
        role = "system" if m.role == "developer" else m.role
        content: str | list[dict[str, Any]]
        if m.has_images():
            if role != "user":
                raise APIError(400, f"messages[{i}]: image_url parts are accepted in user messages only",
                               param=f"messages.{i}.content")
            content = await _parts(m, i, runtime.settings)
        else:
            try:
                content = m.text()
            except ValueError as exc:
                raise APIError(400, f"messages[{i}]: {exc}", param=f"messages.{i}.content") from exc
        msg: dict[str, Any] = {"role": role, "content": content}
        if m.tool_calls and role == "assistant":
            msg["tool_calls"] = [call_message(c, f"messages[{i}].tool_calls[{j}]") for j, c in enumerate(m.tool_calls)]
        if role == "tool":
            msg["tool_call_id"] = m.tool_call_id or ""
            if m.name:
                msg["name"] = m.name
        out.append(msg)
    return out


async def _parts(m: ChatMessage, i: int, settings: Settings) -> list[dict[str, Any]]:
    """A user message's text and image_url parts, each image fetched (data: URLs; http(s) when
    LOKAL_IMAGE_URLS allows it) and decoded."""
    assert isinstance(m.content, list)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(m.content):
        where = f"messages.{i}.content.{j}"
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            spec = part.get("image_url")
            url = spec.get("url") if isinstance(spec, dict) else spec
            parts.append({"type": "image", "image": ImagePart(await image_from_url(url, settings, where))})
        else:
            raise APIError(400, f"messages[{i}]: content part of type {kind!r} is not supported; only text "
                           "and image_url", param=where)
    return parts


def _top_logprobs(req: ChatCompletionRequest) -> int | None:
    """What the runtime's ``logprobs`` is for a chat request (None: none asked)."""
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError(400, "top_logprobs requires logprobs to be true", param="top_logprobs")
    return (req.top_logprobs or 0) if req.logprobs else None


def response_format(fmt: dict[str, Any] | None) -> JsonOutput | None:
    """OpenAI's response_format: text, json_object or json_schema ({"json_schema": {"schema": ...}})."""
    kind = (fmt or {}).get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return JsonOutput(None, "response_format")
    if kind == "json_schema":
        spec = (fmt or {}).get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise InvalidRequest("response_format.json_schema.schema must be a JSON schema object",
                                 param="response_format", code="invalid_schema")
        return JsonOutput(spec["schema"], "response_format")
    raise InvalidRequest(f"response_format type {kind!r} is not one of text, json_object, json_schema",
                         param="response_format")


def reasoning_fields(effort: str | None) -> dict[str, Any]:
    """OpenAI's reasoning_effort as the runtime's think / reasoning_effort: "none" turns a thinking
    model's thinking off, "minimal" is read as low; a model that does not think ignores it."""
    if effort is None:
        return {}
    if effort == "none":
        return {"think": False}
    return {"reasoning_effort": "low" if effort == "minimal" else effort}


def _options(req: SamplingFields) -> dict[str, Any]:
    try:
        return from_openai(req.sampling_fields())
    except OptionError as exc:
        raise option_error(exc) from None


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    req: ChatCompletionRequest, request: Request, runtime: Runtime = Depends(get_runtime)
) -> dict[str, Any] | StreamingResponse:
    top_logprobs = _top_logprobs(req)
    messages = await _messages(req, runtime)
    tools = parse_tools(req.tools) if req.tools else []
    offered, forced = chosen_tools(tools, req.tool_choice)  # a required or named choice needs tools
    output, grammar = output_constraint(req.constraint_fields(), response_format(req.response_format))
    shown = tools if req.tool_choice != "none" else []
    parallel = req.parallel_tool_calls
    stream = await runtime.generate(GenerateRequest(
        model=req.model, messages=messages,
        options=_options(req),
        output=output, grammar=grammar,
        tools=ToolUse(tuple(shown), tuple(offered), forced, parallel), caller=caller(request),
        **reasoning_fields(req.reasoning_effort), logprobs=top_logprobs, n=req.n,
    ))
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": rid, "created": created, "model": runtime.canonical_name(req.model), "system_fingerprint": "lokal"}
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return _sse_response(_chat_chunks(stream, head, include_usage, req.n, top_logprobs is not None))
    dones = await collect_choices(stream, request, req.n)
    return {
        **head,
        "object": "chat.completion",
        "choices": [_chat_choice(done, top_logprobs is not None) for done in dones],
        "usage": usage_body(total_usage([d.usage for d in dones])),
    }


def _chat_choice(done: Finished, logprobs: bool) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": done.content}
    if done.tool_calls:
        message = {"role": "assistant", "content": done.content or None,
                   "tool_calls": [c.openai() for c in done.tool_calls]}
    if done.reasoning:
        message["reasoning_content"] = done.reasoning  # vLLM's and DeepSeek's field
    return {"index": done.index, "message": message, "logprobs": chat_logprobs(done.logprobs) if logprobs else None,
            "finish_reason": openai_finish_reason(done)}


def _error_chunk(event: Failed) -> bytes:
    return sse(api_error(event.error).openai_body())


async def _chat_chunks(stream: AsyncGenerator[Event, None], head: dict[str, Any], include_usage: bool,
                       n: int = 1, logprobs: bool = False) -> AsyncIterator[bytes]:
    base = {**head, "object": "chat.completion.chunk"}
    usages: list[Usage] = []

    def chunk(delta: dict[str, Any], finish: str | None, index: int = 0,
              probs: dict[str, Any] | None = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": probs, "finish_reason": finish}
        return sse({**base, "choices": [choice], **({"usage": None} if include_usage else {})})

    for index in range(n):
        yield chunk({"role": "assistant", "content": ""}, None, index)
    try:
        async for event in stream:
            if isinstance(event, Failed):
                yield _error_chunk(event)
                break
            if isinstance(event, Delta):
                at = event.index
                if event.reasoning:
                    yield chunk({"reasoning_content": event.reasoning}, None, at)
                if event.text or (logprobs and event.logprobs):
                    probs = chat_logprobs(event.logprobs) if logprobs else None
                    yield chunk({"content": event.text}, None, at, probs)
            elif isinstance(event, Finished):
                at = event.index
                for i, call in enumerate(event.tool_calls):
                    # OpenAI's shape: id, type and name first with empty arguments, then fragments.
                    first = call.openai(i)
                    first["function"]["arguments"] = ""
                    yield chunk({"tool_calls": [first]}, None, at)
                    for piece in argument_fragments(call.arguments_json()):
                        yield chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}, None, at)
                yield chunk({}, openai_finish_reason(event), at)
                usages.append(event.usage)
                if include_usage and len(usages) == n:
                    yield sse({**base, "choices": [], "usage": usage_body(total_usage(usages))})
        yield sse("[DONE]")
    finally:
        await stream.aclose()


def _completion_prompt(req: CompletionRequest) -> str | list[int]:
    p = req.prompt
    if isinstance(p, str):
        return p
    if len(p) == 0:
        raise APIError(400, "prompt must not be empty", param="prompt")
    if all(isinstance(x, int) for x in p):
        return list(p)  # type: ignore[arg-type]
    if len(p) == 1 and isinstance(p[0], str):
        return p[0]
    raise APIError(400, "only one prompt per request is supported (n=1)", param="prompt")


@router.post("/completions", response_model=None)
async def completions(
    req: CompletionRequest, request: Request, runtime: Runtime = Depends(get_runtime)
) -> dict[str, Any] | StreamingResponse:
    raw = _completion_prompt(req)
    # suffix: fill-in-the-middle with the model's FIM tokens (400 for a model without them)
    output, grammar = output_constraint(req.constraint_fields(), None)
    stream = await runtime.generate(GenerateRequest(
        model=req.model, prompt=raw, options=_options(req), caller=caller(request), output=output, grammar=grammar,
        suffix=req.suffix or None, logprobs=req.logprobs, n=req.n,
    ))
    echo = raw if req.echo and isinstance(raw, str) else ""
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": rid, "object": "text_completion", "created": created, "model": runtime.canonical_name(req.model),
            "system_fingerprint": "lokal"}
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return _sse_response(_completion_chunks(stream, head, echo, include_usage, req.n,
                                                req.logprobs is not None))
    dones = await collect_choices(stream, request, req.n)
    return {
        **head,
        "choices": [
            {"index": done.index, "text": echo + done.text, "finish_reason": openai_finish_reason(done),
             "logprobs": completion_logprobs(done.logprobs, len(echo)) if req.logprobs is not None else None}
            for done in dones
        ],
        "usage": usage_body(total_usage([d.usage for d in dones])),
    }


async def _completion_chunks(
    stream: AsyncGenerator[Event, None], head: dict[str, Any], echo: str, include_usage: bool, n: int = 1,
    logprobs: bool = False,
) -> AsyncIterator[bytes]:
    usages: list[Usage] = []
    offsets = [len(echo)] * n  # where each choice's next token starts in its text

    def chunk(text: str, finish: str | None, index: int = 0, probs: dict[str, Any] | None = None) -> bytes:
        choice = {"index": index, "text": text, "logprobs": probs, "finish_reason": finish}
        return sse({**head, "choices": [choice], **({"usage": None} if include_usage else {})})

    for index in range(n if echo else 0):
        yield chunk(echo, None, index)
    try:
        async for event in stream:
            if isinstance(event, Failed):
                yield _error_chunk(event)
                break
            if isinstance(event, Delta):
                probs = completion_logprobs(event.logprobs, offsets[event.index]) if logprobs else None
                offsets[event.index] += sum(len(lp.token) for lp in event.logprobs)
                yield chunk(event.text, None, event.index, probs)
            elif isinstance(event, Finished):
                yield chunk("", openai_finish_reason(event), event.index)
                usages.append(event.usage)
                if include_usage and len(usages) == n:
                    yield sse({**head, "choices": [], "usage": usage_body(total_usage(usages))})
        yield sse("[DONE]")
    finally:
        await stream.aclose()


def _sse_response(body: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
