"""Speculative acceptance of a measurement: how many drafted tokens the target drafted and kept.

Two sources, whichever the target has: lokal's Prometheus counters on /metrics (read before and after a
measurement; the difference is that measurement's), else the per-request `timings.draft_n` /
`timings.draft_n_accepted` llama-server puts in its last stream chunk. A target with neither reports null.
"""

from __future__ import annotations

from typing import Any

import httpx

from lokal.bench.loadgen import RequestRecord

DRAFTED_METRIC = "lokal_speculative_drafted_tokens_total"
ACCEPTED_METRIC = "lokal_speculative_accepted_tokens_total"

Counters = tuple[float, float]  # (drafted, accepted)


def parse_counters(text: str) -> Counters | None:
    """The drafted and accepted totals of a Prometheus text page, summed over labels; None without them."""
    sums = {DRAFTED_METRIC: 0.0, ACCEPTED_METRIC: 0.0}
    seen = set()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in sums:
            try:
                sums[name] += float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
            seen.add(name)
    if DRAFTED_METRIC not in seen:
        return None
    return sums[DRAFTED_METRIC], sums[ACCEPTED_METRIC]


def scrape(url: str, timeout: float = 5.0) -> Counters | None:
    """The counters of the server at `url` (its /metrics), or None when it has no such page or counters."""
    try:
        r = httpx.get(url + "/metrics", timeout=timeout)
    except httpx.HTTPError:
        return None
    return parse_counters(r.text) if r.status_code == 200 else None


def summary(before: Counters | None, after: Counters | None, records: list[RequestRecord]) -> dict[str, Any] | None:
    """The `speculative` field of a level (see schema.json): drafted, accepted, acceptance and the source."""
    if before is not None and after is not None:
        drafted, accepted, source = after[0] - before[0], after[1] - before[1], "metrics"
    else:
        timed = [r for r in records if r.ok and r.draft_tokens is not None]
        if not timed:
            return None
        drafted = float(sum(r.draft_tokens or 0 for r in timed))
        accepted = float(sum(r.draft_accepted or 0 for r in timed))
        source = "timings"
    return {"source": source, "drafted": int(drafted), "accepted": int(accepted),
            "acceptance": accepted / drafted if drafted > 0 else None}


def merge(parts: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """One level's speculative field from its reps' (sums; null when no rep had a source)."""
    have = [p for p in parts if p]
    if not have:
        return None
    drafted = sum(p["drafted"] for p in have)
    accepted = sum(p["accepted"] for p in have)
    return {"source": have[0]["source"], "drafted": drafted, "accepted": accepted,
            "acceptance": accepted / drafted if drafted > 0 else None}
