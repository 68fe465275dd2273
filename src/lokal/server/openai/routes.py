"""OpenAI-compatible endpoints: /v1/models, /v1/chat/completions, /v1/completions."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from lokal.engine.sequence import Usage
from lokal.options import OptionError, from_openai
from lokal.runtime.errors import InvalidRequest
from lokal.runtime.events import Delta, Event, Failed, Finished
from lokal.runtime.request import GenerateRequest, JsonOutput, ToolUse
from lokal.runtime.runtime import Runtime
from lokal.runtime.tools import (
    argument_fragments,
    call_message,
    chosen_tools,
    parse_tools,
)
from lokal.server.errors import APIError, api_error
from lokal.server.generation import caller, collect, get_runtime, openai_finish_reason, option_error
from lokal.server.openai.constraints import output_constraint
from lokal.server.openai.schemas import (
    ChatCompletionRequest,
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
        ModelCard(id=m.name, created=int(m.modified_at.timestamp()))
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
    return ModelCard(id=m.name, created=int(m.modified_at.timestamp()))


def _messages(req: ChatCompletionRequest) -> list[dict[str, Any]]:
    out = []
    for i, m in enumerate(req.messages):
        try:
            text = m.text()
        except ValueError as exc:
            raise APIError(400, f"messages[{i}]: {exc}", param=f"messages.{i}.content") from exc
        role = "system" if m.role == "developer" else m.role
        msg: dict[str, Any] = {"role": role, "content": text}
        if m.tool_calls and role == "assistant":
            msg["tool_calls"] = [call_message(c, f"messages[{i}].tool_calls[{j}]") for j, c in enumerate(m.tool_calls)]
        if role == "tool":
            msg["tool_call_id"] = m.tool_call_id or ""
            if m.name:
                msg["name"] = m.name
        out.append(msg)
    return out


def _unsupported(req: ChatCompletionRequest) -> None:
    if req.logprobs:
        raise APIError(400, "logprobs are not supported yet", param="logprobs")


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
    _unsupported(req)
    messages = _messages(req)
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
        **reasoning_fields(req.reasoning_effort),
    ))
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": rid, "created": created, "model": runtime.canonical_name(req.model), "system_fingerprint": "lokal"}
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return _sse_response(_chat_chunks(stream, head, include_usage))
    done = await collect(stream, request)
    message: dict[str, Any] = {"role": "assistant", "content": done.content}
    if done.tool_calls:
        message = {"role": "assistant", "content": done.content or None,
                   "tool_calls": [c.openai() for c in done.tool_calls]}
    if done.reasoning:
        message["reasoning_content"] = done.reasoning  # vLLM's and DeepSeek's field
    return {
        **head,
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": openai_finish_reason(done)}],
        "usage": usage_body(done.usage),
    }


def _error_chunk(event: Failed) -> bytes:
    return sse(api_error(event.error).openai_body())


async def _chat_chunks(stream: AsyncGenerator[Event, None], head: dict[str, Any], include_usage: bool
                       ) -> AsyncIterator[bytes]:
    base = {**head, "object": "chat.completion.chunk"}

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse({**base, "choices": [choice], **({"usage": None} if include_usage else {})})

    yield chunk({"role": "assistant", "content": ""}, None)
    try:
        async for event in stream:
            if isinstance(event, Failed):
                yield _error_chunk(event)
                break
            if isinstance(event, Delta):
                if event.reasoning:
                    yield chunk({"reasoning_content": event.reasoning}, None)
                if event.text:
                    yield chunk({"content": event.text}, None)
            elif isinstance(event, Finished):
                for i, call in enumerate(event.tool_calls):
                    # OpenAI's shape: id, type and name first with empty arguments, then fragments.
                    first = call.openai(i)
                    first["function"]["arguments"] = ""
                    yield chunk({"tool_calls": [first]}, None)
                    for piece in argument_fragments(call.arguments_json()):
                        yield chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}, None)
                yield chunk({}, openai_finish_reason(event))
                if include_usage:
                    yield sse({**base, "choices": [], "usage": usage_body(event.usage)})
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
    if req.logprobs:
        raise APIError(400, "logprobs are not supported yet", param="logprobs")
    raw = _completion_prompt(req)
    # suffix: fill-in-the-middle with the model's FIM tokens (400 for a model without them)
    output, grammar = output_constraint(req.constraint_fields(), None)
    stream = await runtime.generate(GenerateRequest(
        model=req.model, prompt=raw, options=_options(req), caller=caller(request), output=output, grammar=grammar,
        suffix=req.suffix or None,
    ))
    echo = raw if req.echo and isinstance(raw, str) else ""
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": rid, "object": "text_completion", "created": created, "model": runtime.canonical_name(req.model),
            "system_fingerprint": "lokal"}
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return _sse_response(_completion_chunks(stream, head, echo, include_usage))
    done = await collect(stream, request)
    return {
        **head,
        "choices": [
            {"index": 0, "text": echo + done.text, "logprobs": None, "finish_reason": openai_finish_reason(done)}
        ],
        "usage": usage_body(done.usage),
    }


async def _completion_chunks(
    stream: AsyncGenerator[Event, None], head: dict[str, Any], echo: str, include_usage: bool
) -> AsyncIterator[bytes]:
    def chunk(text: str, finish: str | None) -> bytes:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return sse({**head, "choices": [choice], **({"usage": None} if include_usage else {})})

    if echo:
        yield chunk(echo, None)
    try:
        async for event in stream:
            if isinstance(event, Failed):
                yield _error_chunk(event)
                break
            if isinstance(event, Delta):
                yield chunk(event.text, None)
            elif isinstance(event, Finished):
                yield chunk("", openai_finish_reason(event))
                if include_usage:
                    yield sse({**head, "choices": [], "usage": usage_body(event.usage)})
        yield sse("[DONE]")
    finally:
        await stream.aclose()


def _sse_response(body: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
