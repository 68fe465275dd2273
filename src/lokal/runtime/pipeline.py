"""From a ``GenerateRequest`` to events, for one loaded model: the prompt (template, tools,
BOS, Ollama's context), the sampler's settings (one option vocabulary, the model's defaults,
num_ctx, the server's limits), then the engine's deltas turned into typed events, with the
request's timeout and tool-call parsing. Every API, the CLI and the ``LLM`` class go through it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

from pydantic import ValidationError

from lokal.config import Settings
from lokal.engine.engine import MAX_CHOICES
from lokal.engine.grammar import SchemaError, json_object_grammar, schema_grammar
from lokal.engine.sampling import MAX_TOP_LOGPROBS, SamplingParams
from lokal.engine.sequence import Delta as EngineDelta
from lokal.engine.sequence import FinishReason, ImageSpan, Timings, Usage
from lokal.engine.sequence import TokenLogprob as EngineLogprob
from lokal.options import BY_NAME, OptionError, check
from lokal.runtime.errors import ContextLengthExceeded, GenerationFailed, InvalidRequest, RequestTimedOut
from lokal.runtime.events import (
    Delta,
    Event,
    Failed,
    Finished,
    FirstToken,
    GenerationRecord,
    Started,
    TokenLogprob,
)
from lokal.runtime.images import split_images
from lokal.runtime.loaded_model import LoadedModel
from lokal.runtime.reasoning import ReasoningSplitter, opens_thinking, supports_thinking, template_variables
from lokal.runtime.request import GenerateRequest, JsonOutput
from lokal.runtime.tools import (
    CallSniffer,
    ToolCall,
    call_grammar,
    conversation,
    has_native_tools,
    parse_calls,
    schema_error,
    stop_after_call,
)
from lokal.templates.chat_template import TemplateError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """What the engine gets for a request."""

    prompt: list[int]
    params: SamplingParams
    think_open: bool | None = None  # None: no reasoning to split; else whether the prompt opened a think block
    dropped_messages: int = 0  # oldest chat messages left out to fit the context (req.truncate)
    images: tuple[ImageSpan, ...] = ()  # the prompt's images (their positions hold placeholder ids)


def prepare(loaded: LoadedModel, req: GenerateRequest, settings: Settings) -> Prepared:
    """The request's prompt and sampler settings. Raises InvalidRequest (ContextLengthExceeded)."""
    tools = req.tools
    grammar = req.grammar if req.output is None else output_grammar(req.output)
    if tools.forced:
        if grammar is not None:
            param = req.output.param if req.output is not None else "grammar"
            raise InvalidRequest(f"{param} cannot be combined with a required or named tool call", param=param)
        grammar = call_grammar(list(tools.callable), parallel=tools.parallel is True)
    options = loaded.options(req.options)
    thinks = _thinks(loaded, req)
    # A grammar shapes the answer from its first token: no room for thinking unless asked for.
    think = False if thinks and grammar is not None and req.think is None else req.think
    variables = template_variables(think, req.reasoning_effort) if thinks else None
    max_prompt = _max_prompt_tokens(loaded, options.get("num_ctx"), settings)
    fitted, dropped = _fit_chat(loaded, req, max_prompt, variables) if req.truncate and req.messages else (None, 0)
    prompt, images = fitted if fitted is not None else _prompt(loaded, req, max_prompt, variables)
    try:
        params = loaded.sampling(options, grammar)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        raise InvalidRequest(f"invalid sampling parameter {where}: {first.get('msg')}", param=where) from exc
    if tools.callable and not tools.forced:
        params = stop_after_call(params, list(tools.callable), has_native_tools(loaded.template.source))
    params = _fit_to_context(params, len(prompt), options.get("num_ctx"), loaded.context_length)
    think_open = None
    if thinks and req.messages is not None:
        think_open = opens_thinking(b"".join(loaded.model.token_text(t) for t in prompt[-16:] if t >= 0).decode(
            "utf-8", "replace"))
    params = within_limits(settings, prompt, params)
    if req.logprobs is not None:
        if not 0 <= req.logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidRequest(f"top logprobs must be between 0 and {MAX_TOP_LOGPROBS}", param="top_logprobs")
        params = params.model_copy(update={"logprobs": req.logprobs})
    if not 1 <= req.n <= MAX_CHOICES:
        raise InvalidRequest(f"n must be between 1 and {MAX_CHOICES}", param="n")
    return Prepared(prompt, params, think_open, dropped, images)


def _thinks(loaded: LoadedModel, req: GenerateRequest) -> bool:
    """Whether the model thinks (its template, or the request's own, writes think tags); ``think``
    true for one that does not is refused in Ollama's words."""
    able = supports_thinking(req.template or loaded.template.source)
    if req.think and not able:
        raise InvalidRequest(f'"{req.model}" does not support thinking', param="think")
    return able


