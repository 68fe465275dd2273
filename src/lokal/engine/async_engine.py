"""Runs an Engine on its own thread and streams each request's deltas to asyncio callers."""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import AsyncIterator

from lokal.engine.engine import Engine, EngineStats
from lokal.engine.sampling import SamplingParams
from lokal.engine.sequence import Delta, FinishReason, Sequence

_Inbox = tuple[asyncio.AbstractEventLoop, "asyncio.Queue[Delta]"]


class EngineStopped(RuntimeError):
    """The engine was shut down while a request was waiting for it."""


class AsyncEngine:
    """The engine thread: steps while there is work, sleeps when there is none.

    ctypes releases the GIL inside llama_decode, so the event loop keeps serving HTTP while
    the thread computes. Each step's deltas reach asyncio in one call_soon_threadsafe per loop."""

    def __init__(self, engine: Engine, name: str = "engine") -> None:
        self.engine = engine
        self._wake = threading.Event()
        self._stopping = False
        self._inboxes: dict[int, _Inbox] = {}
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, prompt: list[int], params: SamplingParams) -> AsyncIterator[Delta]:
        """Queue one request and return its stream of deltas; the last carries finish_reason.

        Raises PromptTooLong, QueueFull or ValueError at once, before any delta. Closing the
        stream early (a client that disconnects) aborts the sequence, which frees its slot and
        KV cells at the next step. Call from the event loop that will consume the stream."""
        if self._stopping:
            raise EngineStopped("the engine is shutting down")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Delta] = asyncio.Queue()
        seq = self.engine.new_sequence(prompt, params)
        self._inboxes[seq.id] = (loop, queue)  # before enqueue: its first delta may come at once
        try:
            self.engine.enqueue(seq)
        except BaseException:
            self._inboxes.pop(seq.id, None)
            raise
        self._wake.set()
        return self._stream(seq, queue)

    async def _stream(self, seq: Sequence, queue: asyncio.Queue[Delta]) -> AsyncIterator[Delta]:
        finished = False
        try:
            while True:
                delta = await queue.get()
                finished = delta.finish_reason is not None
                yield delta
                if finished:
                    return
        finally:
            self._inboxes.pop(seq.id, None)
            if not finished:
                self.engine.abort(seq.id)
                self._wake.set()

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def _run(self) -> None:
        engine = self.engine
        while not self._stopping:
            if not engine.has_work():
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            self._deliver(engine.step())
        self._fail_all()

    def _deliver(self, outputs: list[tuple[Sequence, Delta]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[Delta], Delta]]]
        by_loop = defaultdict(list)
        for seq, delta in outputs:
            inbox = self._inboxes.get(seq.id)
            if inbox is not None:
                by_loop[inbox[0]].append((inbox[1], delta))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # that event loop is closed: its clients are gone
                pass

    def _fail_all(self) -> None:
        stopped = Delta(finish_reason=FinishReason.ERROR, error="the engine stopped")
        for loop, queue in list(self._inboxes.values()):
            try:
                loop.call_soon_threadsafe(queue.put_nowait, stopped)
            except RuntimeError:
                pass

    def close(self) -> None:
        """Stop the thread and free llama.cpp's memory."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=30)
        self.engine.model.close()


def _put_all(items: list[tuple[asyncio.Queue[Delta], Delta]]) -> None:
    for queue, delta in items:
        queue.put_nowait(delta)
