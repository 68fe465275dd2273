"""Shared by every API surface: turn engine and store failures into APIErrors, and run one
request to completion or as a stream."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from pydantic import ValidationError

from lokal.engine.chat_template import TemplateError
from lokal.engine.engine import PromptTooLong
from lokal.engine.llama_model import ModelLoadError
from lokal.engine.sampling import SamplingParams
from lokal.engine.scheduler import QueueFull
from lokal.engine.sequence import Delta, FinishReason, Timings, Usage
from lokal.runtime.loaded_model import LoadedModel
from lokal.runtime.runtime import Runtime
from lokal.server.errors import APIError
from lokal.server.security.tracking import RequestFacts, RequestLimits, current_request
from lokal.store.errors import InvalidModelName, ModelNotFound, StoreError

RETRY_AFTER_S = 1
DISCONNECT_POLL_S = 0.25
TIMEOUT_ERROR = "request timed out"
OLLAMA_BUSY = "server busy, please try again.  maximum pending requests exceeded"  # Ollama's words


def ollama_not_found(name: str) -> str:
    return f'model "{name}" not found, try pulling it first'


async def load_model(runtime: Runtime, name: str, keep_alive: float | None = None) -> LoadedModel:
    """The loaded model (see Runtime.get for keep_alive), or the APIError a client should see."""
    try:
        return await runtime.get(name, keep_alive)
    except InvalidModelName as exc:
        raise APIError(400, str(exc), param="model", code="invalid_model_name") from exc
    except ModelNotFound as exc:
        raise APIError(404, f"The model `{name}` does not exist. {exc}", param="model",
                       code="model_not_found", ollama_message=ollama_not_found(name)) from exc
    except (StoreError, ModelLoadError) as exc:
        raise APIError(500, f"could not load model `{name}`: {exc}", type="server_error") from exc


def build_prompt(build: Callable[[], list[int]]) -> list[int]:
    try:
        return build()
    except TemplateError as exc:
        raise APIError(400, str(exc), param="messages", code="template_error") from exc
    except ValueError as exc:
        raise APIError(400, str(exc), param="messages") from exc


def checked_sampling(loaded: LoadedModel, **fields: object):  # type: ignore[no-untyped-def]
    try:
        return loaded.sampling(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        raise APIError(400, f"invalid sampling parameter {where}: {first.get('msg')}", param=where) from exc


def submit(loaded: LoadedModel, prompt: list[int], params) -> AsyncIterator[Delta]:  # type: ignore[no-untyped-def]
    facts = current_request.get()
    if facts is not None:
        params = within_limits(facts.limits, prompt, params)
    try:
        stream = loaded.submit(prompt, params)
    except PromptTooLong as exc:
        raise APIError(400, str(exc), param="messages", code="context_length_exceeded") from exc
    except QueueFull as exc:
        raise APIError(503, str(exc), type="server_error", code="server_busy",
                       headers={"Retry-After": str(RETRY_AFTER_S)}, ollama_message=OLLAMA_BUSY) from exc
    except ValueError as exc:
        raise APIError(400, str(exc)) from exc
    return stream if facts is None else observed(stream, facts, loaded.name, len(prompt))


def within_limits(limits: RequestLimits, prompt: list[int], params: SamplingParams) -> SamplingParams:
    """The server's per-request bounds: a prompt over LOKAL_MAX_PROMPT_TOKENS is refused; max_tokens
    (num_predict) is capped at LOKAL_MAX_TOKENS_LIMIT, as llama.cpp's server caps n_predict, so that
    clients sending their default (OpenAI completions: 16) still work; a capped answer ends with
    finish_reason "length"."""
    if limits.max_prompt_tokens and len(prompt) > limits.max_prompt_tokens:
        raise APIError(400, f"prompt is {len(prompt)} tokens, over this server's limit of "
                       f"{limits.max_prompt_tokens}", param="messages", code="context_length_exceeded")
    cap = limits.max_tokens
    if cap and (params.max_tokens is None or params.max_tokens > cap):
        return params.model_copy(update={"max_tokens": cap})
    return params


async def observed(stream: AsyncIterator[Delta], facts: RequestFacts, model: str, n_prompt: int
                   ) -> AsyncIterator[Delta]:
    """The stream as it is, timed for the metrics and the audit log: time to first token, the
    gaps between tokens, token counts. Ends it with an error delta past LOKAL_REQUEST_TIMEOUT."""
    facts.model = model
    timeout = facts.limits.timeout_s
    deadline = time.perf_counter() + timeout if timeout else None
    last: float | None = None
    generated = 0
    finished = False
    try:
        while True:
            try:
                if deadline is None:
                    delta = await anext(stream)
                else:
                    delta = await asyncio.wait_for(anext(stream), max(0.0, deadline - time.perf_counter()))
            except StopAsyncIteration:
                return
            except TimeoutError:
                finished = True  # counted now: a consumer stops reading at the error delta
                facts.prompt_tokens += n_prompt
                facts.completion_tokens += generated
                await stream.aclose()  # type: ignore[attr-defined]  # aborts the sequence at once
                yield Delta(finish_reason=FinishReason.ERROR, error=f"{TIMEOUT_ERROR} after {timeout:g} s")
                return
            now = time.perf_counter()
            if delta.token_ids:
                generated += len(delta.token_ids)
                if last is None:
                    facts.ttft_s = now - facts.started
                else:
                    facts.inter_token_s.append(now - last)
                last = now
            if delta.finish_reason is not None:
                finished = True
                usage = delta.usage
                facts.prompt_tokens += usage.prompt_tokens if usage else n_prompt
                facts.completion_tokens += usage.completion_tokens if usage else generated
                facts.generation_s = now - facts.started
            yield delta
            if finished:
                return
    finally:
        if not finished:
            facts.prompt_tokens += n_prompt
            facts.completion_tokens += generated
        await stream.aclose()  # type: ignore[attr-defined]


@dataclass
class Completed:
    """A whole generation, for non-streaming responses."""

    text: str
    finish_reason: FinishReason
    usage: Usage
    timings: Timings | None


async def collect(stream: AsyncIterator[Delta], request: Request | None = None) -> Completed:
    """Run a request to its end. If the HTTP client goes away first, the stream is closed, which
    aborts the sequence and frees its slot (streaming responses get this from Starlette)."""
    if request is None:
        return await _collect(stream)
    task = asyncio.ensure_future(_collect(stream))
    while not task.done():
        done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
        if not done and await request.is_disconnected():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await stream.aclose()  # type: ignore[attr-defined]
            raise APIError(499, "client disconnected", type="client_disconnected")
    return task.result()


async def _collect(stream: AsyncIterator[Delta]) -> Completed:
    parts: list[str] = []
    async for delta in stream:
        parts.append(delta.text)
        if delta.finish_reason is not None:
            if delta.finish_reason is FinishReason.ERROR:
                if (delta.error or "").startswith(TIMEOUT_ERROR):
                    raise APIError(504, f"{delta.error} (LOKAL_REQUEST_TIMEOUT)", type="timeout", code="timeout")
                raise APIError(500, f"generation failed: {delta.error}", type="server_error")
            assert delta.usage is not None
            return Completed("".join(parts), delta.finish_reason, delta.usage, delta.timings)
    raise APIError(500, "generation ended without a result", type="server_error")


def openai_finish_reason(reason: FinishReason | None) -> str | None:
    if reason is None:
        return None
    return "length" if reason is FinishReason.LENGTH else "stop"


def formatted_prompt(loaded: LoadedModel, text: str) -> list[int]:
    """Tokenize a prompt that is already in the model's format (raw, or rendered by a request's
    own template): special tokens are parsed, BOS added if the model wants one and it is missing."""
    model = loaded.model
    add_bos = model.add_bos and not (model.bos_text and text.startswith(model.bos_text))
    return model.tokenize(text, add_special=add_bos, parse_special=True)


def override_template_prompt(loaded: LoadedModel, template: str, messages: list[dict[str, Any]]) -> list[int]:
    """Render messages through a request's own template (Jinja, or an Ollama Go template as
    ``lokal create`` translates it) instead of the model's. ValueError if it cannot be used."""
    from lokal.engine.chat_template import ChatTemplate
    from lokal.store.create import prepare_template

    model = loaded.model
    text = ChatTemplate(prepare_template(template), model.bos_text, model.eos_text).render(
        messages, add_generation_prompt=True
    )
    return formatted_prompt(loaded, text)


def plain_tokens(loaded: LoadedModel, text: str) -> list[int]:
    """Tokens of generated text, to hand back as context (no BOS, no special-token parsing)."""
    return loaded.model.tokenize(text, add_special=False, parse_special=False) if text else []
