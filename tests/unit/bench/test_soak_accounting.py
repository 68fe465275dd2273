"""benchmarks/soak.py's bookkeeping: the usage it reads from each route's responses, the host-tier
test, and that any disagreement between what it sent and /metrics or the audit log is reported."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter
from types import ModuleType

import pytest

from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("soak_benchmark", REPO_ROOT / "benchmarks" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_usage_is_read_from_every_route_streamed_or_not(soak: ModuleType) -> None:
    usage = {"prompt_tokens": 7, "completion_tokens": 3}
    chunks = [{"choices": [{"delta": {"content": "hi"}, "finish_reason": None}]},
              {"choices": [{"delta": {}, "finish_reason": "length"}]},
              {"choices": [], "usage": usage}]
    sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    assert soak.usage_of("/v1/chat/completions", sse, True) == (7, 3)
    whole = {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}], "usage": usage}
    assert soak.usage_of("/v1/completions", json.dumps(whole), False) == (7, 3)
    ndjson = '{"response":"hi","done":false}\n{"done":true,"prompt_eval_count":7,"eval_count":3}\n'
    assert soak.usage_of("/api/generate", ndjson, True) == (7, 3)
    assert soak.usage_of("/api/chat", '{"done":true,"prompt_eval_count":7,"eval_count":3}', False) == (7, 3)
    assert soak.usage_of("/api/chat", '{"response":"hi","done":false}\n', True) is None  # cut short
    assert soak.usage_of("/v1/chat/completions", "data: " + json.dumps(chunks[0]) + "\n\n", True) is None


def test_the_tier_counts_as_full_when_another_average_entry_would_evict_one(soak: ModuleType) -> None:
    mib = 2**20

    def scrape(host_mib: float, entries: int) -> object:
        return soak.Scrape(Counter(), Counter(), 0, 0, int(host_mib * mib), entries)

    assert not soak.tier_full(scrape(0, 0), 512 * mib)
    assert not soak.tier_full(scrape(400, 400), 512 * mib)
    assert soak.tier_full(scrape(511, 550), 512 * mib)
    assert soak.tier_full(scrape(0, 0), 0)  # no tier: nothing to fill


def test_every_disagreement_with_metrics_or_the_audit_log_is_reported(soak: ModuleType) -> None:
    sent = soak.Tally(outcomes=Counter(ok=4), by_route=Counter(dict.fromkeys(soak.ROUTES, 1)),
                      prompt_tokens=40, completion_tokens=8)
    delta = {"http": {f"{route} 200": 1 for route in soak.ROUTES}, "generations": {"length": 3, "stop": 1},
             "prompt_tokens": 40, "generation_tokens": 8}
    audit = {"lines": 4, "generation_lines": 4, "ok": 4, "prompt_tokens": 40, "completion_tokens": 8}
    assert soak.mismatches(sent, delta, audit) == []

    assert len(soak.mismatches(sent, {**delta, "prompt_tokens": 39}, audit)) == 1
    assert len(soak.mismatches(sent, {**delta, "generation_tokens": 9}, audit)) == 1
    assert len(soak.mismatches(sent, {**delta, "generations": {"length": 3}}, audit)) == 1
    assert len(soak.mismatches(sent, {**delta, "generations": {"length": 3, "error": 1}}, audit)) == 1
    http = {**delta["http"], "/api/chat 200": 0, "/api/chat 500": 1}
    assert len(soak.mismatches(sent, {**delta, "http": http}, audit)) == 1
    assert len(soak.mismatches(sent, delta, {**audit, "lines": 3, "generation_lines": 3, "ok": 3})) == 1
