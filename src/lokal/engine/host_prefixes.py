"""The prefix cache's second tier: KV cells of evicted slots, kept as bytes in host memory.

A slot's cells stay in the slot as a reusable prefix until another request needs the slot. Before
they are overwritten, the engine copies them out here (llama.cpp's per-sequence state), so a
conversation that comes back after more than `slots` others still skips its earlier turns. The
tier is bounded in bytes and evicts the least recently used entry first. It knows nothing of
llama.cpp: it holds token lists and opaque state blobs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sized
from dataclasses import dataclass

from lokal.engine.scheduler import common_prefix
from lokal.engine.sequence import Adapters


@dataclass(frozen=True)
class HostEntry:
    key: int
    tokens: tuple[int, ...]
    state: Sized  # llama.cpp's state buffer; len() is its size in bytes
    adapters: Adapters = ()  # the LoRA adapters its cells were computed with: only those may reuse them


class HostPrefixes:
    """Saved sequences by id, least recently used first, within ``capacity_bytes``."""

    def __init__(self, capacity_bytes: int, min_tokens: int = 16) -> None:
        self.capacity_bytes = capacity_bytes
        self.min_tokens = min_tokens  # shorter prefixes are cheaper to read again than to keep
        self._entries: OrderedDict[int, HostEntry] = OrderedDict()
        self._next_key = 0
        self.used_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return self.capacity_bytes > 0

    def worth_saving(self, tokens: list[int], adapters: Adapters = ()) -> bool:
        """Whether a slot holding ``tokens`` should be copied out before it is overwritten: it is long
        enough and no saved entry already holds the same tokens or more."""
        if not self.enabled or len(tokens) < self.min_tokens:
            return False
        t = tuple(tokens)
        return not any(e.tokens[: len(t)] == t and e.adapters == adapters for e in self._entries.values())

    def put(self, tokens: list[int], state: Sized, adapters: Adapters = ()) -> None:
        """Keep a sequence's state; entries that it covers (a prefix of it) and the least recently
        used ones beyond the capacity go. A state larger than the whole capacity is not kept."""
        if not self.enabled or len(state) > self.capacity_bytes:
            return
        t = tuple(tokens)
        for key in [k for k, e in self._entries.items() if t[: len(e.tokens)] == e.tokens and e.adapters == adapters]:
            self._drop(key)
        while self._entries and self.used_bytes + len(state) > self.capacity_bytes:
            self._drop(next(iter(self._entries)))
        entry = HostEntry(self._next_key, t, state, adapters)
        self._next_key += 1
        self._entries[entry.key] = entry
        self.used_bytes += len(state)

    def longest(self, prompt: list[int], limit: int, adapters: Adapters = ()) -> tuple[int | None, int]:
        """The saved entry computed with ``adapters`` sharing the longest prefix with ``prompt`` (at
        most ``limit`` tokens)."""
        best, best_n = None, 0
        for key, e in self._entries.items():
            if e.adapters != adapters:
                continue
            n = min(common_prefix(e.tokens, prompt), limit)
            if n > best_n:
                best, best_n = key, n
        return best, best_n

    def take(self, key: int) -> HostEntry | None:
        """An entry to restore into a slot; it becomes the most recently used."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def discard(self, key: int) -> None:
        """Forget an entry whose state llama.cpp refused."""
        if key in self._entries:
            self._drop(key)

    def _drop(self, key: int) -> None:
        self.used_bytes -= len(self._entries.pop(key).state)

