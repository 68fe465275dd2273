"""/metrics parses with prometheus-client's parser and moves after requests; the audit log has
one JSON line per request with key, model, tokens and times."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.security.conftest import MODEL, SecuredServer

pytestmark = pytest.mark.slow


def scrape(server: SecuredServer, headers: dict[str, str]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    r = httpx.get(f"{server.url}/metrics", headers=headers, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_counters_and_histograms_move_after_a_streamed_chat(secured: SecuredServer) -> None:
    headers = {"Authorization": f"Bearer {secured.keys['watcher']}"}
    before = scrape(secured, headers)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Count to ten"}], "stream": True,
            "max_tokens": 12, "temperature": 0, "stream_options": {"include_usage": True}}
    usage = None
    with httpx.stream("POST", f"{secured.url}/v1/chat/completions", json=body, headers=headers, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                usage = json.loads(line[6:]).get("usage") or usage
    assert usage is not None
    route = {"route": "/v1/chat/completions", "method": "POST", "status": "200"}
    deadline = time.monotonic() + 10  # observed as the response ends, a moment after its last byte
    while True:
        after = scrape(secured, headers)
        if value(after, "lokal_http_requests_total", **route) > value(before, "lokal_http_requests_total", **route) \
                or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert value(after, "lokal_http_requests_total", **route) == value(before, "lokal_http_requests_total", **route) + 1
    for name in ("lokal_time_to_first_token_seconds_count", "lokal_e2e_request_latency_seconds_count"):
        assert value(after, name, model=MODEL) == value(before, name, model=MODEL) + 1
    itl = "lokal_inter_token_latency_seconds_count"
    assert value(after, itl, model=MODEL) >= value(before, itl, model=MODEL) + usage["completion_tokens"] - 2
    for name, key in (("lokal_generation_tokens_total", "completion_tokens"),
                      ("lokal_prompt_tokens_total", "prompt_tokens")):
        assert value(after, name, model=MODEL) == value(before, name, model=MODEL) + usage[key]
    assert value(after, "lokal_model_loaded", model=MODEL) == 1
    assert value(after, "lokal_model_memory_bytes", model=MODEL) > 50_000_000
    assert value(after, "lokal_kv_cache_total_cells", model=MODEL) > 0
    assert 0 <= value(after, "lokal_kv_cache_usage_ratio", model=MODEL) <= 1
    assert ("lokal_num_requests_running", frozenset({("model", MODEL)})) in after
    assert ("lokal_num_requests_waiting", frozenset({("model", MODEL)})) in after
    # The prefix cache's host tier: a conversation that takes a slot holding an earlier one has that
    # slot's cells copied to host memory first. With two slots, once two more conversations have
    # followed the chat above, at least one earlier conversation is held there.
    for system in ("You are a careful librarian. Answer in one short sentence.",
                   "Speak like a cheerful pirate. Answer in one short sentence."):
        body = {"model": MODEL, "max_tokens": 2, "temperature": 0,
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": "Name a ship."}]}
        r = httpx.post(f"{secured.url}/v1/chat/completions", json=body, headers=headers, timeout=120)
        assert r.status_code == 200
    held = scrape(secured, headers)
    entries = value(held, "lokal_prefix_cache_host_entries", model=MODEL)
    assert entries >= 1
    # each entry keeps at least 16 tokens' KV cells: 30 layers x 3 KV heads x (64 + 64) x 2 bytes
    # (f16) = 23,040 bytes a token; all of them within --prefix-cache-ram's default 512 MiB
    assert entries * 16 * 23_040 <= value(held, "lokal_prefix_cache_host_bytes", model=MODEL) <= 512 * 2**20


def audit_until(server: SecuredServer, request_id: str, timeout: float = 10.0) -> list[dict[str, object]]:
    """The audit log's lines once the one for request_id is there (it is written as the response ends)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [json.loads(x) for x in (server.home / "logs" / "audit.log").read_text().splitlines()]
        if any(x["request_id"] == request_id for x in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_the_audit_log_has_a_line_for_each_request_without_prompts(secured: SecuredServer) -> None:
    headers = {"Authorization": f"Bearer {secured.keys['watcher']}"}
    r = httpx.post(f"{secured.url}/api/generate", headers=headers, timeout=120,
                   json={"model": MODEL, "prompt": "PROMPT-CANARY", "stream": False,
                         "options": {"num_predict": 3, "temperature": 0}})
    assert r.status_code == 200
    r = httpx.get(f"{secured.url}/api/tags", headers={"Authorization": "Bearer wrong"})
    lines = audit_until(secured, r.headers["x-request-id"])
    log = (secured.home / "logs" / "audit.log").read_text()
    generate = [x for x in lines if x["route"] == "/api/generate" and x["key"] == "watcher"][-1]
    assert generate["status"] == 200 and generate["model"] == MODEL
    assert generate["prompt_tokens"] > 0 and 1 <= generate["completion_tokens"] <= 3
    assert generate["ttft_s"] is not None and 0 < generate["ttft_s"] <= generate["latency_s"]
    assert generate["client"].startswith("127.0.0.1:")
    refused = lines[-1]
    assert (refused["route"], refused["status"], refused["key"]) == ("/api/tags", 401, None)
    assert "PROMPT-CANARY" not in log
