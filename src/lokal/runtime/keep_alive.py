"""How long a model stays loaded after a request: Ollama's ``keep_alive`` values, in seconds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections.abc import Awaitable, Callable

FOREVER = math.inf
REAP_INTERVAL_S = 0.25  # how often idle models are checked against their keep_alive

log = logging.getLogger(__name__)


class Reaper:
    """The background task that unloads idle models whose keep_alive ran out: it runs while any
    model is loaded (``start`` after each load) and checks every REAP_INTERVAL_S."""

    def __init__(self, name: str, unload_expired: Callable[[], Awaitable[None]], loaded: Callable[[], bool]) -> None:
        self.name = name
        self._unload_expired = unload_expired
        self._loaded = loaded
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while self._loaded():
            await asyncio.sleep(REAP_INTERVAL_S)
            try:
                await self._unload_expired()
            except Exception:  # one failed unload must not stop keep_alive for the others
                log.exception("%s: unloading an expired model failed", self.name)

# Go's time.ParseDuration units, as Ollama accepts them ("5m", "1h30m", "1.5h", "500ms").
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_keep_alive(value: object) -> float:
    """Seconds to keep a model loaded: a number (seconds) or a Go duration string ("5m",
    "1h30m", "10s"). 0 unloads right after the request; any negative value means forever
    (``math.inf``). Raises ValueError for anything else."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"invalid keep_alive {value!r}: expected a duration such as \"5m\" or seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_duration(value.strip())
    else:
        raise ValueError(f"invalid keep_alive {value!r}: expected a duration such as \"5m\" or seconds")
    if math.isnan(seconds):
        raise ValueError("invalid keep_alive: NaN")
    return FOREVER if seconds < 0 else seconds


def _parse_duration(text: str) -> float:
    bad = ValueError(f'invalid keep_alive "{text}": expected a duration such as "5m", "1h30m", "10s" or seconds')
    try:
        return float(text)  # "300", "-1": seconds, as Ollama's OLLAMA_KEEP_ALIVE accepts
    except ValueError:
        pass
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if not body:
        raise bad
    total, pos = 0.0, 0
    for match in _PART.finditer(body):
        if match.start() != pos:
            raise bad
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(body):
        raise bad
    return sign * total


def format_keep_alive(seconds: float) -> str:
    """The inverse for messages and logs: "forever", "0s", "5m0s" style like Go prints."""
    if seconds == FOREVER:
        return "forever"
    whole = int(seconds)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{s}s"
    if m:
        return f"{m}m{s}s"
    return f"{seconds:g}s"
