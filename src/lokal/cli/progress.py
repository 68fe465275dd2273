"""A Rich progress bar fed by the store's pull progress callbacks."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from lokal.store.progress import PullProgress


class PullProgressBar:
    """Shows bytes, speed and ETA while downloading, and each later step as a line."""

    def __init__(self, console: Console, name: str) -> None:
        self._name = name
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task: TaskID | None = None
        self._last_status = ""

    def __enter__(self) -> PullProgressBar:
        self._progress.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def __call__(self, p: PullProgress) -> None:
        if p.total:
            # "pulling" while downloading; a later byte-counted step (converting) under its own name
            description = f"{'pulling' if p.status == 'downloading' else escape(p.status)} {escape(self._name)}"
            if self._task is None:
                self._task = self._progress.add_task(description, total=p.total)
            self._progress.update(self._task, description=description, total=p.total, completed=p.completed or 0)
        elif p.status != self._last_status:
            self._progress.console.print(f"[dim]{escape(p.status)}[/dim]")
        self._last_status = p.status
