"""`lokal bench run --scenario code-edit | summarize | chat` against a live lokal with smollm2, tiny answers:
each run's JSON validates against the schema and carries the single-stream numbers and the speculative field."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from tests.integration.bench.test_bench_run import bench
from tests.integration.conftest import LiveServer

pytestmark = pytest.mark.slow

MAX_TOKENS = 6


def check(doc: dict[str, Any], scenario: str, has_counters: bool) -> dict[str, Any]:
    jsonschema.validate(doc, json.loads(resources.files("lokal.bench").joinpath("schema.json").read_text()))
    cfg = doc["config"]
    assert (cfg["scenario"], cfg["workload"], cfg["ignore_eos"], cfg["max_tokens"]) == (scenario, scenario, False,
                                                                                         MAX_TOKENS)
    t = doc["targets"][0]
    assert t["status"] == "ok" and t["errors"] == 0, t
    (lv,) = t["levels"]
    assert lv["concurrency"] == 1 and lv["requests"] == 3 and lv["reps"] == 1
    assert 0 < lv["tokens_per_req"] <= MAX_TOKENS and lv["usage_reported"] == 3
    assert 0 < t["ttft_p50_ms"] / 1000 <= t["e2e_p50_s"] == lv["latency_s"]["p50"]
    if has_counters:  # lokal's speculation counters are on /metrics: the field is their difference
        assert lv["speculative"]["source"] == "metrics" and lv["speculative"]["drafted"] >= 0
    else:
        assert lv["speculative"] is None and t["speculative_acceptance"] is None
    return lv


def counters(url: str) -> bool:
    return "lokal_speculative_drafted_tokens_total" in httpx.get(url + "/metrics", timeout=10).text


@pytest.mark.parametrize("scenario", ["code-edit", "chat"])
def test_short_prompt_workloads_on_a_live_lokal(server: LiveServer, model_home: Path, tmp_path: Path,
                                                scenario: str) -> None:
    out = tmp_path / "w.json"
    proc = bench(model_home, "run", "--scenario", scenario, "--target", f"lokal={server.url}@smollm2:135m",
                 "--max-tokens", str(MAX_TOKENS), "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lv = check(json.loads(out.read_text()), scenario, counters(server.url))
    if scenario == "code-edit":  # the prompt carries the ~420-token function
        assert lv["prompt_tok_s"] > 0
    assert f"{scenario}: one user" in proc.stdout and "spec. acceptance" in proc.stdout


def test_summarize_reads_the_long_text_on_a_lokal_the_bench_starts(model_home: Path, tmp_path: Path) -> None:
    """The ~1,500-token prompt needs more context than the shared server's slots have: the bench starts its own."""
    out = tmp_path / "s.json"
    proc = bench(model_home, "run", "--scenario", "summarize", "--target", "lokal:smollm2:135m", "--slots", "1",
                 "--ctx", "2048", "--threads", "2", "--max-tokens", str(MAX_TOKENS), "--json", str(out), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    check(doc, "summarize", has_counters=doc["targets"][0]["levels"][0]["speculative"] is not None)
    prompt_tokens = doc["targets"][0]["levels"][0]["prompt_tok_s"] * doc["targets"][0]["ttft_p50_ms"] / 1000
    assert prompt_tokens > 1000  # prompt tokens / TTFT × TTFT, roughly: the long text was read
