"""A replica's events coalesced into fewer Ray stream items: same events, same order, never held
longer than the window; the first event, urgent ones and errors go at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

import pytest

from lokal.scale.coalesce import coalesced


def never(_: object) -> bool:
    return False


async def timed(*steps: tuple[float, object]) -> AsyncGenerator[object, None]:
    """Each value after its delay (seconds); an exception instance is raised instead."""
    for delay, value in steps:
        if delay:
            await asyncio.sleep(delay)
        if isinstance(value, BaseException):
            raise value
        yield value


async def received(items: AsyncGenerator[list[object], None]) -> list[tuple[float, list[object]]]:
    """Each item with the seconds since the start when it came."""
    start = time.perf_counter()
    return [(time.perf_counter() - start, item) async for item in items]


async def test_events_come_out_once_each_in_order_in_fewer_items() -> None:
    events = list(range(40))
    items = [item async for item in coalesced(timed(*((0.005, e) for e in events)), 0.05, never)]
    assert [e for item in items for e in item] == events
    assert all(items) and len(items) < len(events) / 2


async def test_the_first_event_goes_at_once() -> None:
    got = await received(coalesced(timed((0, "first"), (2.0, "later")), 1.0, never))
    assert [item for _, item in got] == [["first"], ["later"]]
    assert got[0][0] < 0.5  # not held for the 1 s window, nor until the next event 2 s on


async def test_an_event_waits_at_most_one_window() -> None:
    got = await received(coalesced(timed((0, 0), (0.01, 1), (0.01, 2), (3.0, 3)), 0.3, never))
    assert [item for _, item in got] == [[0], [1, 2], [3]]
    assert 0.2 < got[1][0] < 1.5  # 1 and 2 went together when the window ended, not with 3


async def test_an_urgent_event_goes_at_once_with_those_waiting_before_it() -> None:
    got = await received(coalesced(timed((0, 0), (0.01, 1), (0.01, "last"), (3.0, 4)), 2.0, lambda e: e == "last"))
    assert [item for _, item in got] == [[0], [1, "last"], [4]]
    assert got[1][0] < 1.0  # the 2 s window did not hold it


async def test_an_error_ends_the_stream_after_every_event_before_it() -> None:
    seen: list[object] = []
    with pytest.raises(ValueError, match="engine broke"):
        async for item in coalesced(timed((0, 0), (0.01, 1), (0.01, 2), (0.01, ValueError("engine broke"))), 0.5,
                                    never):
            seen.extend(item)
    assert seen == [0, 1, 2]


async def test_no_item_holds_more_than_most() -> None:
    burst = list(range(10))
    items = [item async for item in coalesced(timed(*((0, e) for e in burst)), 1.0, never, most=3)]
    assert [e for item in items for e in item] == burst
    assert max(map(len, items)) == 3


async def test_closing_it_closes_the_events_while_a_read_is_pending() -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncGenerator[int, None]:
        try:
            yield 0
            await asyncio.sleep(3600)  # the next token never comes: the read is pending when it is closed
            yield 1
        finally:
            closed.set()

    items = coalesced(endless(), 0.05, never)
    assert await anext(items) == [0]
    pending = asyncio.ensure_future(anext(items))
    await asyncio.sleep(0.05)
    pending.cancel()  # the ingress went away: Ray cancels the replica's generator
    with pytest.raises(asyncio.CancelledError):
        await pending
    await items.aclose()
    assert closed.is_set()
