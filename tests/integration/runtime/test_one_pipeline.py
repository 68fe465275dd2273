"""One request pipeline, seen from outside: one option vocabulary with one stated limit on every
surface, one memory figure on every page, and the monitor's figures equal /metrics'."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest
from openai import BadRequestError, OpenAI
from prometheus_client.parser import text_string_to_metric_families

from lokal.options import MAX_STOP_STRINGS
from tests.integration.conftest import LiveServer

pytestmark = pytest.mark.slow
MODEL = "smollm2:135m"
GREEDY = {"temperature": 0, "max_tokens": 8}


@pytest.fixture(scope="module")
def live(model_home: Path) -> Iterator[LiveServer]:
    server = LiveServer(model_home, "--model", MODEL, "--parallel", "2", "--ctx-size", "1024", "--keep-alive", "-1")
    yield server
    server.stop()


def stops(n: int) -> list[str]:
    return [f"<never-{i}>" for i in range(n)]


def test_a_model_created_with_20_stop_strings_answers_on_every_surface(live: LiveServer, tmp_path: Path) -> None:
    modelfile = "FROM smollm2:135m\n" + "".join(f'PARAMETER stop "{s}"\n' for s in stops(20))
    r = httpx.post(f"{live.url}/api/create", json={"model": "stops20:latest", "modelfile": modelfile,
                                                   "stream": False}, timeout=120)
    assert r.status_code == 200, r.text
    shown = httpx.post(f"{live.url}/api/show", json={"model": "stops20:latest"}, timeout=30).json()
    assert shown["parameters"].count("stop") == 20
    client = OpenAI(base_url=f"{live.url}/v1", api_key="unused")
    chat = client.chat.completions.create(model="stops20:latest", messages=[{"role": "user", "content": "Hi"}],
                                          **GREEDY)  # type: ignore[arg-type]
    assert chat.choices[0].message.content
    answer = ollama.Client(host=live.url).generate(model="stops20:latest", prompt="Hi", options={"num_predict": 8})
    assert answer.response and answer.eval_count == 8 or answer.done_reason == "stop"


def test_one_stop_string_limit_is_stated_on_every_surface(live: LiveServer) -> None:
    too_many = stops(MAX_STOP_STRINGS + 1)
    limit = f"at most {MAX_STOP_STRINGS} stop strings"
    modelfile = "FROM smollm2:135m\n" + "".join(f'PARAMETER stop "{s}"\n' for s in too_many)
    for body in ({"model": "toomany:latest", "modelfile": modelfile, "stream": False},
                 {"model": "toomany:latest", "from": MODEL, "parameters": {"stop": too_many}, "stream": False}):
        r = httpx.post(f"{live.url}/api/create", json=body, timeout=60)
        assert r.status_code == 400 and f"{MAX_STOP_STRINGS} stop strings" in r.json()["error"], r.text
    client = OpenAI(base_url=f"{live.url}/v1", api_key="unused")
    with pytest.raises(BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], stop=too_many,
                                       **GREEDY)  # type: ignore[arg-type]
    assert limit in str(e.value) and e.value.body["param"] == "stop"  # type: ignore[index]
    with pytest.raises(ollama.ResponseError) as oe:
        ollama.Client(host=live.url).generate(model=MODEL, prompt="Hi", options={"stop": too_many})
    assert oe.value.status_code == 400 and limit in oe.value.error and "options.stop" in oe.value.error
    ok = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                        stop=stops(MAX_STOP_STRINGS), **GREEDY)  # type: ignore[arg-type]
    assert ok.choices[0].finish_reason in ("stop", "length")


def metric_samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_monitor_and_metrics_agree_on_ttft_and_tokens_and_on_memory(live: LiveServer) -> None:
    before = metric_samples(live.url)
    done_before = httpx.get(f"{live.url}/ui/api/monitor", timeout=30).json()["requests_total"]
    client = OpenAI(base_url=f"{live.url}/v1", api_key="unused")
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Count to five."}],
                                   **GREEDY)  # type: ignore[arg-type]
    with httpx.stream("POST", f"{live.url}/api/chat", json={"model": MODEL, "options": {"num_predict": 6},
                      "messages": [{"role": "user", "content": "Say hi."}]}, timeout=60) as r:
        assert [json.loads(line) for line in r.iter_lines() if line][-1]["done"]
    deadline = time.monotonic() + 10
    while True:
        snap = httpx.get(f"{live.url}/ui/api/monitor", timeout=30).json()
        if snap["requests_total"] >= done_before + 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    after = metric_samples(live.url)
    recent = snap["recent_requests"][-2:]
    assert [r["path"] for r in recent] == ["/v1/chat/completions", "/api/chat"]

    def delta(name: str) -> float:
        key = (name, frozenset({("model", MODEL)}))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("lokal_generation_tokens_total") == sum(r["completion_tokens"] for r in recent)
    assert delta("lokal_prompt_tokens_total") == sum(r["prompt_tokens"] for r in recent)
    assert delta("lokal_time_to_first_token_seconds_count") == 2
    assert delta("lokal_time_to_first_token_seconds_sum") == pytest.approx(sum(r["ttft_s"] for r in recent))

    memory = after[("lokal_model_memory_bytes", frozenset({("model", MODEL)}))]
    [monitored] = [m for m in snap["models"] if m["name"] == MODEL]
    [ps] = [m for m in httpx.get(f"{live.url}/api/ps", timeout=30).json()["models"] if m["name"] == MODEL]
    [page] = [m for m in httpx.get(f"{live.url}/ui/api/models", timeout=30).json()["models"] if m["name"] == MODEL]
    assert memory == monitored["memory_bytes"] == ps["size"] == page["needed_bytes"] > 50_000_000
    assert snap["machine"]["process_rss"] > 50_000_000  # measured, beside the estimate