def output_grammar(output: JsonOutput) -> str:
    """The grammar that makes an answer one JSON object, or one valid against the schema
    (checked first: an unsupported or invalid schema is an InvalidRequest naming the field)."""
    try:
        return json_object_grammar() if output.schema is None else schema_grammar(output.schema)
    except SchemaError as exc:
        raise schema_error(exc, output.param) from exc


def _max_prompt_tokens(loaded: LoadedModel, num_ctx: object, settings: Settings) -> int:
    """The most prompt tokens a request could be allowed (the exact checks come after
    tokenizing): one fewer than the slot or a smaller num_ctx, and LOKAL_MAX_PROMPT_TOKENS."""
    limit = loaded.context_length - 1
    if isinstance(num_ctx, int) and not isinstance(num_ctx, bool) and 1 <= num_ctx <= limit:
        limit = num_ctx - 1
    if settings.max_prompt_tokens:
        limit = min(limit, settings.max_prompt_tokens)
    return max(limit, 0)


def _prompt(loaded: LoadedModel, req: GenerateRequest, max_tokens: int,
            variables: dict[str, object] | None = None) -> tuple[list[int], tuple[ImageSpan, ...]]:
    """The prompt's tokens, and its images' spans (a chat with image parts)."""
    images: tuple[ImageSpan, ...] = ()
    try:
        if req.suffix is not None:
            tokens = _fim_prompt(loaded, req, max_tokens)
        elif req.messages is not None:
            tokens, images = _chat_prompt(loaded, req, max_tokens, variables)
        elif isinstance(req.prompt, str):
            tokens = (loaded.formatted_prompt(req.prompt, max_tokens) if req.raw
                      else loaded.text_prompt(req.prompt, max_tokens))
        elif req.prompt is not None:
            tokens = list(req.prompt)
        else:
            raise InvalidRequest("a request needs messages or a prompt", param="messages")
    except InvalidRequest:
        raise
    except TemplateError as exc:
        raise InvalidRequest(str(exc), param="messages", code="template_error") from exc
    except ValueError as exc:  # a Go template lokal cannot translate, text the tokenizer refuses
        raise InvalidRequest(str(exc), param="template" if req.template else "messages") from exc
    if req.context:
        # The context already starts with BOS: do not put a second one in the middle.
        shift = len(req.context)
        if loaded.model.add_bos and tokens and tokens[0] == req.context[0]:
            tokens = tokens[1:]
            shift -= 1
        tokens = list(req.context) + tokens
        images = tuple(ImageSpan(s.start + shift, s.embd, s.digest) for s in images)
    return tokens, images


def _fit_chat(loaded: LoadedModel, req: GenerateRequest, max_tokens: int, variables: dict[str, object] | None
              ) -> tuple[tuple[list[int], tuple[ImageSpan, ...]] | None, int]:
    """The prompt of the chat with its oldest turns dropped until it fits in ``max_tokens``, as
    Ollama truncates a chat: system messages, the tools and the latest turn (from the last user
    message on) are always kept; a turn (a user message and the answers and tool results after
    it) goes whole. Returns the prompt and how many messages were dropped (logged); None for a
    chat that does not fit even so, left for the exact checks to refuse."""
    assert req.messages is not None
    total = len(req.messages)
    users = [i for i, m in enumerate(req.messages) if m.get("role") == "user"]
    latest = users[-1] if users else total - 1
    dropped = 0
    prompt: tuple[list[int], tuple[ImageSpan, ...]] | None = None
    while True:
        try:
            prompt = _prompt(loaded, req, max_tokens, variables)
            if len(prompt[0]) <= max_tokens:
                break
        except ContextLengthExceeded:
            pass  # longer than the context by its byte length alone
        prompt = None
        kept = req.messages or []
        first = next((i for i, m in enumerate(kept) if m.get("role") != "system"), None)
        latest_kept = latest - dropped
        if first is None or first >= latest_kept:
            break
        end = first + 1
        while end < latest_kept and kept[end].get("role") not in ("user", "system"):
            end += 1
        dropped += end - first
        req = replace(req, messages=kept[:first] + kept[end:])
    if dropped:
        log.warning("chat for %s truncated to fit %d prompt tokens: the %d oldest of %d messages were dropped",
                    loaded.name, max_tokens, dropped, total)
    return prompt, dropped


