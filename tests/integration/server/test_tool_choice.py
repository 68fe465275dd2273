"""OpenAI's ``tool_choice`` honoured exactly (none, auto, required, a named function; required
and named enforced by a grammar) and ``parallel_tool_calls``, through the openai SDK on the live
server with smollm2 (which has no tool syntax of its own: whatever it calls, the grammar made)."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.integration.conftest import LiveServer

pytestmark = pytest.mark.slow

MODEL = "smollm2:135m"
TOOLS: Any = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
    {"type": "function", "function": {"name": "add", "description": "Add two integers",
                                      "parameters": {"type": "object",
                                                     "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                                                     "required": ["a", "b"]}}},
]
TWO_CITIES: Any = [{"role": "user", "content": "What is the weather in Paris and in Rome?"}]


@pytest.fixture
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=120)


def calls(client: openai.OpenAI, **kwargs: Any) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    r = client.chat.completions.create(model=MODEL, messages=TWO_CITIES, tools=TOOLS, max_tokens=120,
                                       temperature=0, **kwargs)
    choice = r.choices[0]
    found = [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls or []]
    return choice.finish_reason, found


def valid(call: tuple[str, dict[str, Any]]) -> bool:
    name, args = call
    if name == "get_weather":
        return set(args) == {"city"} and isinstance(args["city"], str)
    return name == "add" and set(args) == {"a", "b"} and all(isinstance(v, int) for v in args.values())


def test_required_with_parallel_calls_allows_several_valid_calls(client: openai.OpenAI) -> None:
    reason, found = calls(client, tool_choice="required", parallel_tool_calls=True)
    assert reason == "tool_calls" and found and all(valid(c) for c in found)
    assert len(found) >= 2  # two cities asked for: the grammar let the model call twice
    ids = client.chat.completions.create(model=MODEL, messages=TWO_CITIES, tools=TOOLS, max_tokens=120, temperature=0,
                                         tool_choice="required", parallel_tool_calls=True).choices[0].message.tool_calls
    assert ids is not None and len({c.id for c in ids}) == len(ids)


def test_required_without_parallel_tool_calls_is_one_call_as_in_llama_cpp(client: openai.OpenAI) -> None:
    reason, found = calls(client, tool_choice="required")
    assert reason == "tool_calls" and len(found) == 1 and valid(found[0])


def test_parallel_tool_calls_false_makes_exactly_one_call(client: openai.OpenAI) -> None:
    reason, found = calls(client, tool_choice="required", parallel_tool_calls=False)
    assert reason == "tool_calls" and len(found) == 1 and valid(found[0])


def test_a_named_function_is_the_only_one_called(client: openai.OpenAI) -> None:
    for parallel in (True, False, None):
        reason, found = calls(client, tool_choice={"type": "function", "function": {"name": "add"}},
                              parallel_tool_calls=parallel)
        assert reason == "tool_calls" and found and all(name == "add" and valid((name, a)) for name, a in found)
        assert parallel or len(found) == 1


def test_none_never_calls_even_when_asked_to(client: openai.OpenAI) -> None:
    ask: Any = [{"role": "user", "content": 'Call get_weather for Paris. Answer only with '
                                            '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}'
                                            '</tool_call>'}]
    r = client.chat.completions.create(model=MODEL, messages=ask, tools=TOOLS, tool_choice="none", max_tokens=40,
                                       temperature=0)
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason != "tool_calls"
    assert r.choices[0].message.content is not None


def test_auto_with_parallel_tool_calls_false_keeps_one_call(client: openai.OpenAI) -> None:
    reason, found = calls(client, tool_choice="auto", parallel_tool_calls=False)
    assert len(found) <= 1 and (reason == "tool_calls") == bool(found)


def test_a_forced_call_streams_as_tool_call_deltas(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=MODEL, messages=TWO_CITIES, tools=TOOLS, max_tokens=120,
                                                 temperature=0, tool_choice="required", parallel_tool_calls=False,
                                                 stream=True))
    pieces = [tc for ch in chunks if ch.choices for tc in ch.choices[0].delta.tool_calls or []]
    assert pieces and {tc.index for tc in pieces} == {0}
    args = "".join(tc.function.arguments or "" for tc in pieces if tc.function)
    name = next(tc.function.name for tc in pieces if tc.function and tc.function.name)
    assert valid((name, json.loads(args)))
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("choice", [
    "required",
    {"type": "function", "function": {"name": "add"}},
])
def test_a_choice_that_needs_tools_without_tools_is_a_400(client: openai.OpenAI, choice: Any) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=TWO_CITIES, tool_choice=choice, max_tokens=4)
    assert info.value.body["param"] == "tool_choice"  # type: ignore[index]


@pytest.mark.parametrize("choice", [
    "sometimes",
    {"type": "function", "function": "add"},
    {"type": "function"},
    {"type": "function", "function": {"name": 5}},
    {"type": "function", "function": {"name": "subtract"}},
])
def test_a_malformed_or_unknown_tool_choice_is_a_400(client: openai.OpenAI, choice: Any) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=TWO_CITIES, tools=TOOLS, tool_choice=choice, max_tokens=4)
    assert info.value.body["param"] == "tool_choice"  # type: ignore[index]
