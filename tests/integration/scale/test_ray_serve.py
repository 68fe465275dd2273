"""lokal serve --ray on a real two-node Ray cluster (loopback): the same APIs through the ingress,
prefix-affine routing, and a replica killed under load."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import httpx
import ollama
import openai
import pytest

from tests.integration.conftest import LiveServer
from tests.integration.scale.conftest import RayCluster

pytestmark = pytest.mark.slow
MODEL = "smollm2:135m"


def test_openai_client_through_the_ingress_streams_and_not(ingress: LiveServer) -> None:
    client = openai.OpenAI(base_url=ingress.url + "/v1", api_key="none")
    messages = [{"role": "user", "content": "Say hello."}]
    answer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8)  # type: ignore[arg-type]
    assert answer.choices[0].message.content
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8,  # type: ignore[arg-type]
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_ollama_client_through_the_ingress_streams_and_not(ingress: LiveServer) -> None:
    client = ollama.Client(host=ingress.url)
    messages = [{"role": "user", "content": "Say hello."}]
    answer = client.chat(model=MODEL, messages=messages, options={"num_predict": 8})
    assert answer.message.content and answer.done
    parts = list(client.chat(model=MODEL, messages=messages, options={"num_predict": 8}, stream=True))
    assert "".join(p.message.content or "" for p in parts) and parts[-1].done
    assert client.generate(model=MODEL, prompt="Count: 1, 2,", options={"num_predict": 4}).response


def test_ps_and_metrics_show_the_model_once_with_both_replicas_slots(ingress: LiveServer) -> None:
    httpx.post(ingress.url + "/api/generate", json={"model": MODEL, "prompt": "Hi", "stream": False,
                                                   "options": {"num_predict": 2}}, timeout=60)
    deadline = time.monotonic() + 10  # the replicas report every second
    while time.monotonic() < deadline:
        ps = httpx.get(ingress.url + "/api/ps", timeout=10).json()["models"]
        metrics = httpx.get(ingress.url + "/metrics", timeout=10).text
        generated = _replica_lines(metrics, "lokal_replica_generation_tokens_total", MODEL)
        if f'lokal_slots{{model="{MODEL}"}} 8.0' in metrics and any(not line.endswith(" 0.0") for line in generated):
            break
        time.sleep(0.5)
    assert [m["name"] for m in ps] == [MODEL]
    assert f'lokal_slots{{model="{MODEL}"}} 8.0' in metrics  # 2 replicas x --parallel 4
    assert metrics.count(f'lokal_model_loaded{{model="{MODEL}"}}') == 1
    # and per replica: each one's series under its own replica label
    assert "lokal_replicas 2.0" in metrics
    assert len(_replica_lines(metrics, "lokal_replica_slots", MODEL)) == 2
    assert all(line.endswith(" 4.0") for line in _replica_lines(metrics, "lokal_replica_slots", MODEL))
    assert len(_replica_lines(metrics, "lokal_replica_resident_memory_bytes")) == 2
    generated = _replica_lines(metrics, "lokal_replica_generation_tokens_total", MODEL)
    assert len(generated) == 2 and sum(float(line.rsplit(" ", 1)[1]) for line in generated) > 0


def _replica_lines(metrics: str, name: str, model: str | None = None) -> list[str]:
    """The per-replica samples of one series (of one model)."""
    return [line for line in metrics.splitlines() if line.startswith(name + "{") and 'replica="' in line
            and (model is None or f'model="{model}"' in line)]


def _wait_for_replicas_holding(ingress: LiveServer, count: int) -> str:
    """/metrics once exactly ``count`` replicas report the model loaded (they report every second)."""
    deadline = time.monotonic() + 15
    while True:
        metrics = httpx.get(ingress.url + "/metrics", timeout=10).text
        if len(_replica_lines(metrics, "lokal_replica_model_loaded", MODEL)) == count or time.monotonic() > deadline:
            return metrics
        time.sleep(0.5)


def test_unload_reaches_every_replica_and_a_load_request_loads_on_every_one(ingress: LiveServer) -> None:
    """``ollama stop`` (keep_alive 0) unloads the model on both replicas, not one; Ollama's load
    request (an empty prompt) loads it on both again, so the next request is fast wherever it goes."""
    assert len(_replica_lines(_wait_for_replicas_holding(ingress, 2), "lokal_replica_model_loaded", MODEL)) == 2
    stop = httpx.post(ingress.url + "/api/generate", json={"model": MODEL, "keep_alive": 0}, timeout=60)
    assert stop.status_code == 200 and stop.json()["done_reason"] == "unload"
    assert _replica_lines(_wait_for_replicas_holding(ingress, 0), "lokal_replica_model_loaded", MODEL) == []
    assert httpx.get(ingress.url + "/api/ps", timeout=10).json()["models"] == []
    load = httpx.post(ingress.url + "/api/generate", json={"model": MODEL}, timeout=120)
    assert load.status_code == 200 and load.json()["done_reason"] == "load"
    assert len(_replica_lines(_wait_for_replicas_holding(ingress, 2), "lokal_replica_model_loaded", MODEL)) == 2
    chat_load = httpx.post(ingress.url + "/api/chat", json={"model": MODEL, "messages": []}, timeout=120)
    assert chat_load.status_code == 200 and chat_load.json()["done_reason"] == "load"


def test_count_tokens_through_the_ingress_counts_as_a_single_lokal(ingress: LiveServer, server: LiveServer) -> None:
    body = {"model": MODEL, "system": "Be brief.", "messages": [{"role": "user", "content": "Name three colours."}],
            "tools": [{"name": "paint", "description": "Paint a wall", "input_schema": {
                "type": "object", "properties": {"colour": {"type": "string"}}}}]}
    remote = httpx.post(ingress.url + "/v1/messages/count_tokens", json=body, timeout=60)
    local = httpx.post(server.url + "/v1/messages/count_tokens", json=body, timeout=60)
    assert remote.status_code == local.status_code == 200, remote.text
    assert remote.json() == local.json() and remote.json()["input_tokens"] > 10
    missing = httpx.post(ingress.url + "/v1/messages/count_tokens", json={**body, "model": "no-such-model:1b"},
                         timeout=60)
    assert missing.status_code == 404, missing.text


def test_unknown_model_is_the_same_404_as_a_single_lokal(ingress: LiveServer, server: LiveServer) -> None:
    body = {"model": "no-such-model:1b", "messages": [{"role": "user", "content": "hi"}]}
    for path in ("/v1/chat/completions", "/api/chat"):
        remote = httpx.post(ingress.url + path, json=body, timeout=30)
        local = httpx.post(server.url + path, json=body, timeout=30)
        assert remote.status_code == local.status_code == 404
        assert remote.json() == local.json()


def test_second_turns_find_their_prefix_cached_on_the_replica(ingress: LiveServer) -> None:
    """10 two-turn conversations: the second turn goes to the replica that read the first."""
    client = openai.OpenAI(base_url=ingress.url + "/v1", api_key="none")
    hits = 0
    for i in range(10):
        messages = [{"role": "system", "content": f"You are assistant number {i}. Answer briefly and kindly."},
                    {"role": "user", "content": f"Name a colour, please (conversation {i})."}]
        first = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8)  # type: ignore[arg-type]
        messages += [{"role": "assistant", "content": first.choices[0].message.content or ""},
                     {"role": "user", "content": "And another one?"}]
        second = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8)  # type: ignore[arg-type]
        details = second.usage.prompt_tokens_details if second.usage else None
        hits += bool(details and details.cached_tokens)
    print(f"prefix hits: {hits}/10")
    assert hits >= 9


async def _complete(client: httpx.AsyncClient, i: int, n: int = 1) -> str:
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"Write a long story about ship {i}."}],
            "max_tokens": 48, "n": n}
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert sorted(c["index"] for c in choices) == list(range(n))
    assert all(c["finish_reason"] in ("stop", "length") and c["message"]["content"] for c in choices)
    return "ok"


async def _stream(client: httpx.AsyncClient, i: int) -> str:
    """'done' if the stream completes, 'error' if it ends with an error event; anything else fails."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"Write a long story about tree {i}."}],
            "max_tokens": 48, "stream": True}
    finish = None
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                assert finish is not None, "[DONE] without a finish_reason"
                return "done"
            chunk = json.loads(data)
            if "error" in chunk:
                return "error"
            for choice in chunk.get("choices", []):
                finish = choice.get("finish_reason") or finish
    raise AssertionError("the stream ended silently, without [DONE] or an error event")


