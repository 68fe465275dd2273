"""Recent generations (any API, the CLI, any client) with their TTFT and tokens/s, for the monitor.

A subscriber of the runtime's events: each finished or failed generation becomes one record, with
the same TTFT and token counts that /metrics observes (both come from the runtime's
``GenerationRecord``). Records live in a bounded ring buffer."""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from lokal.runtime.events import Event, Failed, Finished, GenerationRecord


@dataclass
class RequestRecord:
    """One finished generation (times in seconds; ``started_at`` is Unix time)."""

    path: str  # the surface: the HTTP route, "cli" or "python"
    model: str
    status: str  # how it ended: stop, length, cancelled, timeout or error
    started_at: float
    duration_s: float
    ttft_s: float | None
    prompt_tokens: int
    completion_tokens: int
    tokens_per_second: float | None


class RequestLog:
    """The last ``capacity`` generations, newest last."""

    def __init__(self, capacity: int = 100) -> None:
        self._records: deque[RequestRecord] = deque(maxlen=capacity)
        self.total = 0

    def observe(self, record: GenerationRecord, event: Event) -> None:
        """Runtime subscriber: one record per generation, when it ends."""
        if not isinstance(event, Finished | Failed):
            return
        self._records.append(RequestRecord(
            path=record.caller.surface, model=record.model, status=record.outcome, started_at=record.started_at,
            duration_s=record.duration_s or 0.0, ttft_s=record.ttft_s, prompt_tokens=record.prompt_tokens,
            completion_tokens=record.completion_tokens, tokens_per_second=record.decode_tokens_per_second,
        ))
        self.total += 1

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        return [asdict(r) for r in list(self._records)[-limit:]]
