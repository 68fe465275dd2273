"""The runtime's event stream over an engine's deltas: token times and counts in the record,
the request timeout, and a caller that stops reading (no engine needed: the deltas are made here)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from lokal.engine.sequence import Delta as EngineDelta
from lokal.engine.sequence import FinishReason, Timings, Usage
from lokal.runtime.errors import RequestTimedOut
from lokal.runtime.events import Caller, Delta, Event, Failed, Finished, FirstToken, GenerationRecord, Started
from lokal.runtime.pipeline import events
from lokal.runtime.request import GenerateRequest

REQUEST = GenerateRequest(model="m:latest", prompt=[1, 2, 3, 4, 5])


async def tokens(n: int, gap_s: float, closed: list[bool]) -> AsyncGenerator[EngineDelta, None]:
    try:
        yield EngineDelta(started=True, usage=Usage(5, 0, 2))
        for i in range(n):
            await asyncio.sleep(gap_s)
            yield EngineDelta(text=f"t{i}", token_ids=(i,))
        yield EngineDelta(finish_reason=FinishReason.LENGTH, usage=Usage(prompt_tokens=5, completion_tokens=n),
                          timings=Timings(0.0, gap_s, gap_s * n, None))
    finally:
        closed.append(True)


def stream(n: int, gap_s: float, timeout_s: float = 0.0) -> tuple[AsyncGenerator[Event, None], GenerationRecord,
                                                                     list[tuple[int, Event]], list[bool], list[int]]:
    record = GenerationRecord(model="m:latest", caller=Caller("test"))
    published: list[tuple[int, Event]] = []
    closed: list[bool] = []
    finished: list[int] = []

    async def finish() -> None:
        finished.append(1)

    loaded: Any = None  # only needed for return_context
    gen = events(loaded, REQUEST, list(REQUEST.prompt or []), tokens(n, gap_s, closed), record, timeout_s,
                 lambda r, e: published.append((r.id, e)), finish)
    return gen, record, published, closed, finished


async def test_events_come_in_order_and_token_times_and_usage_reach_the_record() -> None:
    gen, record, published, closed, finished = stream(4, 0.01)
    seen = [e async for e in gen]
    assert [type(e) for e in seen] == [Started, FirstToken, Delta, Delta, Delta, Delta, Finished]
    assert seen == [e for _, e in published]  # every event reaches the subscribers too
    assert isinstance(seen[0], Started) and seen[0].cached_tokens == 2
    done = seen[-1]
    assert isinstance(done, Finished) and done.text == "t0t1t2t3" and done.reason is FinishReason.LENGTH
    assert (record.prompt_tokens, record.completion_tokens, record.outcome) == (5, 4, "length")
    assert record.ttft_s is not None and record.ttft_s >= 0.01
    assert len(record.inter_token_s) == 3 and all(gap > 0.005 for gap in record.inter_token_s)
    assert record.duration_s is not None and record.duration_s >= record.ttft_s
    assert closed == [True] and finished == [1]


async def test_a_generation_past_the_timeout_fails_and_its_engine_stream_is_closed() -> None:
    gen, record, published, closed, finished = stream(100, 0.05, timeout_s=0.2)
    seen = [e async for e in gen]
    assert isinstance(seen[-1], Failed) and isinstance(seen[-1].error, RequestTimedOut)
    assert "timed out" in seen[-1].error.message
    assert closed == [True] and finished == [1]  # closing the engine's stream aborts the sequence
    assert record.outcome == "timeout" and 0 < record.completion_tokens < 100


async def test_a_caller_that_stops_reading_cancels_and_subscribers_see_it_end() -> None:
    gen, record, published, closed, finished = stream(100, 0.01)
    async for event in gen:
        if isinstance(event, Delta):
            break
    await gen.aclose()
    assert closed == [True] and finished == [1]
    last = published[-1][1]
    assert isinstance(last, Finished) and last.reason is FinishReason.CANCELLED
    assert record.outcome == "cancelled" and record.completion_tokens == 1


@pytest.mark.parametrize("timeout_s", [0.0, 5.0])
async def test_an_engine_error_is_a_failed_event(timeout_s: float) -> None:
    async def broken() -> AsyncGenerator[EngineDelta, None]:
        yield EngineDelta(finish_reason=FinishReason.ERROR, error="decode failed")

    async def finish() -> None:
        pass

    record = GenerationRecord(model="m", caller=Caller())
    seen = [e async for e in events(None, REQUEST, [1], broken(), record, timeout_s, lambda r, e: None,  # type: ignore[arg-type]
                                    finish)]
    assert len(seen) == 1 and isinstance(seen[0], Failed) and "decode failed" in seen[0].error.message
    assert record.outcome == "error"
