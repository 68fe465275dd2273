"""Fewer, larger Ray stream items: a replica's events coalesced into lists within a short window.

Each Ray stream item costs CPU on both sides (serialising, the object store, hops between Serve's
event loops), the same for one token as for ten, and on a busy machine that CPU comes out of the
engine's share. So a replica sends events in lists (as Ray Serve LLM's ``Batcher`` does), with
two bounds that keep a client's view of the stream as it was:

- an event goes **at once** when the previous item went at least a window ago (the first of a
  stream, a token after a pause), and an urgent event (the caller says which: the first token,
  the last event) goes at once with whatever waits before it;
- otherwise it waits **at most one window**, with those that arrive meanwhile (or fewer, when
  ``most`` have gathered). Order is kept; nothing is merged or dropped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TypeVar

T = TypeVar("T")

MOST_PER_ITEM = 64  # events in one item at most (a burst of speculated tokens goes in a few)


async def coalesced(events: AsyncIterator[T], window_s: float, urgent: Callable[[T], bool],
                    most: int = MOST_PER_ITEM) -> AsyncGenerator[list[T], None]:
    """``events`` as lists, each sent within ``window_s`` of its first event's arrival. An error
    that ends ``events`` is raised after every event before it was yielded. Closing this
    generator stops reading ``events`` and closes it (a generation is cancelled)."""
    loop = asyncio.get_running_loop()
    waiting: list[T] = []
    ready = asyncio.Event()  # set when ``waiting`` is to go now, or ``events`` has ended
    timer: asyncio.TimerHandle | None = None
    last_sent = float("-inf")

    async def read() -> None:
        # A task of its own: the window's timer must not cancel a pending read of ``events``
        # (that would cancel the generation), and one task per stream is cheaper than one per event.
        nonlocal timer
        async for event in events:
            waiting.append(event)
            at_once = urgent(event)  # asked of every event: ``urgent`` may keep state (first of its kind)
            if ready.is_set():
                continue
            if at_once or len(waiting) >= most or last_sent + window_s <= loop.time():
                ready.set()
            elif timer is None:
                timer = loop.call_at(last_sent + window_s, ready.set)

    reader = asyncio.create_task(read())
    reader.add_done_callback(lambda _: ready.set())
    try:
        while True:
            await ready.wait()
            ready.clear()
            if timer is not None:
                timer.cancel()
                timer = None
            if waiting:
                batch = waiting[:most]
                del waiting[:most]
                if waiting:  # more than ``most`` came at once: the rest go next
                    ready.set()
                last_sent = loop.time()
                yield batch
            if reader.done() and not waiting:
                reader.result()  # the error that ended ``events``, if one did
                return
    finally:
        if timer is not None:
            timer.cancel()
        if not reader.done():
            reader.cancel()
            await asyncio.wait({reader})  # done reading before ``events`` is closed under it
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
