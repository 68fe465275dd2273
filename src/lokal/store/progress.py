"""Progress of a pull, reported as Ollama reports it (``pulling manifest`` … ``success``)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class PullProgress:
    """One progress line: a status, and for byte-counted phases ``completed`` of ``total``."""

    status: str
    total: int | None = None
    completed: int | None = None
    digest: str | None = None


ProgressCallback = Callable[[PullProgress], None]


def ignore_progress(_: PullProgress) -> None:
    """A :data:`ProgressCallback` that drops every report."""


def folder_size(folder: Path) -> int:
    """Total size of the files under ``folder`` (files that vanish while walking count 0)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


class ByteProgress:
    """Reports ``completed`` of ``total`` bytes for one phase: never backwards, never past
    ``total``, at most every ``interval`` seconds unless forced, and never the same twice."""

    def __init__(
        self,
        report: ProgressCallback,
        status: str,
        total: int | None,
        digest: str | None = None,
        interval: float = 0.1,
    ) -> None:
        self.report = report
        self.status = status
        self.total = total
        self.digest = digest
        self.interval = interval
        self._last_time = 0.0
        self._last_completed: int | None = None

    def __call__(self, completed: int, *, force: bool = False) -> None:
        if self.total is not None:
            completed = min(completed, self.total)
        if self._last_completed is not None:
            if completed <= self._last_completed:
                return
        now = time.monotonic()
        if not force and now - self._last_time < self.interval:
            return
        self._last_time = now
        self._last_completed = completed
        self.report(PullProgress(self.status, self.total, completed, self.digest))
