"""Percentiles and the summary of one measurement (one target, one concurrency level)."""

from __future__ import annotations

import re
import statistics
from typing import Any

from lokal.bench.loadgen import RequestRecord


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance over the reference's length (case and punctuation ignored)."""
    ref, hyp = (re.findall(r"[a-z0-9']+", text.lower()) for text in (reference, hypothesis))
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / len(ref)


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0 ≤ q ≤ 1) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def distribution(values: list[float], scale: float = 1.0) -> dict[str, float] | None:
    """mean, p50, p95, p99, min, max of values × scale; None when there are none."""
    if not values:
        return None
    v = [x * scale for x in values]
    return {"mean": statistics.fmean(v), "p50": percentile(v, 0.5), "p95": percentile(v, 0.95),
            "p99": percentile(v, 0.99), "min": min(v), "max": max(v)}


def summarize(records: list[RequestRecord], wall_s: float) -> dict[str, Any]:
    """The numbers of one run of the load: throughput over the wall time, distributions over requests."""
    ok = [r for r in records if r.ok]
    tokens = sum(r.tokens for r in ok)
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    itls = [gap for r in ok for gap in r.itl]
    # per-stream decode speed: tokens after the first over the time after the first content
    decode = [(r.tokens - 1) / (r.latency - r.ttft) for r in ok
              if r.ttft is not None and r.tokens > 1 and r.latency > r.ttft]
    prompt_speed = [r.prompt_tokens / r.ttft for r in ok if r.prompt_tokens and r.ttft]
    return {
        "requests": len(records),
        "errors": len(records) - len(ok),
        "wall_s": wall_s,
        "tokens": tokens,
        "tok_s": tokens / wall_s if wall_s > 0 else 0.0,
        "req_s": len(ok) / wall_s if wall_s > 0 else 0.0,
        "tokens_per_req": tokens / len(ok) if ok else 0.0,
        "stream_tok_s": statistics.median(decode) if decode else None,
        "prompt_tok_s": statistics.median(prompt_speed) if prompt_speed else None,
        "ttft_ms": distribution(ttfts, 1000),
        "latency_s": distribution([r.latency for r in ok]),
        "itl_ms": distribution(itls, 1000),
        "usage_tokens": sum(r.usage_tokens for r in ok if r.usage_tokens is not None),
        "usage_reported": sum(1 for r in ok if r.usage_tokens is not None),
    }


def merge_reps(reps: list[dict[str, Any]], records: list[RequestRecord]) -> dict[str, Any]:
    """One level's result from several repetitions: medians of the rates, distributions over all requests."""
    wall = sum(r["wall_s"] for r in reps)
    out = summarize(records, wall)
    for key in ("tok_s", "req_s"):
        out[key] = statistics.median(r[key] for r in reps)
    out["reps"] = len(reps)
    out["tok_s_reps"] = [r["tok_s"] for r in reps]  # in measuring order, for ratios paired rep by rep
    out["ttft_samples_ms"] = [round(r.ttft * 1000, 2) for r in records if r.ok and r.ttft is not None]
    return out


def paired_tok_s_ratio(level: dict[str, Any], base: dict[str, Any]) -> float | None:
    """A level's tok/s against the baseline's: the median of the ratios within each rep (the targets took
    turns in it, so a shared machine's drift between reps cancels out), else the ratio of the medians."""
    mine, theirs = level.get("tok_s_reps") or [], base.get("tok_s_reps") or []
    if mine and len(mine) == len(theirs) and all(theirs):
        return float(statistics.median(x / y for x, y in zip(mine, theirs, strict=True)))
    return float(level["tok_s"] / base["tok_s"]) if base.get("tok_s") else None
