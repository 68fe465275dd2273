"""Long store operations (pull, create) run in a thread while their progress streams out as
Ollama's status lines."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from lokal.server.errors import APIError
from lokal.store.errors import InvalidModelName, ModelNotFound, PullError, StoreError
from lokal.store.progress import PullProgress

_DONE = object()


def status_line(p: PullProgress) -> dict[str, Any]:
    """Ollama's shape; byte counts of the download read "pulling <first 12 hex of the digest>"."""
    status = p.status
    if status == "downloading" and p.digest:
        status = f"pulling {p.digest.removeprefix('sha256:')[:12]}"
    line: dict[str, Any] = {"status": status}
    if p.digest:
        line["digest"] = p.digest
    if p.total is not None:
        line["total"] = p.total
    if p.completed is not None:
        line["completed"] = p.completed
    return line


async def run_in_thread_with_progress(
    work: Callable[[Callable[[PullProgress], None]], object],
) -> AsyncIterator[dict[str, Any] | BaseException]:
    """Run work(report) in a thread; yield each report as a status line as it comes, then the
    exception work raised, if any. The thread runs to its end even if nobody reads on."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()

    def report(p: PullProgress) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, status_line(p))

    def target() -> None:
        try:
            work(report)
        except BaseException as exc:  # handed to the reader
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)

    loop.run_in_executor(None, target)
    while (item := await queue.get()) is not _DONE:
        yield item  # type: ignore[misc]


async def as_status_lines(items: AsyncIterator[dict[str, Any] | BaseException]) -> AsyncIterator[dict[str, Any]]:
    """For streaming: an exception becomes Ollama's ``{"error": ...}`` line."""
    async for item in items:
        yield {"error": str(item)} if isinstance(item, BaseException) else item


async def last_status(items: AsyncIterator[dict[str, Any] | BaseException]) -> dict[str, Any]:
    """For ``stream: false``: the final status line, or the failure as an APIError."""
    last: dict[str, Any] = {"status": "success"}
    async for item in items:
        if isinstance(item, BaseException):
            raise as_api_error(item)
        last = item
    return last


def as_api_error(exc: BaseException) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, InvalidModelName):
        return APIError(400, str(exc))
    if isinstance(exc, ModelNotFound):
        return APIError(404, str(exc))
    if isinstance(exc, PullError):
        return APIError(500, str(exc), type="server_error")
    if isinstance(exc, StoreError | OSError | ValueError):
        return APIError(500 if isinstance(exc, OSError) else 400, str(exc))
    return APIError(500, f"{type(exc).__name__}: {exc}", type="server_error")
