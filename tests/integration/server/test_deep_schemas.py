"""Deeply nested JSON schemas through the real server: a 400 in each API's error shape that names the
field (response_format, tools, format), never a 500, and the server still answers afterwards.

Schemas of 50 and 200 levels go through the official clients; deeper ones (which the clients
cannot even serialize) as raw bodies, where the server's JSON parser may refuse the body itself,
which must be a 400 too. Schemas that llama-cpp-python's converter or llama.cpp's grammar parser
cannot take (a huge repetition count overflowed llama.cpp's stack and killed the process; a stray
``}`` in a pattern made the converter loop forever) are refused before they get there."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.integration.conftest import LiveServer

pytestmark = pytest.mark.slow

MODEL = "smollm2:135m"
MESSAGES = [{"role": "user", "content": "hi"}]
CLIENT_DEPTHS = [50, 200]
RAW_DEPTHS = [50, 200, 1000, 5000, 100_000]


@pytest.fixture(scope="module")
def live(model_home: Path) -> Iterator[LiveServer]:
    """Its own server: before the fix, some of these requests crashed or wedged the process."""
    server = LiveServer(model_home, "--model", MODEL, "--parallel", "2", "--ctx-size", "512", "--keep-alive", "-1")
    yield server
    server.stop()


def nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth - 1):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def nested_text(depth: int) -> str:
    """``nested(depth)`` as JSON text, built without json.dumps (which recurses)."""
    return '{"type":"object","properties":{"a":' * (depth - 1) + '{"type":"string"}' + "}}" * (depth - 1)


def tool_text(schema: str) -> str:
    return '[{"type":"function","function":{"name":"f","parameters":' + schema + "}}]"


def raw_bodies(schema: str) -> dict[str, tuple[str, str]]:
    """field -> (path, body) with ``schema`` in that field."""
    chat = f'"model":"{MODEL}","messages":{json.dumps(MESSAGES)},"stream":false'
    return {
        "response_format": ("/v1/chat/completions", "{" + chat + ',"max_tokens":2,"response_format":'
                            '{"type":"json_schema","json_schema":{"name":"x","schema":' + schema + "}}}"),
        "tools": ("/v1/chat/completions", "{" + chat + ',"max_tokens":2,"tools":' + tool_text(schema) + "}"),
        "ollama tools": ("/api/chat", "{" + chat + ',"options":{"num_predict":2},"tools":' + tool_text(schema) + "}"),
        "format": ("/api/chat", "{" + chat + ',"options":{"num_predict":2},"format":' + schema + "}"),
        "generate format": ("/api/generate", '{"model":"' + MODEL + '","prompt":"hi","stream":false,'
                            '"options":{"num_predict":2},"format":' + schema + "}"),
    }


def field_named(field: str) -> str:
    return {"ollama tools": "tools", "generate format": "format"}.get(field, field)


def assert_server_answers(live: LiveServer) -> None:
    assert httpx.get(live.url + "/health", timeout=10).status_code == 200
    r = httpx.post(live.url + "/api/generate", timeout=120, json={
        "model": MODEL, "prompt": "hi", "stream": False, "options": {"num_predict": 2}})
    assert r.status_code == 200 and r.json()["done"]


@pytest.mark.parametrize("depth", CLIENT_DEPTHS)
def test_openai_client_deep_response_format_and_tools_are_400_naming_the_field(live: LiveServer, depth: int) -> None:
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=2,  # type: ignore[arg-type]
            response_format={"type": "json_schema", "json_schema": {"name": "deep", "schema": nested(depth)}})
    error = info.value.response.json()["error"]
    assert error["param"] == "response_format" and error["code"] == "invalid_schema"
    assert "nests deeper than 32 levels" in error["message"]

    tool = {"type": "function", "function": {"name": "f", "parameters": nested(depth)}}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2, tools=[tool])  # type: ignore[arg-type,list-item]
    error = info.value.response.json()["error"]
    assert error["param"] == "tools.0.function.parameters" and error["code"] == "invalid_schema"
    assert error["message"].startswith("tools[0] (f): ") and "nests deeper" in error["message"]
    assert_server_answers(live)


@pytest.mark.parametrize("depth", CLIENT_DEPTHS)
def test_ollama_client_deep_format_and_tools_are_400_naming_the_field(live: LiveServer, depth: int) -> None:
    client = ollama.Client(host=live.url, timeout=120)
    for call in (lambda: client.chat(model=MODEL, messages=MESSAGES, format=nested(depth), options={"num_predict": 2}),
                 lambda: client.generate(model=MODEL, prompt="hi", format=nested(depth), options={"num_predict": 2})):
        with pytest.raises(ollama.ResponseError) as info:
            call()
        assert info.value.status_code == 400
        assert info.value.error.startswith("format: ") and "nests deeper than 32 levels" in info.value.error

    # The ollama client keeps only one level of a tool's parameters (its own Property model): send the body as is.
    tool = {"type": "function", "function": {"name": "f", "description": "", "parameters": nested(depth)}}
    r = httpx.post(live.url + "/api/chat", timeout=120, json={
        "model": MODEL, "messages": MESSAGES, "stream": False, "tools": [tool], "options": {"num_predict": 2}})
    assert r.status_code == 400
    assert r.json()["error"].startswith("tools[0] (f): ") and "nests deeper" in r.json()["error"]
    assert_server_answers(live)


@pytest.mark.parametrize("depth", RAW_DEPTHS)
def test_raw_deep_schema_in_every_field_is_a_400_in_the_api_shape(live: LiveServer, depth: int) -> None:
    for field, (path, body) in raw_bodies(nested_text(depth)).items():
        r = httpx.post(live.url + path, content=body, headers={"Content-Type": "application/json"}, timeout=120)
        assert r.status_code == 400, (field, r.status_code, r.text[:300])
        error = r.json()["error"]
        if path.startswith("/api/"):
            assert isinstance(error, str)
            message = error
        else:
            assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
            message = error["message"]
        if depth <= 200:  # parsed: lokal's own check names the field
            assert field_named(field) in message and "nests deeper than 32 levels" in message, (field, message)
            if not path.startswith("/api/"):
                assert error["param"].startswith(field_named(field))
    assert_server_answers(live)


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        # llama.cpp's grammar parser recursed once per count and overflowed its stack: the server died.
        ({"type": "string", "maxLength": 100_000}, "maxLength above 1000"),
        ({"type": "string", "pattern": "^a{0,100000}$"}, "pattern repetition above 1000"),
        # llama-cpp-python's converter never got past a stray } or ]: a worker thread spun forever.
        ({"type": "string", "pattern": "^a}$"}, "unescaped '}'"),
        ({"type": "string", "pattern": "^[]a]$"}, "unescaped ']'"),
    ],
)
def test_schemas_the_converter_or_llama_cpp_cannot_take_are_400(live: LiveServer, schema: dict[str, Any],
                                                                words: str) -> None:
    r = httpx.post(live.url + "/api/chat", timeout=30, json={
        "model": MODEL, "messages": MESSAGES, "stream": False, "options": {"num_predict": 2}, "format": schema})
    assert r.status_code == 400 and r.json()["error"].startswith("format: ") and words in r.json()["error"]
    r = httpx.post(live.url + "/v1/chat/completions", timeout=30, json={
        "model": MODEL, "messages": MESSAGES, "max_tokens": 2,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"
    assert r.json()["error"]["code"] == "unsupported_schema_feature" and words in r.json()["error"]["message"]
    assert_server_answers(live)


def test_deep_tool_call_arguments_in_messages_are_400(live: LiveServer) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x":' + deep + "}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "ok"}]
    r = httpx.post(live.url + "/v1/chat/completions", timeout=60,
                   json={"model": MODEL, "messages": messages, "max_tokens": 2})
    assert r.status_code == 400 and "nests deeper than" in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "messages"
    assert_server_answers(live)
