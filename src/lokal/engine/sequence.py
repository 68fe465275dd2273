"""A Sequence is one request's life in the engine, with its state spelled out."""

from __future__ import annotations

import enum
import itertools
import time
from collections.abc import Callable, Sized
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from lokal.engine.detokenize import Detokenizer
from lokal.engine.sampling import SamplingParams
from lokal.engine.speculate import Acceptance

if TYPE_CHECKING:
    from lokal.engine.llama_model import LoraAdapter

# The LoRA adapters a sequence is decoded with, and their scales (() for the base model alone).
# llama.cpp applies adapters to a whole context, so one llama_decode holds sequences of one set.
Adapters = tuple[tuple["LoraAdapter", float], ...]


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # queued, no slot yet
    PREFILLING = "prefilling"  # has a slot; prompt tokens still being read into the KV cache
    DECODING = "decoding"  # generating one token per step
    FINISHED = "finished"


class FinishReason(enum.StrEnum):
    STOP = "stop"  # end-of-generation token or a stop string
    LENGTH = "length"  # max_tokens or the slot's context is full
    CANCELLED = "cancelled"  # the client went away or aborted
    ERROR = "error"


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Timings:
    queued_s: float  # arrival to slot
    ttft_s: float | None  # arrival to first token
    total_s: float  # arrival to finish
    decode_tps: float | None  # generated tokens per second after the first


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability under the model's raw distribution (the log-softmax
    of its logits row, before bias, penalties, temperature or truncation: vLLM's default), and the
    ``top`` most likely (token id, logprob) pairs at that position, most likely first."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Delta:
    """What a step produced for one sequence: new text, and on the last one why and how much.
    ``logprobs``: one entry per token since the previous delta (a token whose text is held back,
    an incomplete UTF-8 character or a possible stop string, reports with the next delta)."""

    text: str = ""
    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    timings: Timings | None = None
    error: str | None = None
    stop: str | None = None  # the stop string that ended the sequence, if one did
    started: bool = False  # the sequence has just taken a slot (no text, no token)
    logprobs: tuple[TokenLogprob, ...] = ()


DeltaSink = Callable[[Delta], None]


@dataclass(frozen=True, eq=False)
class ImageSpan:
    """An image in a prompt: its ``embd`` rows (n_tokens × the model's n_embd, float32, from the
    vision projector) take the prompt's positions ``start`` .. ``end`` - 1, where the prompt holds
    placeholder ids (``image_placeholders``) derived from the image's content hash: the prefix
    cache compares them like tokens, so the same image after the same prefix is reused and
    another image never is."""

    start: int
    embd: np.ndarray
    digest: bytes

    @property
    def end(self) -> int:
        return self.start + len(self.embd)


def image_placeholders(digest: bytes, n_tokens: int) -> list[int]:
    """The ids that stand for an image's positions in a prompt: negative (never a token), one per
    position, each made of 46 bits of the content hash and the position within the image."""
    base = (int.from_bytes(digest[:6], "big") >> 2) << 16
    return [-(1 + base + j) for j in range(n_tokens)]

_ids = itertools.count(1)


@dataclass(eq=False)
class Sequence:
    """One request: its prompt, its sampler settings, where it is, and what it has produced."""

    prompt: list[int]
    params: SamplingParams
    max_context: int
    id: int = field(default_factory=lambda: next(_ids))
    status: SequenceStatus = SequenceStatus.WAITING
    slot: int | None = None
    tokens: list[int] = field(default_factory=list)  # prompt + generated, in order
    n_past: int = 0  # tokens already in the KV cache
    n_cached: int = 0  # prompt tokens reused from a cached prefix
    n_generated: int = 0
    finish_reason: FinishReason | None = None
    sampler: object | None = None  # a SamplerChain while the sequence holds a slot
    arrived_at: float = field(default_factory=time.perf_counter)
    admitted_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    leader: Sequence | None = None  # n > 1: the sibling that reads the shared prompt; this one copies its cells
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)  # not yet reported in a Delta
    lookup: Acceptance | None = None  # its drafting state (speculate.Drafter.new_state), when it speculates
    drafts: list[int] = field(default_factory=list)  # this step's draft tokens, fed after the last one
    preemptions: int = 0  # times the shared KV pool ran out and it went back to the queue
    swapped: Sized | None = None  # while preempted: its KV cells as saved state in host memory (else recomputed)
    images: tuple[ImageSpan, ...] = ()  # the prompt's images, in order; their positions hold placeholder ids
    adapters: Adapters = ()  # its LoRA adapters: the scheduler decodes it only with sequences of the same set

    def __post_init__(self) -> None:
        self.tokens = list(self.prompt)
        self.detokenizer = Detokenizer(self.params.stop)

    @property
    def n_prompt(self) -> int:
        return len(self.prompt)

    @property
    def resumed(self) -> bool:
        """Readmitted after a preemption: its sampler and output so far are kept; its prompt and
        generated tokens are read again (prompt tokens as a prompt, generated ones as generated)."""
        return self.preemptions > 0

    @property
    def pending(self) -> int:
        """Tokens known but not yet in the KV cache (prompt left to read, or the last sample)."""
        return len(self.tokens) - self.n_past

    def segment_end(self, pos: int) -> tuple[int, ImageSpan | None]:
        """Where the run of prompt positions from ``pos`` ends: the end of the image ``pos`` is in
        (and that image), else the start of the next image (or the end of the tokens) and None.
        A prompt chunk never crosses one: image rows are decoded as embeddings, in their own call."""
        for span in self.images:
            if span.start <= pos < span.end:
                return span.end, span
            if pos < span.start:
                return span.start, None
        return len(self.tokens), None

    def take_logprobs(self) -> tuple[TokenLogprob, ...]:
        """The logprobs not yet reported, for the delta about to go out."""
        if not self.pending_logprobs:
            return ()
        taken = tuple(self.pending_logprobs)
        self.pending_logprobs.clear()
        return taken

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def usage(self) -> Usage:
        return Usage(self.n_prompt, self.n_generated, self.n_cached)

    def timings(self) -> Timings:
        end = self.finished_at or time.perf_counter()
        ttft = self.first_token_at - self.arrived_at if self.first_token_at else None
        tps = None
        if self.first_token_at and self.n_generated > 1 and end > self.first_token_at:
            tps = (self.n_generated - 1) / (end - self.first_token_at)
        queued = (self.admitted_at or end) - self.arrived_at
        return Timings(queued_s=queued, ttft_s=ttft, total_s=end - self.arrived_at, decode_tps=tps)
