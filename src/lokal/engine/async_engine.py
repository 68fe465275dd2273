"""Runs an Engine on its own thread and streams each request's deltas to asyncio callers."""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections import defaultdict
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from lokal.engine.engine import Engine, EngineStats
from lokal.engine.llama_model import LoraAdapter
from lokal.engine.sampling import SamplingParams
from lokal.engine.sequence import Adapters, Delta, FinishReason, ImageSpan, Sequence

log = logging.getLogger(__name__)

_Inbox = tuple[asyncio.AbstractEventLoop, "asyncio.Queue[Delta]"]
JOIN_TIMEOUT_S = 30.0  # how long close() waits for the thread before leaving the freeing to it


class EngineStopped(RuntimeError):
    """The engine was shut down while a request was waiting for it."""


@dataclass(frozen=True)
class Submission:
    """A queued request: its stream of deltas (the last carries finish_reason) and how many
    requests were waiting ahead of it."""

    deltas: AsyncGenerator[Delta, None]
    position: int


class AsyncEngine:
    """The engine thread: steps while there is work, sleeps when there is none.

    ctypes releases the GIL inside llama_decode, so the event loop keeps serving HTTP while
    the thread computes. Each step's deltas reach asyncio in one call_soon_threadsafe per loop.

    llama.cpp's state is freed exactly once, and never while the thread may still use it: by
    ``close`` once the thread has stopped, or by the thread itself as it leaves when ``close``
    gave up waiting (a step that outlasts the join, such as a long prefill on a slow machine)."""

    def __init__(self, engine: Engine, name: str = "engine") -> None:
        self.engine = engine
        self._wake = threading.Event()
        self._stopping = False
        self._free_lock = threading.Lock()
        self._free_on_exit = False  # close() timed out: the thread frees the model as it leaves
        self._exited = False
        self._freed = False
        self._inboxes: dict[int, _Inbox] = {}
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, prompt: list[int], params: SamplingParams) -> Submission:
        """Queue one request.

        Raises PromptTooLong, QueueFull or ValueError at once, before any delta. Closing the
        stream early (a client that disconnects), or dropping it unread, aborts the sequence,
        which frees its slot and KV cells at the next step. Call from the event loop that will
        consume the stream."""
        return self.submit_group(prompt, params, 1)[0]

    def submit_group(self, prompt: list[int], params: SamplingParams, n: int,
                     images: tuple[ImageSpan, ...] = (), adapters: Adapters = ()) -> list[Submission]:
        """Queue n sequences for one prompt (``Engine.new_group``: the prompt is read once), each
        with its own stream, as ``submit`` does for one. ``images``: the prompt's image spans;
        ``adapters``: the LoRA adapters it is decoded with."""
        if self._stopping:
            raise EngineStopped("the engine is shutting down")
        loop = asyncio.get_running_loop()
        group = self.engine.new_group(prompt, params, n, images, adapters)
        queues: list[asyncio.Queue[Delta]] = [asyncio.Queue() for _ in group]
        for seq, queue in zip(group, queues, strict=True):
            self._inboxes[seq.id] = (loop, queue)  # before enqueue: its first delta may come at once
        try:
            position = self.engine.enqueue(group)
        except BaseException:
            for seq in group:
                self._inboxes.pop(seq.id, None)
            raise
        self._wake.set()
        submissions = []
        for seq, queue in zip(group, queues, strict=True):
            stream = self._stream(seq, queue)
            # A stream never iterated has no frame to run its finally: abort it when it is collected.
            weakref.finalize(stream, self._abandon, seq.id)
            submissions.append(Submission(stream, position))
        return submissions

    async def _stream(self, seq: Sequence, queue: asyncio.Queue[Delta]) -> AsyncGenerator[Delta, None]:
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

    def _abandon(self, seq_id: int) -> None:
        if self._inboxes.pop(seq_id, None) is not None:
            self.engine.abort(seq_id)
            self._wake.set()

    def unload_adapter(self, adapter: LoraAdapter) -> None:
        """Free a LoRA adapter on the engine thread (``Engine.unload_adapter``); once the thread has
        stopped, closing the engine frees it with the model."""
        self.engine.unload_adapter(adapter)
        self._wake.set()

    def stats(self) -> EngineStats:
        return self.engine.stats()

    @property
    def running(self) -> bool:
        """Whether the engine thread is still alive."""
        return self._thread.is_alive()

    def _run(self) -> None:
        engine = self.engine
        try:
            while not self._stopping:
                if not engine.has_work():
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
                self._deliver(engine.step())
            self._fail_all()
        finally:
            with self._free_lock:
                self._exited = True
                if self._free_on_exit:
                    self._free()

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

    def _free(self) -> None:
        if not self._freed:
            self._freed = True
            self.engine.close()

    def close(self, join_timeout_s: float = JOIN_TIMEOUT_S) -> bool:
        """Stop the thread and free llama.cpp's memory. True if freed now; False if the thread is
        still in a step after ``join_timeout_s`` and will free it when that step ends."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=join_timeout_s)
        with self._free_lock:
            if not self._exited:
                log.warning("engine thread %s still busy after %g s: it frees the model when its step ends",
                            self._thread.name, join_timeout_s)
                self._free_on_exit = True
                return False
            self._free()
            return True


def _put_all(items: list[tuple[asyncio.Queue[Delta], Delta]]) -> None:
    for queue, delta in items:
        queue.put_nowait(delta)