def _chat_prompt(loaded: LoadedModel, req: GenerateRequest, max_tokens: int,
                 variables: dict[str, object] | None = None) -> tuple[list[int], tuple[ImageSpan, ...]]:
    assert req.messages is not None
    messages, images = split_images(req.messages)
    if images and loaded.vision is None:
        raise InvalidRequest(f"model {req.model} does not accept images", param="messages",
                             code="images_not_supported")
    shown = list(req.tools.shown)
    native = has_native_tools(loaded.template.source)
    convo = conversation(messages, shown, native)
    specs = [t.spec() for t in shown] if native and shown else None
    return loaded.chat_prompt_with_images(convo, images, specs, template=req.template, max_tokens=max_tokens,
                                          variables=variables)


def _fim_prompt(loaded: LoadedModel, req: GenerateRequest, max_tokens: int) -> list[int]:
    """Fill-in-the-middle: ``prompt`` before the gap, ``suffix`` after it, read raw."""
    if not isinstance(req.prompt, str):
        raise InvalidRequest("suffix (fill-in-the-middle) needs the prompt as text", param="prompt")
    assert req.suffix is not None
    tokens = loaded.fim_prompt(req.prompt, req.suffix, max_tokens)
    if tokens is None:
        raise InvalidRequest(f'"{req.model}" does not support insert (suffix): its vocabulary has no '
                             "fill-in-the-middle tokens", param="suffix", code="fim_not_supported")
    return tokens


def _fit_to_context(params: SamplingParams, n_prompt: int, num_ctx: object, slot_ctx: int) -> SamplingParams:
    """num_ctx (Ollama's) below the slot's context: refuse a prompt that does not fit in it, and
    stop generation where it ends. A larger one is clamped to the slot (clients often send 8192
    or more by habit; Ollama would reload the model, lokal's slots have a fixed size)."""
    try:
        n_ctx = check(BY_NAME["num_ctx"], num_ctx, "options.num_ctx")
    except OptionError as exc:
        raise InvalidRequest(str(exc), param="options.num_ctx") from None
    if n_ctx is None or n_ctx >= slot_ctx:
        return params  # the engine enforces the slot itself
    if n_prompt >= n_ctx:
        raise ContextLengthExceeded(f"prompt is {n_prompt} tokens but num_ctx is {n_ctx} tokens "
                                    "(and at least one must be left to generate)", param="options.num_ctx")
    room = n_ctx - n_prompt
    if params.max_tokens is None or params.max_tokens > room:
        return params.model_copy(update={"max_tokens": room})
    return params


def within_limits(settings: Settings, prompt: list[int], params: SamplingParams) -> SamplingParams:
    """The server's per-request bounds: a prompt over LOKAL_MAX_PROMPT_TOKENS is refused; max_tokens
    is capped at LOKAL_MAX_TOKENS_LIMIT, as llama.cpp's server caps n_predict, so that clients
    sending their default (OpenAI completions: 16) still work; a capped answer ends with "length"."""
    limit = settings.max_prompt_tokens
    if limit and len(prompt) > limit:
        raise ContextLengthExceeded(f"prompt is {len(prompt)} tokens, over this server's limit of {limit}",
                                    param="messages")
    cap = settings.max_tokens_limit
    if cap and (params.max_tokens is None or params.max_tokens > cap):
        return params.model_copy(update={"max_tokens": cap})
    return params


