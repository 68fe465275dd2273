"""Auth, limits, CORS, metrics and the audit log on an app without a loaded model (no llama.cpp)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from lokal import __version__
from lokal.app import create_app
from lokal.config import Settings
from lokal.engine.sampling import SamplingParams
from lokal.runtime.errors import ContextLengthExceeded
from lokal.runtime.pipeline import within_limits
from lokal.server.security.keys import KeyStore

CHAT = {"model": "nope:latest", "messages": [{"role": "user", "content": "secret prompt"}]}


@pytest.fixture
def make_client(tmp_path: Path) -> Callable[..., TestClient]:
    def make(**settings: object) -> TestClient:
        return TestClient(create_app(Settings(home=tmp_path, **settings)))  # type: ignore[arg-type]

    return make


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_without_keys_every_route_is_open(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    assert client.get("/v1/models").status_code == 200
    assert client.get("/api/tags").status_code == 200


def test_with_a_key_api_routes_need_it_in_each_apis_error_shape(tmp_path: Path,
                                                                make_client: Callable[..., TestClient]) -> None:
    key = KeyStore(tmp_path).create("alice")
    client = make_client()
    r = client.get("/v1/models")
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = client.post("/api/chat", json=CHAT)
    assert r.status_code == 401 and isinstance(r.json()["error"], str)
    assert client.get("/ui/api/presets").status_code == 401
    assert client.get("/metrics").status_code == 401
    r = client.get("/v1/models", headers=bearer(key + "x"))
    assert r.status_code == 401 and r.json()["error"]["message"] == "invalid API key"
    assert client.get("/v1/models", headers=bearer(key)).status_code == 200
    assert client.get("/api/tags", headers=bearer(key)).json() == {"models": []}
    assert client.get("/api/tags", headers={"Authorization": f"Basic {key}"}).status_code == 401


def test_liveness_readiness_docs_and_the_ui_page_stay_open(tmp_path: Path,
                                                           make_client: Callable[..., TestClient]) -> None:
    KeyStore(tmp_path).create("alice")
    client = make_client()
    assert client.get("/health").status_code == 200
    r = client.get("/ready")
    assert r.status_code == 503 and "not found" in r.json()["reason"]  # no model in this home
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/").text == "Ollama is running"
    assert client.get("/", headers={"accept": "text/html"}).status_code == 200


def test_requests_over_the_rate_limit_get_429_with_retry_after(tmp_path: Path,
                                                               make_client: Callable[..., TestClient]) -> None:
    key = KeyStore(tmp_path).create("alice")
    other = KeyStore(tmp_path).create("bob")
    client = make_client(rate_rpm=2)
    assert [client.get("/v1/models", headers=bearer(key)).status_code for _ in range(2)] == [200, 200]
    r = client.get("/v1/models", headers=bearer(key))
    assert r.status_code == 429
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert r.json()["error"]["type"] == "rate_limit_error"
    r = client.get("/api/tags", headers=bearer(key))
    assert r.status_code == 429 and isinstance(r.json()["error"], str)
    assert client.get("/v1/models", headers=bearer(other)).status_code == 200
    assert client.get("/health").status_code == 200  # never limited


def test_a_body_over_the_limit_is_413_declared_or_streamed(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_body_bytes=2048)
    r = client.post("/v1/chat/completions", content=b"x" * 4096, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(8):
            yield b"x" * 512

    r = client.post("/api/chat", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["error"]
    # blob uploads stream to disk and are checked against their digest instead
    r = client.post("/api/blobs/sha256:" + "0" * 64, content=b"x" * 4096)
    assert r.status_code == 400 and "digest mismatch" in r.json()["error"]


def test_cors_is_off_by_default_and_follows_the_allow_list(make_client: Callable[..., TestClient]) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    r = make_client().options("/v1/chat/completions", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    client = make_client(origins="https://app.example")
    r = client.options("/v1/chat/completions", headers=preflight)
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    r = client.options("/v1/chat/completions", headers={**preflight, "Origin": "https://evil.example"})
    assert r.headers.get("access-control-allow-origin") != "https://evil.example"


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_parse_and_count_requests_by_route_template(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    client.get("/v1/models")
    client.get("/v1/models/some-model")
    client.get("/no/such/path")
    samples = _samples(client.get("/metrics").text)
    key = ("lokal_http_requests_total", (("method", "GET"), ("route", "/v1/models"), ("status", "200")))
    assert samples[key] == 1
    assert samples[("lokal_http_requests_total",
                    (("method", "GET"), ("route", "/v1/models/{model_id}"), ("status", "404")))] == 1
    assert samples[("lokal_http_requests_total", (("method", "GET"), ("route", "unmatched"), ("status", "404")))] == 1
    client.get("/v1/models")
    samples = _samples(client.get("/metrics").text)
    assert samples[key] == 2
    assert samples[("process_resident_memory_bytes", ())] > 10_000_000
    assert ("lokal_info", (("version", __version__),)) in samples


def test_audit_log_has_one_json_line_per_request_and_no_prompt_by_default(
        tmp_path: Path, make_client: Callable[..., TestClient]) -> None:
    key = KeyStore(tmp_path).create("alice")
    client = make_client()
    client.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
    client.get("/health")
    client.get("/v1/models")
    lines = [json.loads(x) for x in (tmp_path / "logs" / "audit.log").read_text().splitlines()]
    assert [(x["route"], x["status"], x["key"]) for x in lines] == [
        ("/v1/chat/completions", 404, "alice"), ("/v1/models", 401, None)]
    assert set(lines[0]) >= {"time", "key", "client", "route", "model", "prompt_tokens", "completion_tokens",
                             "ttft_s", "latency_s", "status"}
    assert "prompt" not in lines[0] and "secret prompt" not in (tmp_path / "logs" / "audit.log").read_text()


def test_audit_log_has_the_prompt_when_enabled(tmp_path: Path, make_client: Callable[..., TestClient]) -> None:
    client = make_client(audit_prompts=True)
    client.post("/api/chat", json=CHAT)
    line = json.loads((tmp_path / "logs" / "audit.log").read_text().splitlines()[-1])
    assert "secret prompt" in line["prompt"]


def test_per_request_limits_cap_max_tokens_and_refuse_long_prompts() -> None:
    limits = Settings(max_tokens_limit=100, max_prompt_tokens=10)
    assert within_limits(limits, [1] * 5, SamplingParams()).max_tokens == 100
    assert within_limits(limits, [1] * 5, SamplingParams(max_tokens=50)).max_tokens == 50
    assert within_limits(limits, [1] * 5, SamplingParams(max_tokens=10**9)).max_tokens == 100
    with pytest.raises(ContextLengthExceeded, match="prompt is 11 tokens"):
        within_limits(limits, [1] * 11, SamplingParams())
    assert within_limits(Settings(), [1] * 10_000, SamplingParams()).max_tokens is None


def test_request_ids_are_echoed_or_made_and_reach_the_audit_log(tmp_path: Path,
                                                                make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    r = client.get("/v1/models", headers={"X-Request-ID": "trace-42"})
    assert r.headers["x-request-id"] == "trace-42"
    made = client.get("/api/tags").headers["x-request-id"]
    assert len(made) == 32
    lines = [json.loads(x) for x in (tmp_path / "logs" / "audit.log").read_text().splitlines()]
    assert [x["request_id"] for x in lines] == ["trace-42", made]


def test_a_keys_own_rate_limits_replace_the_servers(tmp_path: Path, make_client: Callable[..., TestClient]) -> None:
    store = KeyStore(tmp_path)
    tight, free, default = store.create("tight", rpm=1), store.create("free", rpm=0), store.create("default")
    client = make_client(rate_rpm=3)
    assert [client.get("/v1/models", headers=bearer(tight)).status_code for _ in range(2)] == [200, 429]
    assert {client.get("/v1/models", headers=bearer(free)).status_code for _ in range(6)} == {200}
    assert [client.get("/v1/models", headers=bearer(default)).status_code for _ in range(4)] == [200, 200, 200, 429]


def test_a_key_with_a_limit_is_limited_on_a_server_without_one(tmp_path: Path,
                                                               make_client: Callable[..., TestClient]) -> None:
    key = KeyStore(tmp_path).create("tight", rpm=2)
    client = make_client()
    assert [client.get("/api/tags", headers=bearer(key)).status_code for _ in range(3)] == [200, 200, 429]
