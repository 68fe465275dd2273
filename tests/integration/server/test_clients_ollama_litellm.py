"""Real clients on lokal's Ollama and OpenAI surfaces, on loopback with the real models: litellm
through its ``openai/``, ``ollama/`` and ``ollama_chat/`` providers (the ollama ones send JSON
without a content type), and langchain-ollama's ChatOllama (invoke, stream, bind_tools,
with_structured_output)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from tests.integration.conftest import LiveServer

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm must never fetch its price list

import litellm  # noqa: E402
from langchain_core.messages import AIMessage, AIMessageChunk  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langchain_ollama import ChatOllama  # noqa: E402

pytestmark = pytest.mark.slow

MODEL = "smollm2:135m"
QWEN = "qwen2.5-coder:0.5b"
ASK = [{"role": "user", "content": "Name one colour of the rainbow."}]


# ---- JSON without its content type (curl -d) --------------------------------------------------

@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded"])
def test_curl_d_bodies_are_answered_on_both_apis(server: LiveServer, content_type: str | None) -> None:
    import json

    import httpx

    headers = {"Content-Type": content_type} if content_type else {}
    body = {"model": MODEL, "prompt": "hi", "stream": False, "options": {"num_predict": 4}}
    r = httpx.post(server.url + "/api/generate", content=json.dumps(body), headers=headers, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["done"] is True and r.json()["eval_count"] > 0
    body = {"model": MODEL, "messages": ASK, "max_tokens": 4}
    r = httpx.post(server.url + "/v1/chat/completions", content=json.dumps(body), headers=headers, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] > 0


# ---- litellm ---------------------------------------------------------------------------------

@pytest.mark.parametrize("provider", ["openai", "ollama", "ollama_chat"])
def test_litellm_completes_through_each_provider(server: LiveServer, provider: str) -> None:
    base = server.url + "/v1" if provider == "openai" else server.url
    r = litellm.completion(model=f"{provider}/{MODEL}", api_base=base, api_key="unused", messages=ASK,
                           max_tokens=8, temperature=0, timeout=120)
    text = r.choices[0].message.content  # type: ignore[union-attr]
    assert isinstance(text, str) and text.strip()
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 8  # type: ignore[attr-defined]


@pytest.mark.parametrize("provider", ["openai", "ollama", "ollama_chat"])
def test_litellm_streams_through_each_provider(server: LiveServer, provider: str) -> None:
    base = server.url + "/v1" if provider == "openai" else server.url
    chunks = list(litellm.completion(model=f"{provider}/{MODEL}", api_base=base, api_key="unused", messages=ASK,
                                     max_tokens=8, temperature=0, stream=True, timeout=120))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)  # type: ignore[union-attr]
    assert len(chunks) > 1 and text.strip()


def test_litellm_errors_come_back_as_litellm_errors(server: LiveServer) -> None:
    with pytest.raises(litellm.exceptions.NotFoundError) as e:
        litellm.completion(model="ollama_chat/no-such-model:1b", api_base=server.url, messages=ASK, max_tokens=4,
                           timeout=60)
    assert "not found" in str(e.value)


# ---- langchain-ollama ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chat(server: LiveServer) -> ChatOllama:
    return ChatOllama(model=MODEL, base_url=server.url, temperature=0, num_predict=8)


def test_chat_ollama_invokes(chat: ChatOllama) -> None:
    msg = chat.invoke("Name one colour of the rainbow.")
    assert isinstance(msg, AIMessage) and isinstance(msg.content, str) and msg.content.strip()
    assert msg.usage_metadata is not None and msg.usage_metadata["output_tokens"] <= 8
    assert msg.response_metadata["done_reason"] in ("stop", "length")


def test_chat_ollama_streams(chat: ChatOllama) -> None:
    chunks = list(chat.stream("Count from one to five."))
    assert len(chunks) > 1 and all(isinstance(c, AIMessageChunk) for c in chunks)
    assert "".join(str(c.content) for c in chunks).strip()


class City(BaseModel):
    """A city and its country (no numeric bounds: those are another part of the issue)."""

    name: str = Field(max_length=24)
    country: str = Field(max_length=24)


def test_chat_ollama_with_structured_output_validates(server: LiveServer) -> None:
    llm = ChatOllama(model=MODEL, base_url=server.url, temperature=0, num_predict=60)
    city = llm.with_structured_output(City, method="json_schema").invoke("Paris is in France. Give the city.")
    assert isinstance(city, City) and city.name and city.country


@pytest.fixture(scope="module")
def qwen(model_home: Path) -> Iterator[LiveServer]:
    """qwen2.5-coder:0.5b, whose own template calls tools (smollm2 does not reliably)."""
    from lokal.store.model_store import ModelStore
    from lokal.store.pull import pull_model

    pull_model(ModelStore(model_home), QWEN)  # once per test home, shared with other tests
    live = LiveServer(model_home, "--model", QWEN, "--parallel", "1", "--ctx-size", "2048", "--keep-alive", "-1")
    yield live
    live.stop()


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"It is sunny in {city}."


def test_chat_ollama_bind_tools_round_trip(qwen: LiveServer) -> None:
    llm = ChatOllama(model=QWEN, base_url=qwen.url, temperature=0, num_predict=60).bind_tools([get_weather])
    question = ("human", "What is the weather in Paris? Use the tool.")
    first = llm.invoke([question])
    assert isinstance(first, AIMessage) and first.tool_calls, first
    call = first.tool_calls[0]
    assert call["name"] == "get_weather" and "paris" in str(call["args"].get("city", "")).lower()
    result = get_weather.invoke(call)  # a ToolMessage answering that call
    second = llm.invoke([question, first, result])
    assert isinstance(second.content, str) and second.content.strip()
