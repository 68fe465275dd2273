"""The ingress's view of the replicas' loaded models: one entry per model, counts summed."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from lokal.engine.engine import EngineStats
from lokal.runtime.runtime import ModelStatus
from lokal.scale.status import combined

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def status(name: str, running: int, later_s: float = 0.0) -> ModelStatus:
    engine = EngineStats(running=running, waiting=1, slots=4, kv_cells_used=100, kv_cells_total=1000,
                         tokens_per_second=10.0, window_s=10.0, steps=5, generated_tokens=50, prompt_tokens=40,
                         cached_prompt_tokens=20, recent_ttft_s=(0.1,), drafted_tokens=3, preemptions=1)
    return ModelStatus(name=name, memory_bytes=500, context_length=1024, expires_at=NOW + timedelta(seconds=later_s),
                       engine=engine, manifest=None)  # type: ignore[arg-type]


def test_a_model_on_two_replicas_is_one_entry_with_summed_counts() -> None:
    a, b, other = status("m:1", 2), status("m:1", 3, later_s=60), status("other:1", 1)
    merged = combined([a, other, b])
    assert [m.name for m in merged] == ["m:1", "other:1"]
    m = merged[0]
    assert m.memory_bytes == 1000 and m.context_length == 1024 and m.expires_at == b.expires_at
    assert (m.engine.running, m.engine.waiting, m.engine.slots) == (5, 2, 8)
    assert (m.engine.kv_cells_used, m.engine.kv_cells_total, m.engine.tokens_per_second) == (200, 2000, 20.0)
    assert (m.engine.generated_tokens, m.engine.drafted_tokens, m.engine.preemptions) == (100, 6, 2)
    assert m.engine.window_s == 10.0 and m.engine.recent_ttft_s == (0.1, 0.1)
    assert merged[1] == other


def test_one_replica_is_shown_as_it_reported() -> None:
    one = replace(status("m:1", 2), offload=None)
    assert combined([one]) == [one]
