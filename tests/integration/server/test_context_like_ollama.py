"""Context like Ollama's, against live servers with the real models: the automatic context, the
Open WebUI 0.12.4 request (36 tools, ~7k tokens) through both APIs, an over-long Ollama chat
truncated (and said so), OpenAI's 400 kept, and a request's num_ctx reloading the model larger.

The main server runs with the automatic context (no --ctx-size): that is what an Open WebUI user
gets, and the point of the change; smollm2's trained length (8,192) fits the request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.conftest import LiveServer

pytestmark = pytest.mark.slow

MODEL = "smollm2:135m"
QWEN = "qwen2.5-coder:0.5b"
FIXTURE = Path(__file__).resolve().parents[4] / "shared" / "fixtures" / "open-webui-0.12.4-chat-request.json"


@pytest.fixture(scope="module")
def auto(model_home: Path) -> Iterator[LiveServer]:
    """`lokal serve` with the automatic context and one slot (the fixture's ~7k-token prompt)."""
    live = LiveServer(model_home, "--model", MODEL, "--parallel", "1", "--keep-alive", "-1")
    yield live
    live.stop()


@pytest.fixture(scope="module")
def open_webui_request() -> dict:
    if not FIXTURE.exists():
        pytest.skip(f"{FIXTURE} is not in this checkout")
    return json.loads(FIXTURE.read_text())


def ps_context(server: LiveServer, model: str) -> int:
    running = {m["name"]: m for m in httpx.get(server.url + "/api/ps").json()["models"]}
    return int(running[model]["context_length"])


def test_the_automatic_context_is_the_models_trained_length_when_memory_allows(auto: LiveServer) -> None:
    trained = httpx.post(auto.url + "/api/show", json={"model": MODEL}).json()["model_info"]["llama.context_length"]
    assert trained == 8192
    assert ps_context(auto, MODEL) == trained  # not a flat 4,096


def test_open_webui_request_gets_an_answer_through_api_chat(auto: LiveServer, open_webui_request: dict) -> None:
    body = {**open_webui_request, "options": {"num_predict": 8, "temperature": 0}}
    with httpx.stream("POST", auto.url + "/api/chat", json=body, timeout=600) as r:
        assert r.status_code == 200, r.read()
        chunks = [json.loads(line) for line in r.iter_lines() if line]
    assert "error" not in chunks[-1], chunks[-1]
    text = "".join(c["message"].get("content", "") for c in chunks)
    calls = [call for c in chunks for call in c["message"].get("tool_calls") or []]
    assert text.strip() or calls
    done = chunks[-1]
    assert done["done"] is True and done["prompt_eval_count"] > 4096  # the whole prompt, nothing dropped
    assert "truncated_messages" not in done


def test_open_webui_request_gets_an_answer_through_the_openai_api(auto: LiveServer,
                                                                  open_webui_request: dict) -> None:
    client = openai.OpenAI(base_url=auto.url + "/v1", api_key="unused", timeout=600, max_retries=0)
    stream = client.chat.completions.create(
        model=open_webui_request["model"], messages=open_webui_request["messages"], tools=open_webui_request["tools"],
        stream=True, max_tokens=8, temperature=0, stream_options={"include_usage": True},
    )
    text, calls, usage = "", 0, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            calls += len(choice.delta.tool_calls or [])
    assert text.strip() or calls
    assert usage is not None and usage.prompt_tokens > 4096


def long_chat(turns: int, words: int) -> list[dict[str, str]]:
    """A system message, ``turns`` old exchanges of ``words`` words each, and a last question."""
    history = []
    for i in range(turns):
        history += [{"role": "user", "content": f"Question {i}: " + "tell me about the sea " * (words // 5)},
                    {"role": "assistant", "content": f"Answer {i}: " + "the sea is wide and deep " * (words // 6)}]
    return [{"role": "system", "content": "You are terse."}, *history,
            {"role": "user", "content": "What colour is the sky? One word."}]


def test_an_over_long_ollama_chat_drops_its_oldest_turns_and_says_so(auto: LiveServer) -> None:
    messages = long_chat(turns=12, words=60)  # ~2,000 tokens, in a num_ctx of 512
    body = {"model": MODEL, "messages": messages, "stream": False,
            "options": {"num_ctx": 512, "num_predict": 4, "temperature": 0}}
    r = httpx.post(auto.url + "/api/chat", json=body, timeout=120)
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["prompt_eval_count"] < 512
    dropped = done["truncated_messages"]
    assert dropped % 2 == 0 and 0 < dropped < 24  # whole turns, and not everything
    # Streaming says it in the last chunk too.
    with httpx.stream("POST", auto.url + "/api/chat", json={**body, "stream": True}, timeout=120) as s:
        chunks = [json.loads(line) for line in s.iter_lines() if line]
    assert chunks[-1]["truncated_messages"] == dropped
    assert "truncated to fit" in auto.log.read_text()  # and the server's log
    # truncate=false asks for Ollama's error instead.
    r = httpx.post(auto.url + "/api/chat", json={**body, "truncate": False}, timeout=120)
    assert r.status_code == 400 and "num_ctx" in r.json()["error"]


def test_a_chat_whose_latest_turn_alone_is_too_long_is_still_refused(auto: LiveServer) -> None:
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Summarize: " + "the sea is wide and deep " * 200}]
    r = httpx.post(auto.url + "/api/chat", json={"model": MODEL, "messages": messages, "stream": False,
                                                  "options": {"num_ctx": 256, "num_predict": 2}}, timeout=120)
    assert r.status_code == 400 and "num_ctx" in r.json()["error"]


def test_the_openai_api_keeps_its_400_for_a_chat_longer_than_the_context(auto: LiveServer) -> None:
    messages = long_chat(turns=40, words=150)  # well over 8,192 tokens
    client = openai.OpenAI(base_url=auto.url + "/v1", api_key="unused", timeout=120)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)  # type: ignore[arg-type]
    assert e.value.code == "context_length_exceeded"


# ---- a request's num_ctx ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def qwen_server(model_home: Path) -> Iterator[LiveServer]:
    """qwen2.5-coder:0.5b (trained on 32,768 tokens; automatic context 16,384) in one slot."""
    from lokal.store.model_store import ModelStore
    from lokal.store.pull import pull_model

    pull_model(ModelStore(model_home), QWEN)  # once per test home, shared with other tests
    live = LiveServer(model_home, "--model", QWEN, "--parallel", "1", "--keep-alive", "-1")
    yield live
    live.stop()


def test_a_larger_num_ctx_reloads_the_model_up_to_its_trained_length(qwen_server: LiveServer) -> None:
    assert ps_context(qwen_server, QWEN) == 16384  # the automatic ceiling, under the trained 32,768
    show = httpx.post(qwen_server.url + "/api/show", json={"model": QWEN}).json()
    assert {"completion", "tools", "insert"} <= set(show["capabilities"])

    def ask(num_ctx: int) -> dict:
        r = httpx.post(qwen_server.url + "/api/generate", timeout=300, json={
            "model": QWEN, "prompt": "Hi", "stream": False, "options": {"num_ctx": num_ctx, "num_predict": 2}})
        assert r.status_code == 200, r.text
        return r.json()

    assert ask(20000)["eval_count"] <= 2
    assert ps_context(qwen_server, QWEN) == 20000
    ask(1_000_000)  # beyond the trained length: clamped to it, as Ollama does
    assert ps_context(qwen_server, QWEN) == 32768
    ask(2048)  # a smaller one does not shrink the model back
    assert ps_context(qwen_server, QWEN) == 32768
    assert "reloading qwen2.5-coder:0.5b with a context of 20000" in qwen_server.log.read_text()
