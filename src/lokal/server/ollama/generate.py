"""``POST /api/generate`` and ``POST /api/chat``: NDJSON streams (the default) or one object."""

from __future__ import annotations

import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from lokal.engine.sampling import SamplingParams
from lokal.engine.sequence import Delta, FinishReason, Timings, Usage
from lokal.runtime.keep_alive import parse_keep_alive
from lokal.runtime.loaded_model import LoadedModel
from lokal.runtime.runtime import ModelHold, Runtime
from lokal.server.errors import APIError
from lokal.server.generation import (
    build_prompt,
    collect,
    formatted_prompt,
    load_model,
    ollama_not_found,
    override_template_prompt,
    plain_tokens,
    submit,
)
from lokal.server.ollama.ndjson import ndjson_response
from lokal.server.ollama.options import context_limit, fit_to_context, sampling_from_options
from lokal.server.ollama.schemas import ChatRequest, GenerateRequest, Message, rfc3339
from lokal.server.tools import (
    CallSniffer,
    call_message,
    conversation,
    format_grammar,
    has_native_tools,
    parse_calls,
    parse_tools,
    stop_after_call,
)
from lokal.store.errors import InvalidModelName, ModelNotFound

router = APIRouter(tags=["ollama"])

CHAT_ROLES = ("system", "user", "assistant", "tool")
Piece = Callable[[str], dict[str, Any]]


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


@dataclass
class _Run:
    """One generation request on its way: what the final chunk reports about it."""

    model: str  # as the client named it
    loaded: LoadedModel
    hold: ModelHold  # released when the answer is complete
    prompt: list[int]
    started: float  # perf_counter when the request arrived
    load_s: float


def keep_alive_seconds(value: object) -> float | None:
    if value is None:
        return None
    try:
        return parse_keep_alive(value)
    except ValueError as exc:
        raise APIError(400, str(exc), param="keep_alive") from exc


def _refuse_common(model: str, think: bool | str | None, logprobs: bool | None) -> None:
    if think not in (None, False):
        raise APIError(400, f'"{model}" does not support thinking (think)', param="think")
    if logprobs:
        raise APIError(400, "logprobs are not supported yet", param="logprobs")


def _no_images(model: str, images: list[str] | None) -> None:
    if images:
        raise APIError(400, f'"{model}" does not support images: the model has no vision', param="images")


async def _load_or_unload(runtime: Runtime, model: str, keep_alive: float | None, empty: dict[str, Any]) -> dict:
    """A request with nothing to generate: keep_alive 0 unloads the model (``ollama stop``),
    anything else loads it. Answers like Ollama, with done_reason "unload" or "load"."""
    head = {"model": model, "created_at": rfc3339(), **empty, "done": True}
    if keep_alive == 0:
        try:
            runtime.store.get(model)
        except InvalidModelName as exc:
            raise APIError(400, str(exc), param="model") from exc
        except ModelNotFound as exc:
            raise APIError(404, ollama_not_found(model), param="model") from exc
        await runtime.unload(model)
        return {**head, "done_reason": "unload"}
    await load_model(runtime, model, keep_alive)
    return {**head, "done_reason": "load"}


async def _load(runtime: Runtime, model: str, keep_alive: float | None) -> tuple[LoadedModel, ModelHold, float]:
    started = time.perf_counter()
    loaded = await load_model(runtime, model, keep_alive)
    return loaded, runtime.hold(loaded.name), time.perf_counter() - started


def _params(loaded: LoadedModel, options: dict[str, Any] | None, prompt: list[int],
            grammar: str | None = None) -> SamplingParams:
    params = sampling_from_options(loaded, options)
    if grammar is not None:
        params = params.model_copy(update={"grammar": grammar})
    return fit_to_context(params, len(prompt), context_limit(loaded, options), loaded.context_length)


# ---- /api/generate ---------------------------------------------------------------------------

@router.post("/generate", response_model=None)
async def generate(
    req: GenerateRequest, request: Request, runtime: Runtime = Depends(get_runtime)
) -> dict[str, Any] | StreamingResponse:
    started = time.perf_counter()
    if req.suffix:
        raise APIError(400, f'"{req.model}" does not support insert (suffix, fill-in-the-middle)', param="suffix")
    _no_images(req.model, req.images)
    _refuse_common(req.model, req.think, req.logprobs)
    grammar = format_grammar(req.format, "format")
    keep_alive = keep_alive_seconds(req.keep_alive)
    if not req.prompt:
        return await _load_or_unload(runtime, req.model, keep_alive, {"response": ""})
    loaded, hold, load_s = await _load(runtime, req.model, keep_alive)
    try:
        prompt = build_prompt(lambda: _generate_prompt(loaded, req))
        params = _params(loaded, req.options, prompt, grammar)
    except BaseException:
        await hold.release()
        raise
    run = _Run(req.model, loaded, hold, prompt, started, load_s)

    def piece(text: str) -> dict[str, Any]:
        return {"response": text}

    def final(text: str) -> dict[str, Any]:
        return {} if req.raw else {"context": prompt + plain_tokens(loaded, text)}

    return await _respond(run, params, request, req.stream, piece, final)


def _generate_prompt(loaded: LoadedModel, req: GenerateRequest) -> list[int]:
    prompt = req.prompt or ""
    if req.raw:
        tokens = formatted_prompt(loaded, prompt)
    elif req.template:
        system = req.system or loaded.manifest.system
        messages = [{"role": "system", "content": system}] if system else []
        tokens = override_template_prompt(loaded, req.template, [*messages, {"role": "user", "content": prompt}])
    else:
        messages = [{"role": "system", "content": req.system}] if req.system else []
        tokens = loaded.chat_prompt([*messages, {"role": "user", "content": prompt}])
    if req.context:
        # The context already starts with BOS: do not put a second one in the middle.
        if loaded.model.add_bos and tokens and tokens[0] == req.context[0]:
            tokens = tokens[1:]
        tokens = list(req.context) + tokens
    return tokens


