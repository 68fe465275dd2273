"""Tool calling on a live server with the official clients: forced calls validate, streams
reassemble, results go back into the conversation."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import ollama
import openai
import pytest

pytestmark = pytest.mark.slow

MODELS = ["smollm2:135m", "gemma3:270m"]
WEATHER_ARGS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 24}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
ADD_ARGS = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"], "additionalProperties": False}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                      "parameters": WEATHER_ARGS}},
    {"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": ADD_ARGS}},
]
SCHEMAS = {"get_weather": WEATHER_ARGS, "add": ADD_ARGS}
ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]


@pytest.fixture(scope="module")
def client(tools_server) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=tools_server.url + "/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.mark.parametrize("model", MODELS)
def test_required_tool_choice_returns_a_valid_call(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="required",
                                       max_tokens=80, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].id.startswith("call_") and calls[0].type == "function"
    fn = calls[0].function  # type: ignore[union-attr]
    jsonschema.validate(json.loads(fn.arguments), SCHEMAS[fn.name])


@pytest.mark.parametrize("model", MODELS)
def test_named_tool_choice_calls_that_function(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is 2 plus 40?"}], tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "add"}}, max_tokens=60, temperature=0,
    )
    calls = r.choices[0].message.tool_calls or []
    assert r.choices[0].finish_reason == "tool_calls" and [c.function.name for c in calls] == ["add"]  # type: ignore[union-attr]
    jsonschema.validate(json.loads(calls[0].function.arguments), ADD_ARGS)  # type: ignore[union-attr]


@pytest.mark.parametrize("model", MODELS)
def test_streamed_call_reassembles_to_the_non_streamed_one(client: openai.OpenAI, model: str) -> None:
    kwargs: dict[str, Any] = {"model": model, "messages": ASK, "tools": TOOLS, "tool_choice": "required",
                              "max_tokens": 80, "temperature": 0, "seed": 7}
    whole = client.chat.completions.create(**kwargs).choices[0].message.tool_calls or []
    with client.chat.completions.stream(**kwargs) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    streamed = final.choices[0].message.tool_calls or []
    assert final.choices[0].finish_reason == "tool_calls"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in streamed] == [  # type: ignore[union-attr]
        (c.function.name, json.loads(c.function.arguments)) for c in whole  # type: ignore[union-attr]
    ]


def test_stream_deltas_have_openai_shape(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="smollm2:135m", messages=ASK, tools=TOOLS,
                                                 tool_choice="required", max_tokens=80, temperature=0, stream=True))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    first, rest = deltas[0], deltas[1:]
    assert first.index == 0 and first.id and first.id.startswith("call_") and first.type == "function"
    assert first.function and first.function.name and first.function.arguments == ""
    assert rest and all(d.id is None and d.function and d.function.name is None for d in rest)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("model", MODELS)
def test_round_trip_call_then_tool_result_then_answer(client: openai.OpenAI, model: str) -> None:
    first = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS,
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                           max_tokens=80, temperature=0)
    call = (first.choices[0].message.tool_calls or [])[0]
    history: list[Any] = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": call.function.name, "arguments": call.function.arguments}}]},  # type: ignore[union-attr]
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18, "sky": "sunny"})},
    ]
    final = client.chat.completions.create(model=model, messages=history, tools=TOOLS, tool_choice="none",
                                           max_tokens=40, temperature=0)
    assert final.choices[0].finish_reason in ("stop", "length")
    assert (final.choices[0].message.content or "").strip()
    assert not final.choices[0].message.tool_calls
    auto = client.chat.completions.create(model=model, messages=history, tools=TOOLS, max_tokens=40, temperature=0)
    message = auto.choices[0].message
    for c in message.tool_calls or []:  # whatever the model does, a call it makes is well-formed
        jsonschema.validate(json.loads(c.function.arguments), SCHEMAS[c.function.name])  # type: ignore[union-attr]
    assert message.content or message.tool_calls


def test_tool_with_an_unsupported_schema_feature_is_a_400(client: openai.OpenAI) -> None:
    bad = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"xs": {"type": "array", "items": {"type": "string"}, "uniqueItems": True}}}}}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="smollm2:135m", messages=ASK, tools=bad, tool_choice="required",
                                       max_tokens=5)
    assert "uniqueItems" in str(info.value)


def test_unknown_named_function_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="not in tools"):
        client.chat.completions.create(model="smollm2:135m", messages=ASK, tools=TOOLS, max_tokens=5,
                                       tool_choice={"type": "function", "function": {"name": "nope"}})


# ---- Ollama ----------------------------------------------------------------------------------

# One worked example in the history: gemma3 (greedy) then calls the tool on its own.
FEW_SHOT: list[Any] = [
    {"role": "user", "content": "What is the weather in Berlin?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": {"city": "Berlin", "unit": "celsius"}}}]},
    {"role": "tool", "content": "12 C, rain", "tool_name": "get_weather"},
    {"role": "assistant", "content": "It is 12 C and raining in Berlin."},
    {"role": "user", "content": "What is the weather in Paris?"},
]


@pytest.fixture(scope="module")
def oclient(tools_server) -> ollama.Client:  # type: ignore[no-untyped-def]
    return ollama.Client(host=tools_server.url, timeout=300)


@pytest.mark.parametrize("stream", [False, True])
def test_ollama_chat_tools_parse_a_call_with_object_arguments(oclient: ollama.Client, stream: bool) -> None:
    options = {"temperature": 0, "num_predict": 60}
    if stream:
        chunks = list(oclient.chat(model="gemma3:270m", messages=FEW_SHOT, tools=TOOLS, options=options, stream=True))
        calls = [tc for c in chunks for tc in (c.message.tool_calls or [])]
        assert chunks[-1].done
    else:
        r = oclient.chat(model="gemma3:270m", messages=FEW_SHOT, tools=TOOLS, options=options)
        calls = list(r.message.tool_calls or [])
    assert [c.function.name for c in calls] == ["get_weather"]
    assert isinstance(calls[0].function.arguments, dict) and calls[0].function.arguments.get("city") == "Paris"


def test_ollama_tool_results_go_back_into_the_conversation(oclient: ollama.Client) -> None:
    r = oclient.chat(model="smollm2:135m", messages=FEW_SHOT[:4] + [{"role": "user", "content": "Thanks!"}],
                     tools=TOOLS, options={"temperature": 0, "num_predict": 30})
    assert r.done and (r.message.content or r.message.tool_calls)


def test_ollama_bad_tools_are_a_400(tools_server) -> None:  # type: ignore[no-untyped-def]
    r = httpx.post(tools_server.url + "/api/chat", timeout=60, json={
        "model": "smollm2:135m", "stream": False, "messages": ASK,
        "tools": [{"type": "function", "function": {"name": "bad name"}}]})
    assert r.status_code == 400 and "function.name" in r.json()["error"]
