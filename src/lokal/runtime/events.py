"""What a generation reports as it runs: typed events, in order ``Queued``, ``Started``,
``FirstToken``, ``Delta``... and one ``Finished`` or ``Failed`` last. Subscribers (metrics, the
rate limiter, the web UI's monitor) get each event with the request's ``GenerationRecord``."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncGenerator, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

from lokal.engine.sequence import FinishReason, Timings, Usage
from lokal.runtime.errors import GenerationFailed, LokalError
from lokal.runtime.tools import ToolCall

_ids = itertools.count(1)


@dataclass(frozen=True)
class Caller:
    """Who asks, as the subscribers need it: the surface (``openai.chat``, ``ollama.generate``,
    ``cli``), the rate-limit identity (``key:<name>`` or ``addr:<ip>``) and the request id."""

    surface: str = "python"
    identity: str = ""
    request_id: str = ""


@dataclass(frozen=True)
class Queued:
    """Accepted by the engine; ``position`` requests were waiting ahead of it."""

    position: int
    load_s: float  # time spent waiting for the model to load
    dropped_messages: int = 0  # oldest chat messages left out to fit the context (GenerateRequest.truncate)
    prompt_tokens: int = 0  # the prompt as the model reads it (cached tokens included)


@dataclass(frozen=True)
class Started:
    """It has a slot: its prompt is being read (``cached_tokens`` of it came from a cached prefix)."""

    cached_tokens: int


@dataclass(frozen=True)
class FirstToken:
    ttft_s: float  # from the runtime receiving the request


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability, and the ``top`` most likely tokens at its position
    (``(text, logprob)`` pairs, most likely first) when the request asked for them."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Delta:
    """New answer text (tool-call text is held back and reported in ``Finished``). ``reasoning``:
    new text of the model's thinking (inside its think tags), never part of ``text``.
    ``logprobs``: one entry per token of this delta, when the request asked for them (a token whose
    text is held back reports in a later delta, so every token's is in exactly one). ``index``: the
    choice it belongs to, when the request asked for n > 1."""

    text: str
    token_ids: tuple[int, ...] = ()
    reasoning: str = ""
    logprobs: tuple[TokenLogprob, ...] = ()
    index: int = 0


@dataclass(frozen=True)
class Finished:
    reason: FinishReason  # stop, length, or cancelled (the caller stopped reading)
    usage: Usage
    timings: Timings
    text: str  # everything generated, tool-call text included
    content: str  # the answer without its tool calls
    tool_calls: tuple[ToolCall, ...] = ()
    context: tuple[int, ...] | None = None  # prompt + answer tokens, when the request asked for them
    reasoning: str = ""  # the model's thinking, split from ``content`` (empty when it does not think)
    stop_sequence: str | None = None  # the request's stop string that ended it, if one did
    logprobs: tuple[TokenLogprob, ...] = ()  # every generated token's, when the request asked for them
    index: int = 0  # the choice, when the request asked for n > 1 (one Finished per choice)


@dataclass(frozen=True)
class Failed:
    error: LokalError


Event = Queued | Started | FirstToken | Delta | Finished | Failed


@dataclass
class GenerationRecord:
    """One generation as observed, filled in by the runtime as its events pass (times from
    ``time.perf_counter``; ``started_at`` is Unix time)."""

    model: str
    caller: Caller
    id: int = field(default_factory=lambda: next(_ids))
    started_at: float = field(default_factory=time.time)
    arrived: float = field(default_factory=time.perf_counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None
    inter_token_s: list[float] = field(default_factory=list)
    last_token: float | None = None
    duration_s: float | None = None  # arrival to the last event
    outcome: str = ""  # a FinishReason's value, "timeout" or "error"

    @property
    def decode_tokens_per_second(self) -> float | None:
        """Generated tokens per second after the first."""
        if self.ttft_s is None or self.duration_s is None or self.completion_tokens < 2:
            return None
        span = self.duration_s - self.ttft_s
        return (self.completion_tokens - 1) / span if span > 0 else None


Subscriber = Callable[[GenerationRecord, Event], object]


# True while ``finished`` reads a stream for its result alone (no event reaches a client): a
# runtime that can restart a generation elsewhere (lokal.scale's, when a replica dies) may then.
result_only: ContextVar[bool] = ContextVar("lokal_result_only", default=False)


async def finished(stream: AsyncGenerator[Event, None]) -> Finished:
    """Read a generation to its end: its ``Finished`` event, or its error raised. The stream is
    closed before this returns, so the model's hold is released (a keep_alive of 0 unloads it)."""
    reading = result_only.set(True)
    try:
        async for event in stream:
            if isinstance(event, Failed):
                raise event.error
            if isinstance(event, Finished):
                return event
    finally:
        result_only.reset(reading)
        await stream.aclose()
    raise GenerationFailed("generation ended without a result")


async def finished_choices(stream: AsyncGenerator[Event, None]) -> list[Finished]:
    """Read an n-choice generation to its end, as ``finished`` reads one: its ``Finished`` events
    in index order, or the first error raised."""
    reading = result_only.set(True)
    done: list[Finished] = []
    try:
        async for event in stream:
            if isinstance(event, Failed):
                raise event.error
            if isinstance(event, Finished):
                done.append(event)
    finally:
        result_only.reset(reading)
        await stream.aclose()
    return sorted(done, key=lambda f: f.index)
