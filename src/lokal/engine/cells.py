"""Which KV cells each sequence id holds, mirrored in Python so the scheduler can plan by free cells.

llama.cpp does not say how many cells of a unified (shared) KV cache are in use, and a cell may
belong to several sequences at once: a copied prefix (``llama_memory_seq_cp``) adds the copy's id
to the same cells. `CellLedger` follows every memory operation `LlamaModel` makes and counts each
physical cell once. It knows nothing of llama.cpp.
"""

from __future__ import annotations

import itertools
from collections import Counter


class CellLedger:
    """Per sequence id, the ids of its cells in position order; a cell shared by several sequences
    has one id and counts once in ``used``."""

    def __init__(self, capacity: int, shared: bool) -> None:
        self.capacity = capacity  # cells in the pool (per-slot: all streams together)
        self.shared = shared  # whether copying a prefix shares cells (one unified stream) or copies them
        self._held: dict[int, list[int]] = {}
        self._refs: Counter[int] = Counter()
        self._ids = itertools.count()

    @property
    def used(self) -> int:
        return len(self._refs)

    @property
    def free(self) -> int:
        return self.capacity - self.used

    def held(self, seq_id: int) -> int:
        """How many positions seq_id has cells for."""
        return len(self._held.get(seq_id, ()))

    def exclusive(self, seq_id: int) -> int:
        """Cells that only seq_id holds: what dropping its cells would free."""
        return sum(1 for c in self._held.get(seq_id, ()) if self._refs[c] == 1)

    def append(self, seq_id: int, position: int) -> None:
        """A decoded row wrote seq_id's cell at ``position`` (positions grow one by one)."""
        cells = self._held.setdefault(seq_id, [])
        if position < len(cells):  # written again (llama.cpp replaces the cell): nothing new
            return
        cell = next(self._ids)
        cells.append(cell)
        self._refs[cell] += 1

    def truncate(self, seq_id: int, n: int) -> None:
        """seq_id keeps only its first n positions."""
        cells = self._held.get(seq_id)
        if not cells or len(cells) <= n:
            return
        for cell in cells[n:]:
            self._release(cell)
        del cells[n:]

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        """dst (emptied first) gets src's first n positions: the same cells in a shared pool, new
        ones where every sequence has its own stream."""
        self.truncate(dst, 0)
        prefix = self._held.get(src, [])[:n]
        if self.shared:
            cells = list(prefix)
            for cell in cells:
                self._refs[cell] += 1
            self._held[dst] = cells
        else:
            self._held[dst] = []
            for p in range(len(prefix)):
                self.append(dst, p)

    def fill(self, seq_id: int, n: int) -> None:
        """seq_id (emptied first) holds n fresh cells (restored from saved state)."""
        self.truncate(seq_id, 0)
        for p in range(n):
            self.append(seq_id, p)

    def _release(self, cell: int) -> None:
        self._refs[cell] -= 1
        if self._refs[cell] <= 0:
            del self._refs[cell]
