"""The official anthropic SDK against a live lokal serve with the real smollm2:135m: Messages
(create, stream, tools round trip, stop sequences, count_tokens), bad input in Anthropic's error
shape, and keys sent as x-api-key."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Any

import anthropic
import httpx
import pytest

from lokal.runtime.errors import GenerationFailed, ServerBusy
from lokal.runtime.events import Event, Failed, Queued
from lokal.server.anthropic.routes import _events
from lokal.server.errors import APIError, api_error
from tests.integration.conftest import LiveServer
from tests.integration.security.conftest import SecuredServer, lokal_cli, secured  # noqa: F401 (a fixture)

MODEL = "smollm2:135m"
T0 = {"temperature": 0}
QUESTION: list[Any] = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = {"name": "get_weather", "description": "Get the current weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture(scope="module")
def client(server: LiveServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0, timeout=120)


def sdk(body: dict[str, Any]) -> dict[str, Any]:
    """A body as the SDK takes it: since 2.x it has no temperature argument (sent as an extra)."""
    out = {k: v for k, v in body.items() if k != "temperature"}
    return {**out, "extra_body": {"temperature": body["temperature"]}} if "temperature" in body else out


def text_of(message: anthropic.types.Message) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def sse_events(url: str, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of a streamed response, read as raw server-sent events."""
    events = []
    with httpx.stream("POST", f"{url}/v1/messages", json={**body, "stream": True}, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                assert name is not None
                events.append((name, json.loads(line.removeprefix("data: "))))
                name = None
    return events


@pytest.mark.slow
def test_create_answers_in_anthropics_shape(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(model=MODEL, max_tokens=24, extra_body=T0, messages=QUESTION,
                                 metadata={"user_id": "u-1"}, extra_headers={"anthropic-version": "2023-06-01"})
    assert msg.id.startswith("msg_") and msg.type == "message" and msg.role == "assistant"
    assert msg.model == MODEL
    assert [b.type for b in msg.content] == ["text"]  # smollm2 does not think: no thinking block
    assert "Paris" in text_of(msg)
    assert msg.stop_reason in ("end_turn", "max_tokens") and msg.stop_sequence is None
    assert 0 < msg.usage.output_tokens <= 24
    assert msg.usage.input_tokens + (msg.usage.cache_read_input_tokens or 0) > 10
    assert msg.usage.cache_creation_input_tokens == 0


@pytest.mark.slow
def test_system_as_text_blocks_is_the_same_prompt_as_a_string(client: anthropic.Anthropic) -> None:
    as_text = client.messages.count_tokens(model=MODEL, system="Answer briefly.", messages=QUESTION)
    as_blocks = client.messages.count_tokens(model=MODEL, system=[{"type": "text", "text": "Answer briefly."}],
                                             messages=QUESTION)
    longer = client.messages.count_tokens(model=MODEL, system=[{"type": "text", "text": "Answer briefly."},
                                                               {"type": "text", "text": "Use one sentence."}],
                                          messages=QUESTION)
    assert as_text.input_tokens == as_blocks.input_tokens < longer.input_tokens


@pytest.mark.slow
def test_max_tokens_ends_with_stop_reason_max_tokens(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(model=MODEL, max_tokens=3, extra_body=T0,
                                 messages=[{"role": "user", "content": "Write a long story about a dragon."}])
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 3


@pytest.mark.slow
def test_stream_sends_anthropics_events_in_order_and_the_same_text(client: anthropic.Anthropic,
                                                                     server: LiveServer) -> None:
    body = {"model": MODEL, "max_tokens": 16, "temperature": 0, "messages": QUESTION}
    whole = client.messages.create(**sdk(body))  # type: ignore[call-overload]
    events = sse_events(server.url, body)
    names = [name for name, _ in events]
    assert all(data["type"] == name for name, data in events)
    assert names[:2] == ["message_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    content = [n for n in names if n != "ping"]
    assert content[1] == "content_block_start" and content.count("content_block_start") == 1
    assert set(content[2:-3]) == {"content_block_delta"}
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_") and start["content"] == [] and start["stop_reason"] is None
    deltas = [d["delta"] for n, d in events if n == "content_block_delta"]
    assert all(d["type"] == "text_delta" for d in deltas)
    assert "".join(d["text"] for d in deltas) == text_of(whole)
    final = events[-2][1]
    assert final["delta"]["stop_reason"] == whole.stop_reason
    assert final["usage"]["output_tokens"] == whole.usage.output_tokens
    # and through the SDK's own stream helper
    with client.messages.stream(**sdk(body)) as stream:  # type: ignore[arg-type]
        streamed = "".join(stream.text_stream)
        message = stream.get_final_message()
    assert streamed == text_of(whole) == text_of(message)
    assert message.usage.output_tokens == whole.usage.output_tokens
    assert message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0) == \
        whole.usage.input_tokens + (whole.usage.cache_read_input_tokens or 0)


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_a_stop_sequence_ends_the_answer_and_is_named(client: anthropic.Anthropic, stream: bool) -> None:
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 24, "temperature": 0, "messages": QUESTION}
    free = text_of(client.messages.create(**sdk(body)))
    words = free.split()
    assert len(words) >= 4, free
    stop = words[2]
    cut = free[:free.find(stop)]
    body["stop_sequences"] = ["zzzq-never", stop] if stream else [stop]
    if stream:
        with client.messages.stream(**sdk(body)) as s:
            msg = s.get_final_message()
    else:
        msg = client.messages.create(**sdk(body))
    assert text_of(msg) == cut
    assert msg.stop_reason == "stop_sequence"
    assert msg.stop_sequence == stop


@pytest.mark.slow
def test_stop_sequences_that_never_come_end_the_turn(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(model=MODEL, max_tokens=16, extra_body=T0, stop_sequences=["zzzq-never"],
                                 messages=[{"role": "user", "content": "Say hello."}])
    assert msg.stop_reason in ("end_turn", "max_tokens") and msg.stop_sequence is None


@pytest.mark.slow
@pytest.mark.parametrize("choice", [{"type": "tool", "name": "get_weather"}, {"type": "any"}], ids=["tool", "any"])
def test_tools_round_trip(client: anthropic.Anthropic, choice: dict[str, Any]) -> None:
    ask: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.messages.create(model=MODEL, max_tokens=64, extra_body=T0, tools=[WEATHER],  # type: ignore[list-item]
                                   tool_choice=choice, messages=ask)  # type: ignore[arg-type]
    assert first.stop_reason == "tool_use"
    calls = [b for b in first.content if b.type == "tool_use"]
    assert len(calls) >= 1
    call = calls[0]
    assert call.name == "get_weather" and call.id.startswith("toolu_")
    assert isinstance(call.input, dict) and isinstance(call.input["city"], str)
    history = [*ask, {"role": "assistant", "content": [b.model_dump() for b in first.content]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": c.id, "content": "18 C and sunny"}
                                            for c in calls]}]
    final = client.messages.create(model=MODEL, max_tokens=16, extra_body=T0, tools=[WEATHER],  # type: ignore[list-item]
                                   messages=history)  # type: ignore[arg-type]
    assert final.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert final.content and final.usage.output_tokens > 0
    # the tool's answer is in the prompt: more tokens than the history without it
    shorter = client.messages.count_tokens(model=MODEL, tools=[WEATHER], messages=history[:2])  # type: ignore[list-item]
    longer = client.messages.count_tokens(model=MODEL, tools=[WEATHER], messages=history)  # type: ignore[list-item]
    assert longer.input_tokens > shorter.input_tokens


@pytest.mark.slow
def test_a_streamed_tool_call_arrives_as_input_json_deltas(client: anthropic.Anthropic, server: LiveServer) -> None:
    body = {"model": MODEL, "max_tokens": 64, "temperature": 0, "tools": [WEATHER],
            "tool_choice": {"type": "tool", "name": "get_weather"},
            "messages": [{"role": "user", "content": "What is the weather in Paris?"}]}
    events = sse_events(server.url, body)
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert starts and starts[0]["type"] == "tool_use" and starts[0]["name"] == "get_weather"
    assert starts[0]["input"] == {}
    partial = "".join(d["delta"]["partial_json"] for n, d in events
                      if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta")
    assert isinstance(json.loads(partial)["city"], str)
    assert [d for n, d in events if n == "message_delta"][0]["delta"]["stop_reason"] == "tool_use"
    with client.messages.stream(**sdk(body)) as s:  # type: ignore[arg-type]
        msg = s.get_final_message()
    whole = client.messages.create(**sdk(body))  # type: ignore[call-overload]
    call, expected = next(b for b in msg.content if b.type == "tool_use"), next(
        b for b in whole.content if b.type == "tool_use")
    assert call.input == expected.input == json.loads(partial)


@pytest.mark.slow
def test_tool_choice_none_and_auto_answer_in_text(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(model=MODEL, max_tokens=16, extra_body=T0, tools=[WEATHER],  # type: ignore[list-item]
                                 tool_choice={"type": "none"}, messages=QUESTION)
    assert msg.stop_reason in ("end_turn", "max_tokens") and msg.content[0].type == "text"
    none = client.messages.count_tokens(model=MODEL, tools=[WEATHER], tool_choice={"type": "none"},  # type: ignore[list-item]
                                        messages=QUESTION)
    auto = client.messages.count_tokens(model=MODEL, tools=[WEATHER], messages=QUESTION)  # type: ignore[list-item]
    assert auto.input_tokens > none.input_tokens  # the tools are shown to the model only when it may call them


@pytest.mark.slow
def test_count_tokens_equals_the_input_of_a_real_request(client: anthropic.Anthropic) -> None:
    body: dict[str, Any] = {"model": MODEL, "system": "You are terse.", "tools": [WEATHER],
                            "messages": [{"role": "user", "content": "Tell me about Lyon, a city of France."}]}
    counted = client.messages.count_tokens(**body)
    for _ in range(2):  # the second reads most of its prompt from the prefix cache
        msg = client.messages.create(max_tokens=4, extra_body=T0, **body)
        assert msg.usage.input_tokens + (msg.usage.cache_read_input_tokens or 0) == counted.input_tokens
    assert (msg.usage.cache_read_input_tokens or 0) > 0


@pytest.mark.slow
def test_thinking_is_accepted_where_the_model_can_and_refused_where_it_cannot(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(model=MODEL, max_tokens=8, extra_body=T0, messages=QUESTION,
                                 thinking={"type": "disabled"})
    assert [b.type for b in msg.content] == ["text"]
    with pytest.raises(anthropic.BadRequestError) as exc:
        client.messages.create(model=MODEL, max_tokens=2048, messages=QUESTION,
                               thinking={"type": "enabled", "budget_tokens": 1024})
    assert exc.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "thinking" in exc.value.body["error"]["message"]  # type: ignore[index]


@pytest.mark.slow
def test_earlier_thinking_blocks_are_accepted_and_left_out(client: anthropic.Anthropic) -> None:
    plain = [*QUESTION, {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And Spain?"}]
    with_thinking = [*QUESTION, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "The user asks about France.", "signature": "sig"},
        {"type": "text", "text": "Paris."}]}, {"role": "user", "content": "And Spain?"}]
    a = client.messages.count_tokens(model=MODEL, messages=plain)  # type: ignore[arg-type]
    b = client.messages.count_tokens(model=MODEL, messages=with_thinking)  # type: ignore[arg-type]
    assert a.input_tokens == b.input_tokens


BAD_BODIES: list[tuple[str, dict[str, Any], int, str]] = [
    ("missing max_tokens", {"messages": QUESTION}, 400, "max_tokens"),
    ("empty messages", {"max_tokens": 4, "messages": []}, 400, "messages"),
    ("wrong block type", {"max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "video", "url": "x"}]}]},
     400, "video"),
    ("image block", {"max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}]},
     400, "image"),
    ("tool_result without its call", {"max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_nope", "content": "42"}]}]}, 400, "toolu_nope"),
    ("tool_use in a user turn", {"max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]}]}, 400, "tool_use"),
    ("system role", {"max_tokens": 4, "messages": [{"role": "system", "content": "hi"}]}, 400, "role"),
    ("server tool", {"max_tokens": 4, "messages": QUESTION,
                     "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, 400, "tools"),
    ("tool choice naming no tool", {"max_tokens": 4, "messages": QUESTION, "tools": [WEATHER],
                                    "tool_choice": {"type": "tool", "name": "nope"}}, 400, "nope"),
    ("tool choice any without tools", {"max_tokens": 4, "messages": QUESTION, "tool_choice": {"type": "any"}},
     400, "tool"),
    ("max_tokens 0", {"max_tokens": 0, "messages": QUESTION}, 400, "max_tokens"),
    ("temperature out of range", {"max_tokens": 4, "temperature": -1, "messages": QUESTION}, 400, "temperature"),
    ("unknown model", {"model": "no-such-model:1b", "max_tokens": 4, "messages": QUESTION}, 404, "no-such-model"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("what", "body", "status", "mention"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_input_is_a_4xx_in_anthropics_error_shape(server: LiveServer, what: str, body: dict[str, Any],
                                                      status: int, mention: str) -> None:
    kind = {400: "invalid_request_error", 404: "not_found_error"}[status]
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        if path.endswith("count_tokens") and mention in ("max_tokens", "temperature"):
            continue  # count_tokens takes no sampling fields
        r = httpx.post(f"{server.url}{path}", json={"model": MODEL, **body}, timeout=60)
        assert r.status_code == status, r.text
        error = r.json()
        assert error["type"] == "error" and set(error) == {"type", "error"}
        assert error["error"]["type"] == kind
        assert mention in error["error"]["message"]


@pytest.mark.slow
def test_the_sdk_raises_its_own_errors(client: anthropic.Anthropic, server: LiveServer) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="no-such-model:1b", max_tokens=4, messages=QUESTION)
    assert missing.value.status_code == 404
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model=MODEL, max_tokens=4, messages=[])
    r = httpx.post(f"{server.url}/v1/messages", content=b'{"model": ', timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_a_failure_mid_stream_is_an_error_event_in_anthropics_shape() -> None:
    async def failing() -> AsyncGenerator[Event, None]:
        yield Queued(position=0, load_s=0.0, prompt_tokens=7)
        yield Failed(GenerationFailed("generation failed: the engine stopped"))

    async def read() -> list[bytes]:
        return [chunk async for chunk in _events(failing(), {"id": "msg_1", "model": MODEL})]

    chunks = asyncio.run(read())
    names = [c.decode().split("\n")[0] for c in chunks]
    assert names == ["event: message_start", "event: ping", "event: error"]
    start = json.loads(chunks[0].decode().split("\n")[1].removeprefix("data: "))
    assert start["message"]["usage"]["input_tokens"] == 7
    error = json.loads(chunks[-1].decode().split("\n")[1].removeprefix("data: "))
    assert error == {"type": "error",
                     "error": {"type": "api_error", "message": "generation failed: the engine stopped"}}


def test_a_busy_server_is_anthropics_529_overloaded_and_other_apis_keep_503() -> None:
    err = api_error(ServerBusy("queue full", retry_after_s=2))
    assert err.status_for("/v1/messages") == 529
    assert err.body_for_path("/v1/messages") == {"type": "error", "error": {"type": "overloaded_error",
                                                                             "message": "queue full"}}
    assert err.status_for("/v1/chat/completions") == 503 and err.headers == {"Retry-After": "2"}
    limited = APIError(429, "slow down", type="rate_limit_error")
    assert limited.body_for_path("/v1/messages/count_tokens")["error"] == {"type": "rate_limit_error",
                                                                          "message": "slow down"}
    assert APIError(413, "too big").body_for_path("/v1/messages")["error"]["type"] == "request_too_large"  # type: ignore[index]


@pytest.mark.slow
def test_keys_are_taken_as_x_api_key_and_as_bearer(secured: SecuredServer) -> None:  # noqa: F811
    key = secured.keys["alice"]
    for good in (anthropic.Anthropic(base_url=secured.url, api_key=key, max_retries=0),
                 anthropic.Anthropic(base_url=secured.url, auth_token=key, max_retries=0)):
        msg = good.messages.create(model=MODEL, max_tokens=2, messages=QUESTION)
        assert msg.usage.output_tokens >= 1
    bad = anthropic.Anthropic(base_url=secured.url, api_key="lokal-not-a-key", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as exc:
        bad.messages.create(model=MODEL, max_tokens=2, messages=QUESTION)
    assert exc.value.status_code == 401
    assert exc.value.body == {"type": "error", "error": {"type": "authentication_error", "message": "invalid API key"}}
    r = httpx.post(f"{secured.url}/v1/messages/count_tokens", json={"model": MODEL, "messages": QUESTION})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


@pytest.mark.slow
def test_a_rate_limited_key_gets_anthropics_429(secured: SecuredServer) -> None:  # noqa: F811
    made = lokal_cli(secured.home, "keys", "create", "anthropic-one-rpm", "--rpm", "1")
    assert made.returncode == 0, made.stderr
    client = anthropic.Anthropic(base_url=secured.url, api_key=made.stdout.strip(), max_retries=0)
    assert client.messages.count_tokens(model=MODEL, messages=QUESTION).input_tokens > 0
    with pytest.raises(anthropic.RateLimitError) as exc:
        client.messages.count_tokens(model=MODEL, messages=QUESTION)
    assert exc.value.status_code == 429 and int(exc.value.response.headers["retry-after"]) >= 1
    assert exc.value.body["type"] == "error"  # type: ignore[index]
    assert exc.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
