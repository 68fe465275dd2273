"""Structured output through real clients on a live server: instructor (JSON, JSON_SCHEMA and TOOLS
modes) and langchain-openai (invoke, stream, bind_tools, with_structured_output by json_schema and by
function calling), with a pydantic model whose ``Field(ge=0)`` becomes ``"minimum": 0``. Where lokal
holds the schema (json_schema, a forced tool call) the grammar enforces it, bound included; in
instructor's JSON mode the schema is only prose in the prompt, so that test uses qwen2.5-coder,
which follows it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import instructor
import openai
import pytest
from langchain_core.messages import AIMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from tests.integration.conftest import LiveServer

pytestmark = pytest.mark.slow

MODEL = "smollm2:135m"
CODER = "qwen2.5-coder:0.5b"
ASK = "I bought 3 apples at the market. Extract the item and how many."


class Item(BaseModel):
    name: str = Field(max_length=24)
    count: int = Field(ge=0)


@pytest.fixture(scope="module")
def live(model_home: Path) -> Iterator[LiveServer]:
    """smollm2 preloaded; qwen2.5-coder (pulled once into the shared test home) loaded on first use."""
    from lokal.store.model_store import ModelStore
    from lokal.store.pull import pull_model

    pull_model(ModelStore(model_home), CODER)
    server = LiveServer(model_home, "--model", MODEL, "--parallel", "2", "--ctx-size", "2048", "--keep-alive", "-1")
    yield server
    server.stop()


def instructor_client(live: LiveServer, mode: instructor.Mode) -> instructor.Instructor:
    return instructor.from_openai(openai.OpenAI(base_url=live.url + "/v1", api_key="x", max_retries=0, timeout=300),
                                  mode=mode)


def test_schema_carries_the_bound() -> None:
    assert Item.model_json_schema()["properties"]["count"]["minimum"] == 0


@pytest.mark.parametrize("mode", [instructor.Mode.TOOLS, instructor.Mode.JSON_SCHEMA])
def test_instructor_modes_lokal_enforces_return_a_valid_item(live: LiveServer, mode: instructor.Mode) -> None:
    client = instructor_client(live, mode)
    for seed in range(3):  # sampled too: whatever the model writes, the grammar keeps it valid
        item = client.chat.completions.create(model=MODEL, response_model=Item, max_retries=0, max_tokens=80,
                                              temperature=1.0, seed=seed, messages=[{"role": "user", "content": ASK}])
        assert isinstance(item, Item) and item.count >= 0


def test_instructor_json_mode_returns_a_valid_item(live: LiveServer) -> None:
    client = instructor_client(live, instructor.Mode.JSON)
    item = client.chat.completions.create(model=CODER, response_model=Item, max_retries=1, max_tokens=80,
                                          temperature=0, messages=[{"role": "user", "content": ASK}])
    assert isinstance(item, Item) and item.count >= 0 and "apple" in item.name.lower()


@pytest.fixture(scope="module")
def chat(live: LiveServer) -> ChatOpenAI:
    return ChatOpenAI(model=MODEL, base_url=live.url + "/v1", api_key="x", temperature=0,  # type: ignore[arg-type]
                      max_tokens=80, max_retries=0, timeout=300)


def test_langchain_invoke_and_stream(chat: ChatOpenAI) -> None:
    answer = chat.invoke("Say hello in one word.")
    assert isinstance(answer, AIMessage) and isinstance(answer.content, str) and answer.content
    streamed = "".join(str(chunk.content) for chunk in chat.stream("Say hello in one word."))
    assert streamed == answer.content  # greedy: the stream is the same answer


def test_langchain_bind_tools_auto_accepts_the_bounded_schema(chat: ChatOpenAI) -> None:
    answer = chat.bind_tools([Item]).invoke(ASK)  # tool_choice absent: no grammar, no refusal for "minimum"
    assert isinstance(answer, AIMessage)
    for call in answer.tool_calls:  # whatever the model does on its own, a parsed call is well-formed
        assert call["name"] == "Item"


def test_langchain_bind_tools_forced_call_validates(chat: ChatOpenAI) -> None:
    answer = chat.bind_tools([Item], tool_choice="Item").invoke(ASK)
    assert isinstance(answer, AIMessage) and [c["name"] for c in answer.tool_calls] == ["Item"]
    assert Item.model_validate(answer.tool_calls[0]["args"]).count >= 0


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_with_structured_output_validates(chat: ChatOpenAI, method: str) -> None:
    item = chat.with_structured_output(Item, method=method).invoke(ASK)  # type: ignore[arg-type]
    assert isinstance(item, Item) and item.count >= 0