async def events(
    loaded: LoadedModel, req: GenerateRequest, prompt: list[int], deltas: AsyncGenerator[EngineDelta, None],
    record: GenerationRecord, timeout_s: float, publish: Callable[[GenerationRecord, Event], None],
    finish: Callable[[], Awaitable[None]], think_open: bool | None = None, index: int = 0,
) -> AsyncGenerator[Event, None]:
    """The engine's deltas as events, each also handed to ``publish``. ``finish`` runs once at the
    end, however the stream ends (the model's hold is released there). ``think_open`` (not None):
    the model's reasoning is split from its answer (``Prepared.think_open``). ``index``: the
    choice these events belong to (n > 1)."""
    tools = req.tools
    sniffer = CallSniffer(list(tools.callable), tools.forced) if tools.callable else None
    splitter = ReasoningSplitter(think_open) if think_open is not None else None
    parts: list[str] = []
    last: Event | None = None
    logprobs: list[TokenLogprob] = []  # every token's, for Finished
    unsent = 0  # how many of them no Delta has carried yet

    def emit(event: Event) -> Event:
        nonlocal last, unsent
        if isinstance(event, Delta) and unsent:
            event = replace(event, logprobs=tuple(logprobs[len(logprobs) - unsent:]))
            unsent = 0
        elif isinstance(event, Finished) and logprobs:
            event = replace(event, logprobs=tuple(logprobs))
        if index and isinstance(event, Delta | Finished):
            event = replace(event, index=index)
        last = event
        if isinstance(event, Finished | Failed):
            record.duration_s = time.perf_counter() - record.arrived
        publish(record, event)
        return event

    try:
        async for d in _deadline(deltas, timeout_s):
            now = time.perf_counter()
            if d.started:
                yield emit(Started(cached_tokens=d.usage.cached_tokens if d.usage else 0))
                continue
            if d.finish_reason is FinishReason.ERROR:
                record.outcome = "error"
                yield emit(Failed(GenerationFailed(f"generation failed: {d.error}")))
                return
            if d.token_ids:
                record.completion_tokens += len(d.token_ids)
                if record.last_token is None:
                    record.ttft_s = now - record.arrived
                    yield emit(FirstToken(record.ttft_s))
                else:
                    record.inter_token_s.append(now - record.last_token)
                record.last_token = now
            if d.logprobs:
                logprobs.extend(_logprob_events(loaded, d.logprobs))
                unsent += len(d.logprobs)
            parts.append(d.text)
            thought, said = splitter.feed(d.text) if splitter is not None and d.text else ("", d.text)
            text = sniffer.feed(said) if sniffer is not None and said else said
            if text or thought:
                yield emit(Delta(text, d.token_ids, reasoning=thought))
            if d.finish_reason is not None:
                assert d.usage is not None and d.timings is not None
                whole = "".join(parts)
                parse = d.finish_reason is not FinishReason.LENGTH  # a call cut off by max_tokens is no call
                calls: tuple[ToolCall, ...] = ()
                if splitter is not None:
                    thought, said = splitter.finish()
                    said = sniffer.feed(said) if sniffer is not None and said else said
                    if said or thought:
                        yield emit(Delta(said, reasoning=thought))
                if sniffer is not None:
                    rest, found = sniffer.finish(parse=parse)
                    if rest:
                        yield emit(Delta(rest))
                    calls = tuple(found if tools.parallel is not False else found[:1])
                if unsent:  # tokens whose text was held back or dropped (a stop string) still report
                    yield emit(Delta(""))
                answer = "".join(splitter.answer) if splitter is not None else whole
                reasoning = "".join(splitter.reasoning) if splitter is not None else ""
                content = answer
                if calls:
                    content, _ = parse_calls(answer, list(tools.callable))
                context = tuple(prompt + loaded.plain_tokens(whole)) if req.return_context else None
                record.prompt_tokens = d.usage.prompt_tokens if index == 0 else 0  # n > 1: the prompt counts once
                record.completion_tokens = d.usage.completion_tokens
                record.outcome = d.finish_reason.value
                yield emit(Finished(d.finish_reason, d.usage, d.timings, whole, content, calls, context,
                                    reasoning=reasoning, stop_sequence=d.stop))
                return
    except RequestTimedOut as exc:
        record.outcome = "timeout"
        yield emit(Failed(exc))
    finally:
        await deltas.aclose()
        if not isinstance(last, Finished | Failed):  # the caller stopped reading
            record.duration_s = time.perf_counter() - record.arrived
            record.prompt_tokens = record.prompt_tokens or (len(prompt) if index == 0 else 0)
            record.outcome = FinishReason.CANCELLED.value
            publish(record, Finished(FinishReason.CANCELLED, Usage(len(prompt), record.completion_tokens),
                                     _partial_timings(record), "".join(parts), "".join(parts)))
        elif record.prompt_tokens == 0 and index == 0:
            record.prompt_tokens = len(prompt)
        await finish()


def _logprob_events(loaded: LoadedModel, found: tuple[EngineLogprob, ...]) -> list[TokenLogprob]:
    def text(token: int) -> str:
        return loaded.model.token_text(token).decode("utf-8", "replace")

    return [TokenLogprob(text(lp.token), lp.logprob, tuple((text(t), p) for t, p in lp.top)) for lp in found]


def _partial_timings(record: GenerationRecord) -> Timings:
    return Timings(queued_s=0.0, ttft_s=record.ttft_s, total_s=record.duration_s or 0.0,
                   decode_tps=record.decode_tokens_per_second)


async def _deadline(deltas: AsyncIterator[EngineDelta], timeout_s: float) -> AsyncIterator[EngineDelta]:
    """The deltas, or RequestTimedOut once ``timeout_s`` (0: none) has passed since the first read."""
    if not timeout_s:
        async for d in deltas:
            yield d
        return
    deadline = time.perf_counter() + timeout_s
    while True:
        try:
            d = await asyncio.wait_for(anext(deltas), max(0.0, deadline - time.perf_counter()))
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise RequestTimedOut(f"request timed out after {timeout_s:g} s (LOKAL_REQUEST_TIMEOUT)") from None
        yield d
