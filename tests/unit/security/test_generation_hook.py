"""The generation hook: token times and counts into the request's facts, and the per-request timeout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from lokal.engine.sequence import Delta, FinishReason, Usage
from lokal.server.errors import APIError
from lokal.server.generation import collect, observed
from lokal.server.security.tracking import RequestFacts, RequestLimits


def facts(timeout_s: float = 0.0) -> RequestFacts:
    return RequestFacts(method="POST", path="/v1/chat/completions", client="127.0.0.1:1", started_at=0.0,
                        limits=RequestLimits(timeout_s=timeout_s))


async def tokens(n: int, gap_s: float, closed: list[bool]) -> AsyncIterator[Delta]:
    try:
        for i in range(n):
            await asyncio.sleep(gap_s)
            yield Delta(text=f"t{i}", token_ids=(i,))
        yield Delta(finish_reason=FinishReason.LENGTH, usage=Usage(prompt_tokens=5, completion_tokens=n))
    finally:
        closed.append(True)


async def test_token_times_and_usage_reach_the_facts() -> None:
    f, closed = facts(), []
    done = await collect(observed(tokens(4, 0.01, closed), f, "m:latest", 5))
    assert done.text == "t0t1t2t3"
    assert (f.model, f.prompt_tokens, f.completion_tokens) == ("m:latest", 5, 4)
    assert f.ttft_s is not None and f.ttft_s >= 0.01
    assert len(f.inter_token_s) == 3 and all(gap > 0.005 for gap in f.inter_token_s)
    assert f.generation_s is not None and f.generation_s >= f.ttft_s


async def test_a_generation_past_the_timeout_is_a_504_and_its_stream_is_closed() -> None:
    f, closed = facts(timeout_s=0.2), []
    with pytest.raises(APIError) as exc:
        await collect(observed(tokens(100, 0.05, closed), f, "m:latest", 5))
    assert exc.value.status == 504 and "timed out" in exc.value.message
    assert closed == [True]  # the engine's stream is closed, which aborts the sequence
    assert 0 < f.completion_tokens < 100


async def test_a_streamed_generation_past_the_timeout_ends_with_an_error_delta() -> None:
    f, closed = facts(timeout_s=0.2), []
    deltas = [d async for d in observed(tokens(100, 0.05, closed), f, "m:latest", 5)]
    assert deltas[-1].finish_reason is FinishReason.ERROR and "timed out" in (deltas[-1].error or "")
    assert closed == [True]
