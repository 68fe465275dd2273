"""Under load: many concurrent streams, client disconnects, and a full queue."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from tests.integration.conftest import LiveServer

pytestmark = pytest.mark.slow
MODEL = "smollm2:135m"


def health(url: str) -> dict:
    return httpx.get(url + "/health", timeout=10).json()["loaded"][0]


def test_sixteen_concurrent_streams_match_sequential_answers(server):
    prompts = [f"Write one sentence about the number {i}." for i in range(16)]
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=300)

    async def ask(p: str) -> str:
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": p}], temperature=0, max_tokens=24, stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def main() -> tuple[list[str], list[str]]:
        together = await asyncio.gather(*(ask(p) for p in prompts))
        alone = [await ask(p) for p in prompts]
        return list(together), alone

    together, alone = asyncio.run(main())
    assert together == alone


def test_client_disconnect_frees_the_slot_within_a_step(model_home):
    live = LiveServer(model_home, "--model", MODEL, "--parallel", "1", "--ctx-size", "2048")
    try:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a very long story."}],
                "stream": True, "max_tokens": 1500, "ignore_eos": True}
        with httpx.stream("POST", live.url + "/v1/chat/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            for _ in range(5):
                next(lines)
            assert health(live.url)["running"] == 1
        deadline = time.monotonic() + 5
        while health(live.url)["running"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert health(live.url)["running"] == 0
        # The single slot serves the next request at once instead of finishing 1,500 tokens first.
        start = time.monotonic()
        r = httpx.post(live.url + "/v1/chat/completions", timeout=60,
                       json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        assert r.status_code == 200 and time.monotonic() - start < 5
        # A non-streaming client that gives up is noticed too.
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(live.url + "/v1/chat/completions", json={**body, "stream": False}, timeout=1.5)
        deadline = time.monotonic() + 5
        while health(live.url)["running"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert health(live.url)["running"] == 0
    finally:
        live.stop()


def test_queue_full_answers_503_with_retry_after(model_home):
    live = LiveServer(model_home, "--model", MODEL, "--parallel", "1", "--max-queue", "1", "--ctx-size", "1024")
    try:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a story."}],
                "max_tokens": 60, "ignore_eos": True}

        async def main() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=live.url, timeout=300) as c:
                return await asyncio.gather(*(c.post("/v1/chat/completions", json=body) for _ in range(5)))

        responses = asyncio.run(main())
        codes = sorted(r.status_code for r in responses)
        assert codes == [200, 200, 503, 503, 503]  # one running, one queued, the rest refused
        busy = [r for r in responses if r.status_code == 503]
        assert busy[0].headers["retry-after"].isdigit()
        assert busy[0].json()["error"]["code"] == "server_busy"
    finally:
        live.stop()


def test_cached_tokens_reported_for_a_shared_system_prompt(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)
    system = "You are a concise assistant for a hardware store. " * 25
    answers, cached = [], []
    for q in ("Do you sell hammers?", "Do you sell hammers?"):
        r = client.chat.completions.create(
            model=MODEL, messages=[{"role": "system", "content": system}, {"role": "user", "content": q}],
            temperature=0, max_tokens=16,
        )
        answers.append(r.choices[0].message.content)
        cached.append(r.usage.prompt_tokens_details.cached_tokens)
    assert cached[1] >= r.usage.prompt_tokens - 1 > 200
    assert answers[0] == answers[1]
