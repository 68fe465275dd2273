"""The replicas' loaded models as one: what /metrics, /api/ps, /health and the monitor show at
the ingress. A model loaded on several replicas is one entry whose counts (memory, slots,
running, waiting, KV cells, tokens/s, counters) are the replicas' sums."""

from __future__ import annotations

from dataclasses import fields, replace

from lokal.engine.engine import EngineStats
from lokal.runtime.runtime import ModelStatus

_NOT_SUMMED = {"window_s", "recent_ttft_s", "kv_pool"}


def _sum_engines(stats: list[EngineStats]) -> EngineStats:
    first = stats[0]
    summed: dict[str, object] = {f.name: sum(getattr(s, f.name) for s in stats)
                                 for f in fields(EngineStats) if f.name not in _NOT_SUMMED}
    return replace(first, **summed, window_s=max(s.window_s for s in stats),  # type: ignore[arg-type]
                   recent_ttft_s=tuple(t for s in stats for t in s.recent_ttft_s))


def combined(statuses: list[ModelStatus]) -> list[ModelStatus]:
    """One status per model, in the order models first appear. Its offload plan is one replica's
    (None when several replicas hold it: VRAM is not summed yet)."""
    by_name: dict[str, list[ModelStatus]] = {}
    for status in statuses:
        by_name.setdefault(status.name, []).append(status)
    out = []
    for group in by_name.values():
        first = group[0]
        if len(group) == 1:
            out.append(first)
            continue
        out.append(replace(first, memory_bytes=sum(s.memory_bytes for s in group),
                           expires_at=max(s.expires_at for s in group),
                           engine=_sum_engines([s.engine for s in group]), offload=None))
    return out
