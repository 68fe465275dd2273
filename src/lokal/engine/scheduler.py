"""The scheduler decides, each step, which sequences get slots and how many tokens each feeds.

It knows nothing of llama.cpp: it hands the engine decisions (slot, reused prefix, rows to feed)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence as Tokens
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lokal.engine.sequence import Adapters, Sequence, SequenceStatus
from lokal.engine.speculate import MAX_DRAFT

if TYPE_CHECKING:
    from lokal.engine.cells import CellLedger
    from lokal.engine.host_prefixes import HostPrefixes
    from lokal.engine.speculate import Drafter


class QueueFull(RuntimeError):
    """More requests are waiting than the server accepts; the client should retry later."""

    def __init__(self, waiting: int) -> None:
        super().__init__(f"server busy: {waiting} requests already waiting; retry later")
        self.waiting = waiting


@dataclass(frozen=True)
class Admission:
    """A waiting sequence gets a slot; its first ``n_reused`` prompt tokens come from ``source``'s
    KV cells (its own slot when source == slot), or from the host tier's entry ``stored``."""

    seq: Sequence
    slot: int
    source: int | None
    n_reused: int
    stored: int | None = None


def common_prefix(a: Tokens[int], b: Tokens[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Scheduler:
    """FCFS admission into a fixed number of slots, and a per-step token budget in which every
    decoding sequence advances by one token and prefilling ones read their prompt in chunks."""

    def __init__(
        self,
        n_slots: int,
        token_budget: int,
        max_queue: int,
        prefix_cache: bool,
        host: HostPrefixes | None = None,
        reuse_generated: bool = True,
        drafter: Drafter | None = None,
        pool: CellLedger | None = None,
    ) -> None:
        if token_budget <= n_slots:
            raise ValueError("the step token budget must exceed the number of slots")
        self.n_slots = n_slots
        self.token_budget = token_budget
        self.max_queue = max_queue
        self.prefix_cache = prefix_cache
        self.host = host if prefix_cache else None  # evicted prefixes in host memory
        # Whether a generated token's cells may serve as a later prompt's prefix: not when llama.cpp
        # computes prompt rows and generated rows with different kernels (their cells then differ).
        self.reuse_generated = reuse_generated
        self.drafter = drafter  # speculation: where drafts come from (None: no speculation)
        # A shared KV pool's cells (None: every slot reserves its whole context): admission waits
        # for free cells, and the engine preempts the newest sequence when the pool runs out.
        self.pool = pool
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.free_slots: list[int] = list(range(n_slots))
        # What each slot's KV cells hold once its sequence is gone (reusable prefix), and when
        # it was last used, so the least recently used cache is overwritten first.
        self.slot_cache: list[list[int]] = [[] for _ in range(n_slots)]
        self.slot_adapters: list[Adapters] = [()] * n_slots  # the LoRA adapters its cached cells were computed with
        self.slot_used_at: list[float] = [0.0] * n_slots
        self.turns = 0  # steps that had sequences of several adapter sets to choose from (schedule)

    def queued_beyond_slots(self, incoming: int = 0) -> int:
        """How many requests would wait with no slot for them if ``incoming`` more arrived."""
        return len(self.waiting) + incoming - len(self.free_slots)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove_waiting(self, seq: Sequence) -> bool:
        try:
            self.waiting.remove(seq)
        except ValueError:
            return False
        return True

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def admit(self) -> list[Admission]:
        """Give free slots to waiting sequences, first come first served. A sibling of an n > 1
        request waits until its leader has read the prompt, then copies the leader's cells."""
        admitted = []
        held: list[Sequence] = []
        while self.waiting and self.free_slots:
            seq = self.waiting.popleft()
            if seq.leader is not None and seq.leader.status in (SequenceStatus.WAITING, SequenceStatus.PREFILLING):
                held.append(seq)
                continue
            a = self._place(seq)
            if self.pool is not None and self.running and not self._fits(seq, a):
                self.waiting.appendleft(seq)  # first come, first served: the head waits for cells
                break
            self.free_slots.remove(a.slot)
            seq.slot = a.slot
            seq.n_past = a.n_reused  # provisional, so a later admission in this round can borrow it too
            seq.status = SequenceStatus.PREFILLING
            seq.admitted_at = time.perf_counter()
            self.running.append(seq)
            admitted.append(a)
        self.waiting.extendleft(reversed(held))
        return admitted

    def _fits(self, seq: Sequence, a: Admission) -> bool:
        """Whether the shared pool has cells for seq's unread tokens, beyond what the running
        sequences still need (their unread prompts and next tokens) and a 1 % reserve; cached
        prefixes of free slots count as free (the engine drops them when the cells are needed)."""
        assert self.pool is not None
        promised = sum(max(s.pending, 1) for s in self.running)
        need = len(seq.tokens) - a.n_reused + promised + max(1, self.pool.capacity // 100)
        if need <= self.pool.free:  # the usual case: no need to count the cached prefixes' cells
            return True
        return need <= self.pool.free + sum(self.pool.exclusive(s) for s in self.free_slots if s != a.source)

    def preempt(self, seq: Sequence) -> None:
        """Put a running sequence back at the head of the queue; the engine has dropped its cells."""
        self.running.remove(seq)
        if seq.slot is not None:
            self.slot_cache[seq.slot] = []
            self.free_slots.append(seq.slot)
        seq.slot = None
        seq.n_past = 0
        seq.drafts = []
        seq.status = SequenceStatus.WAITING
        seq.preemptions += 1
        self.waiting.appendleft(seq)

    def newest(self) -> Sequence | None:
        """The running sequence admitted last: the one a full pool preempts."""
        return max(self.running, key=lambda s: s.admitted_at or 0.0, default=None)

    def _place(self, seq: Sequence) -> Admission:
        """Pick a free slot and the longest reusable prefix for seq's tokens: a free slot's own
        cells, a running sequence's, or an entry of the host tier, computed with seq's LoRA adapters."""
        # At least one token must be decoded to get logits; a preempted sequence's generated tokens
        # are read again as generated ones where other cells would differ (reuse_generated).
        limit = len(seq.tokens) - 1 if self.reuse_generated else min(len(seq.tokens) - 1, seq.n_prompt)
        target = seq.tokens

        def prefer(slot: int) -> tuple[int, float]:
            return self._slot_preference(slot, seq.adapters)
        if seq.swapped is not None:  # its own cells come back from host memory
            return Admission(seq, min(self.free_slots, key=prefer), None, 0)
        leader = seq.leader
        if leader is not None and leader.slot is not None and leader.status is SequenceStatus.DECODING:
            # A sibling shares its leader's prompt cells, with the prefix cache on or off.
            n = min(common_prefix(leader.tokens[: leader.n_past], target), limit)
            if n > 0:
                return Admission(seq, min(self.free_slots, key=prefer), leader.slot, n)
        if not self.prefix_cache or limit <= 0:
            return Admission(seq, min(self.free_slots, key=prefer), None, 0)
        best_free, best_free_n = -1, -1
        for s in self.free_slots:
            n = min(common_prefix(self.slot_cache[s], target), limit) if self.slot_adapters[s] == seq.adapters else 0
            if n > best_free_n or (n == best_free_n and prefer(s) < prefer(best_free)):
                best_free, best_free_n = s, n
        best_src, best_src_n = None, best_free_n
        for other in self.running:
            assert other.slot is not None
            if other.adapters != seq.adapters:
                continue
            n = min(common_prefix(other.tokens[: self.reusable(other)], target), limit)
            if n > best_src_n:
                best_src, best_src_n = other.slot, n
        stored, stored_n = self.host.longest(target, limit, seq.adapters) if self.host is not None else (None, 0)
        if stored is not None and stored_n > best_src_n:
            return Admission(seq, min(self.free_slots, key=prefer), None, stored_n, stored)
        if best_src is None:
            return Admission(seq, best_free, best_free if best_free_n > 0 else None, max(best_free_n, 0))
        # Borrow another slot's prefix into the free slot that keeps the busy slots contiguous.
        return Admission(seq, min(self.free_slots, key=prefer), best_src, best_src_n)

    def _slot_preference(self, slot: int, adapters: Adapters = ()) -> tuple[int, float]:
        """Lower is better: first how many runs of consecutive busy slots there would be with this
        one taken, then how recently its cached prefix was used (least recently used first).

        With one KV stream per slot, llama.cpp decodes only consecutive slots together: each run of
        consecutive busy slots costs its own pass over the weights in every step. A free slot that
        extends or joins a run is worth more than an old cached prefix that nobody asked for.
        Only sequences with the same LoRA adapters (``adapters``) share a decode, so only theirs count.
        A shared pool is one stream: only the age counts."""
        if self.pool is not None:
            return 0, self.slot_used_at[slot]
        busy = {s.slot for s in self.running if s.slot is not None and s.adapters == adapters}
        busy.add(slot)
        runs = sum(1 for s in busy if s - 1 not in busy)
        return runs, self.slot_used_at[slot]

    def schedule(self) -> list[tuple[Sequence, int]]:
        """Rows for the next decode: (sequence, number of its pending tokens to feed).

        Every decoding sequence advances by one token (plus its speculative drafts); prompts fill the
        rest of the budget in arrival order, a long one in several chunks across steps, so no stream stalls.
        The rows are returned in slot order: llama.cpp puts only ascending, consecutive slots (KV streams) in one
        micro-batch, so any other order splits a step into several passes over the weights.
        All rows share one set of LoRA adapters (``_in_turn``)."""
        plan: list[tuple[Sequence, int]] = []
        budget = self.token_budget
        running = self._in_turn()
        decoding = [s for s in running if s.status is SequenceStatus.DECODING and s.pending > 0]
        budget -= len(decoding)
        # Speculation: drafts ride along, within the budget, their slot's context (the last draft's
        # position < max_context) and what max_tokens leaves. The drafter is asked once for all
        # sequences (a draft model drafts them together), each within a share of the budget set
        # aside for it; what a sequence does not use goes back to the prompts.
        wants: list[tuple[Sequence, int]] = []
        for seq in decoding:
            seq.drafts = []
            if seq.lookup is not None and self.drafter is not None and budget > 0:
                limit = min(budget, MAX_DRAFT, seq.max_context - 1 - seq.n_past)
                if seq.params.max_tokens is not None:
                    limit = min(limit, seq.params.max_tokens - seq.n_generated - 1)
                wants.append((seq, limit))
                budget -= max(limit, 0)
        if wants:
            assert self.drafter is not None
            for (seq, limit), drafts in zip(wants, self.drafter.propose(wants), strict=True):
                seq.drafts = drafts
                budget += max(limit, 0) - len(drafts)
        plan.extend((seq, 1 + len(seq.drafts)) for seq in decoding)
        for seq in running:
            if budget <= 0:
                break
            if seq.status is SequenceStatus.PREFILLING:
                n = min(seq.pending, budget)
                if not self.reuse_generated and seq.n_past < seq.n_prompt:
                    n = min(n, seq.n_prompt - seq.n_past)  # a resumed sequence: prompt rows first, alone
                if seq.images:  # text rows and an image's embedding rows go to llama.cpp in separate calls
                    n = min(n, seq.segment_end(seq.n_past)[0] - seq.n_past)
                plan.append((seq, n))
                budget -= n
        plan.sort(key=lambda row: row[0].slot or 0)
        return plan

    def _in_turn(self) -> list[Sequence]:
        """The running sequences this step decodes: llama.cpp applies LoRA adapters to a whole context,
        so one llama_decode holds sequences of one adapter set. With several sets running, each step
        takes the next set in turn (round robin, in the order of each set's oldest sequence), so
        every stream advances once per round; with one set (the usual case) it is everyone."""
        sets: list[Adapters] = []
        for seq in self.running:
            if seq.adapters not in sets:
                sets.append(seq.adapters)
        if len(sets) <= 1:
            return self.running
        self.turns += 1
        turn = sets[self.turns % len(sets)]
        return [seq for seq in self.running if seq.adapters == turn]

    def release(self, seq: Sequence, keep_cache: bool = True) -> None:
        """A sequence is done: its slot is free again, and its KV cells stay as a cached prefix
        (unless ``keep_cache`` is false: the engine drops them)."""
        if seq in self.running:
            self.running.remove(seq)
        if seq.slot is not None:
            self.slot_cache[seq.slot] = seq.tokens[: self.reusable(seq)] if self.prefix_cache and keep_cache else []
            self.slot_adapters[seq.slot] = seq.adapters
            self.slot_used_at[seq.slot] = time.perf_counter()
            self.free_slots.append(seq.slot)

    def reusable(self, seq: Sequence) -> int:
        """How many of seq's cached cells a later prompt may reuse."""
        return seq.n_past if self.reuse_generated else min(seq.n_past, seq.n_prompt)