# ---- /api/chat -------------------------------------------------------------------------------

@router.post("/chat", response_model=None)
async def chat(
    req: ChatRequest, request: Request, runtime: Runtime = Depends(get_runtime)
) -> dict[str, Any] | StreamingResponse:
    started = time.perf_counter()
    _refuse_common(req.model, req.think, req.logprobs)
    grammar = format_grammar(req.format, "format")
    tools = parse_tools(req.tools) if req.tools else []
    messages = _chat_messages(req.model, req.messages or [])
    keep_alive = keep_alive_seconds(req.keep_alive)
    if not messages:
        return await _load_or_unload(runtime, req.model, keep_alive, {"message": {"role": "assistant", "content": ""}})
    loaded, hold, load_s = await _load(runtime, req.model, keep_alive)
    try:
        native = has_native_tools(loaded.template.source)
        convo = conversation(messages, tools, native)
        specs = [t.spec() for t in tools] if native and tools else None
        prompt = build_prompt(lambda: loaded.chat_prompt(convo, specs))
        params = stop_after_call(_params(loaded, req.options, prompt, grammar), tools, native)
    except BaseException:
        await hold.release()
        raise
    run = _Run(req.model, loaded, hold, prompt, started, load_s)
    sniffer = CallSniffer(tools) if tools else None

    def piece(text: str) -> dict[str, Any]:
        return {"message": {"role": "assistant", "content": text}}

    return await _respond(run, params, request, req.stream, piece, lambda _: {}, sniffer)


def _chat_messages(model: str, messages: list[Message]) -> list[dict[str, Any]]:
    out = []
    for i, m in enumerate(messages):
        if m.role not in CHAT_ROLES:
            raise APIError(400, f"messages[{i}].role: invalid role {m.role!r}; expected one of "
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

async def _respond(
    run: _Run, params: SamplingParams, request: Request, stream: bool,
    piece: Piece, final: Callable[[str], dict[str, Any]], sniffer: CallSniffer | None = None,
) -> dict[str, Any] | StreamingResponse:
    """Run the request; the model's hold is released once the last chunk is built."""
    try:
        deltas = submit(run.loaded, run.prompt, params)
    except BaseException:
        await run.hold.release()
        raise
    if stream:
        chunks = _chunks(run, deltas, piece, final, sniffer)
        # A client gone before the body starts leaves the generator unstarted (no finally): the
        # hold must still go, or keep_alive could never unload the model.
        weakref.finalize(chunks, run.hold.drop)
        return ndjson_response(chunks)
    try:
        done = await collect(deltas, request)
        body = piece(done.text)
        if sniffer is not None and done.finish_reason is not FinishReason.LENGTH:
            content, calls = parse_calls(done.text, sniffer.tools)
            if calls:
                body = {"message": {"role": "assistant", "content": content,
                                    "tool_calls": [c.ollama() for c in calls]}}
        return {
            "model": run.model, "created_at": rfc3339(), **body, "done": True,
            **_summary(run, done.finish_reason, done.usage, done.timings), **final(done.text),
        }
    finally:
        await run.hold.release()  # after final(): a keep_alive of 0 frees the tokenizer


async def _chunks(
    run: _Run, deltas: AsyncIterator[Delta], piece: Piece, final: Callable[[str], dict[str, Any]],
    sniffer: CallSniffer | None = None,
) -> AsyncIterator[dict[str, Any]]:
    parts: list[str] = []
    try:
        async for d in deltas:
            if d.finish_reason is FinishReason.ERROR:
                yield {"error": f"generation failed: {d.error}"}
                return
            if d.text:
                parts.append(d.text)
                text = sniffer.feed(d.text) if sniffer is not None else d.text
                if text:
                    yield {"model": run.model, "created_at": rfc3339(), **piece(text), "done": False}
            if d.finish_reason is not None and d.usage is not None:
                if sniffer is not None:
                    # Ollama streams a tool call whole, in one message, before the final chunk.
                    rest, calls = sniffer.finish(parse=d.finish_reason is not FinishReason.LENGTH)
                    if rest or calls:
                        msg: dict[str, Any] = {"role": "assistant", "content": rest}
                        if calls:
                            msg["tool_calls"] = [c.ollama() for c in calls]
                        yield {"model": run.model, "created_at": rfc3339(), "message": msg, "done": False}
                text = "".join(parts)
                yield {
                    "model": run.model, "created_at": rfc3339(), **piece(""), "done": True,
                    **_summary(run, d.finish_reason, d.usage, d.timings), **final(text),
                }
                return
    finally:
        await deltas.aclose()  # type: ignore[attr-defined]
        await run.hold.release()


def _summary(run: _Run, reason: FinishReason, usage: Usage, timings: Timings | None) -> dict[str, Any]:
    """done_reason and Ollama's counters; every duration in nanoseconds."""
    prompt_s = eval_s = 0.0
    if timings is not None:
        first = timings.ttft_s if timings.ttft_s is not None else timings.total_s
        prompt_s = max(0.0, first - timings.queued_s)
        eval_s = max(0.0, timings.total_s - first)
    return {
        "done_reason": "length" if reason is FinishReason.LENGTH else "stop",
        "total_duration": _ns(time.perf_counter() - run.started),
        "load_duration": _ns(run.load_s),
        "prompt_eval_count": usage.prompt_tokens,
        "prompt_eval_duration": _ns(prompt_s),
        "eval_count": usage.completion_tokens,
        "eval_duration": _ns(eval_s),
    }


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)