async def _ollama_stream(client: httpx.AsyncClient, i: int) -> str:
    """The same for an Ollama NDJSON stream: 'done' after a done line, 'error' after an error line."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"Write a long story about river {i}."}],
            "options": {"num_predict": 48}}
    async with client.stream("POST", "/api/chat", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if not line.strip():
                continue
            chunk = json.loads(line)
            if "error" in chunk:
                return "error"
            if chunk.get("done"):
                return "done"
    raise AssertionError("the Ollama stream ended silently, without done or an error line")


def test_a_replica_killed_under_load_loses_no_request(ingress: LiveServer, ray_cluster: RayCluster) -> None:
    """kill -9 one replica during 20 concurrent requests: every non-streaming one (n=1 and n=2)
    succeeds, every stream (OpenAI's SSE and Ollama's NDJSON) completes or ends with its API's error
    event, and Ray Serve brings the replica back."""
    before = ray_cluster.replica_pids()
    assert len(before) == 2, before

    async def run() -> list[str]:
        async with httpx.AsyncClient(base_url=ingress.url, timeout=120) as client:
            streams = (_stream, _ollama_stream)
            tasks = [asyncio.create_task(_complete(client, i, n=1 + i % 4 // 2) if i % 2
                                         else streams[i % 4 // 2](client, i)) for i in range(20)]
            await asyncio.sleep(1.5)
            os.kill(before[0], signal.SIGKILL)
            return await asyncio.gather(*tasks)

    outcomes = asyncio.run(run())
    print("outcomes:", {o: outcomes.count(o) for o in set(outcomes)})
    assert outcomes.count("ok") == 10
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        now = ray_cluster.replica_pids()
        if len(now) == 2 and before[0] not in now:
            break
        time.sleep(1)
    else:
        raise AssertionError(f"the killed replica did not come back: {ray_cluster.replica_pids()}")
    answer = httpx.post(ingress.url + "/api/generate", json={"model": MODEL, "prompt": "Hi", "stream": False,
                                                           "options": {"num_predict": 4}}, timeout=120)
    assert answer.status_code == 200 and answer.json()["done"]


def test_no_healthy_replica_is_503_with_retry_after_until_one_is_back(ingress: LiveServer,
                                                                      ray_cluster: RayCluster) -> None:
    """Both replicas killed at once: each request gets an answer at once, 503 with Retry-After
    (never a 500 or a hang) while none runs, 200 once Ray Serve has replaced them."""
    pids = ray_cluster.replica_pids()
    assert len(pids) == 2, pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    statuses = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        r = httpx.post(ingress.url + "/v1/chat/completions", json=body, timeout=60)
        statuses.append(r.status_code)
        if r.status_code == 200:
            break
        assert r.status_code == 503, r.text
        assert int(r.headers["retry-after"]) >= 1
        time.sleep(0.5)
    print("statuses:", {s: statuses.count(s) for s in set(statuses)})
    assert statuses[-1] == 200 and 503 in statuses
