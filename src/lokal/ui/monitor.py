"""The monitor's snapshot: machine load, loaded models and their engines, recent requests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psutil

from lokal.advise.hardware import Gpu, nvidia_gpus
from lokal.runtime.runtime import Runtime
from lokal.ui.request_log import RequestLog


def machine() -> dict[str, Any]:
    """CPU (percent since the previous call), RAM (the machine's, and lokal's own resident set,
    measured, beside the models' estimates), and GPUs when nvidia-ml-py is installed."""
    ram = psutil.virtual_memory()
    return {
        "process_rss": psutil.Process().memory_info().rss,
        "cpu_percent": psutil.cpu_percent(interval=None),
        "cpu_count": psutil.cpu_count() or 1,
        "ram_total": ram.total,
        "ram_used": ram.total - ram.available,
        "ram_available": ram.available,
        "gpus": gpus(),
    }


def gpus(read: Callable[[], tuple[Gpu, ...]] = nvidia_gpus) -> list[dict[str, Any]]:
    """Each NVIDIA GPU's utilisation and memory (NVML, measured); none without one."""
    return [{
        "index": g.index,
        "name": g.name,
        "util_percent": None if g.utilization is None else round(g.utilization * 100),
        "memory_total": g.memory_total,
        "memory_used": g.memory_used,
    } for g in read()]


def throughput_history(records: list[dict[str, Any]], now: float, seconds: int = 180) -> list[list[float]]:
    """Generated tokens/s for each of the last ``seconds`` whole seconds, from finished requests
    (each one's tokens spread evenly from its first token to its end): ``[[unix_second, tok/s], ...]``."""
    end = int(now)
    start = end - seconds
    buckets = [0.0] * seconds
    for r in records:
        first = r["started_at"] + (r["ttft_s"] or 0.0)
        last = r["started_at"] + r["duration_s"]
        tokens = r["completion_tokens"]
        if tokens <= 0 or last <= start:
            continue
        span = max(last - first, 1e-3)
        for second in range(max(int(first), start), min(int(last), end - 1) + 1):
            overlap = min(last, second + 1) - max(first, second)
            if overlap > 0:
                buckets[second - start] += tokens * overlap / span
    return [[float(start + i), round(v, 2)] for i, v in enumerate(buckets)]


def snapshot(runtime: Runtime, log: RequestLog) -> dict[str, Any]:
    """Everything the monitor page shows, at this moment."""
    models = []
    for m in runtime.status():
        s = m.engine
        models.append({
            "name": m.name,
            "memory_bytes": m.memory_bytes,
            "vram_bytes": m.vram_bytes,
            "offload": m.offload.description if m.offload is not None else "",
            "kv_pool": s.kv_pool,
            "preemptions": s.preemptions,
            "running": s.running,
            "waiting": s.waiting,
            "slots": s.slots,
            "kv_cells_used": s.kv_cells_used,
            "kv_cells_total": s.kv_cells_total,
            "host_prefixes": s.host_prefixes,
            "host_prefix_bytes": s.host_prefix_bytes,
            "tokens_per_second": s.tokens_per_second,
            "generated_tokens": s.generated_tokens,
            "prompt_tokens": s.prompt_tokens,
            "recent_ttft_s": list(s.recent_ttft_s),
            "expires_at": m.expires_at.isoformat(),
        })
    now = time.time()
    recent = log.recent(limit=100)
    return {
        "time": now,
        "machine": machine(),
        "models": models,
        "running": sum(m["running"] for m in models),
        "waiting": sum(m["waiting"] for m in models),
        "tokens_per_second": sum(m["tokens_per_second"] for m in models),
        "requests_total": log.total,
        "recent_requests": recent[-50:],
        "history": throughput_history(recent, now),
    }
