"""Percentiles, per-level summaries and the headline numbers of a bench run."""

from __future__ import annotations

import numpy as np
import pytest

from lokal.bench.loadgen import RequestRecord
from lokal.bench.metrics import distribution, merge_reps, paired_tok_s_ratio, percentile, summarize


@pytest.mark.parametrize("values", [[5.0], [1.0, 2.0], [3.0, 1.0, 2.0], list(np.random.default_rng(1).random(101))])
@pytest.mark.parametrize("q", [0.0, 0.5, 0.95, 0.99, 1.0])
def test_percentile_matches_numpy_linear(values: list[float], q: float) -> None:
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q * 100)))


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_distribution_is_ordered_and_scaled() -> None:
    d = distribution([0.1, 0.2, 0.3, 0.4, 1.0], scale=1000)
    assert d is not None
    assert d["min"] == pytest.approx(100) and d["max"] == pytest.approx(1000)
    assert d["p50"] <= d["p95"] <= d["p99"] <= d["max"]
    assert d["mean"] == pytest.approx(400)
    assert distribution([]) is None


def _rec(ttft: float, latency: float, tokens: int, usage: int | None = None, error: str | None = None) -> RequestRecord:
    gaps = [(latency - ttft) / (tokens - 1)] * (tokens - 1) if tokens > 1 else []
    return RequestRecord(ttft=ttft, latency=latency, itl=gaps, tokens=tokens, chunks=tokens, usage_tokens=usage,
                         prompt_tokens=50 if usage else None, error=error)


def test_summarize_counts_tokens_errors_and_rates() -> None:
    recs = [_rec(0.1, 1.1, 11, usage=11), _rec(0.2, 1.2, 11, usage=11), RequestRecord(error="HTTP 500: boom")]
    s = summarize(recs, wall_s=2.0)
    assert s["requests"] == 3 and s["errors"] == 1
    assert s["tokens"] == 22 and s["tok_s"] == pytest.approx(11.0) and s["req_s"] == pytest.approx(1.0)
    assert s["tokens_per_req"] == pytest.approx(11)
    assert s["stream_tok_s"] == pytest.approx(10.0)  # 10 tokens after the first in 1 s
    assert s["itl_ms"]["p50"] == pytest.approx(100.0)
    assert s["ttft_ms"]["p50"] == pytest.approx(150.0)
    assert s["prompt_tok_s"] == pytest.approx(statistics_median([50 / 0.1, 50 / 0.2]))
    assert s["usage_tokens"] == 22 and s["usage_reported"] == 2


def statistics_median(values: list[float]) -> float:
    import statistics

    return statistics.median(values)


def test_all_failed_level_has_no_distributions() -> None:
    s = summarize([RequestRecord(error="ConnectError")] * 3, wall_s=0.5)
    assert s["errors"] == 3 and s["tok_s"] == 0 and s["ttft_ms"] is None and s["stream_tok_s"] is None


def test_merge_reps_takes_median_rates_and_pools_requests() -> None:
    a = [_rec(0.1, 1.0, 10)]
    b = [_rec(0.3, 1.0, 10)]
    c = [_rec(0.2, 1.0, 10)]
    reps = [summarize(a, 1.0), summarize(b, 2.0), summarize(c, 4.0)]
    merged = merge_reps(reps, a + b + c)
    assert merged["tok_s"] == pytest.approx(5.0)  # median of 10, 5, 2.5
    assert merged["requests"] == 3 and merged["reps"] == 3
    assert sorted(merged["ttft_samples_ms"]) == [100.0, 200.0, 300.0]
    assert merged["tok_s_reps"] == pytest.approx([10.0, 5.0, 2.5])


def test_ratio_against_the_baseline_pairs_reps_so_drift_between_reps_cancels() -> None:
    # the machine slowed down in rep 2 for both targets and in rep 3 for this one alone: the medians say
    # 60 / 80 = 0.75, two reps of three say 1.1
    mine = {"tok_s": 60.0, "tok_s_reps": [110.0, 55.0, 60.0]}
    base = {"tok_s": 80.0, "tok_s_reps": [100.0, 50.0, 80.0]}
    assert paired_tok_s_ratio(mine, base) == pytest.approx(1.1)
    # documents from before per-rep rates were kept (or a rep missing): the ratio of the medians
    assert paired_tok_s_ratio({"tok_s": 60.0}, base) == pytest.approx(0.75)
    assert paired_tok_s_ratio({"tok_s": 60.0, "tok_s_reps": [60.0]}, base) == pytest.approx(0.75)
    assert paired_tok_s_ratio(mine, {"tok_s": 0.0}) is None
