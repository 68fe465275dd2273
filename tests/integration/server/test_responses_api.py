"""OpenAI's Responses API on a live server, through the official `openai` SDK and the OpenAI
Agents SDK: create, stream, stored conversations (`previous_response_id`), tools, retrieve /
delete / input_items, and refusals. The server runs with API keys, so stored responses belong
to the key that made them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai.types.responses import Response

from tests.integration.conftest import LiveServer
from tests.integration.security.conftest import lokal_cli
from tests.integration.server.test_ollama_api import own_home

pytestmark = pytest.mark.slow
MODEL = "smollm2:135m"
WEATHER = {
    "type": "function", "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}},
                   "required": ["city"], "additionalProperties": False},
}


class KeyedServer(LiveServer):
    def __init__(self, home: Path, keys: dict[str, str], *args: str) -> None:
        self.home, self.keys = home, keys
        super().__init__(home, *args)


@pytest.fixture(scope="module")
def keyed(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyedServer]:
    """smollm2 behind two API keys (alice, bob), its own home (and so its own SQLite file)."""
    home = own_home(model_home, tmp_path_factory.mktemp("responses-home"))
    keys = {}
    for name in ("alice", "bob"):
        done = lokal_cli(home, "keys", "create", name)
        assert done.returncode == 0, done.stderr
        keys[name] = done.stdout.strip()
    live = KeyedServer(home, keys, "--model", MODEL, "--parallel", "2", "--ctx-size", "1024", "--keep-alive", "-1")
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(keyed: KeyedServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=keyed.url + "/v1", api_key=keyed.keys["alice"], max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def bob(keyed: KeyedServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=keyed.url + "/v1", api_key=keyed.keys["bob"], max_retries=0, timeout=300)


def test_create_answers_text_with_instructions(client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(
        model=MODEL, input="Say hello to Ada.", instructions="You are a terse assistant.", max_output_tokens=16,
        temperature=0, metadata={"case": "hello"})
    r = Response.model_validate(raw.http_response.json())  # strictly: every field the SDK's type requires
    assert r.id.startswith("resp_") and r.object == "response" and r.model == MODEL
    assert r.status in ("completed", "incomplete") and r.output_text.strip()
    assert r.instructions == "You are a terse assistant." and r.metadata == {"case": "hello"} and r.store is True
    message = r.output[0]
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert r.usage is not None and r.usage.input_tokens > 10 and 1 <= r.usage.output_tokens <= 16
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens


def test_max_output_tokens_makes_it_incomplete(client: openai.OpenAI) -> None:
    r = client.responses.create(model=MODEL, input="Write a long story about a dragon.", max_output_tokens=3,
                                temperature=0)
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens" and r.usage and r.usage.output_tokens == 3


def test_stream_events_in_order_and_same_text_as_plain(client: openai.OpenAI) -> None:
    ask: dict[str, Any] = {"model": MODEL, "input": "Name three colors.", "max_output_tokens": 24, "temperature": 0}
    plain = client.responses.create(**ask)
    events = list(client.responses.create(**ask, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed" if plain.status == "completed" else "response.incomplete"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = next(e for e in events if e.type == "response.output_text.done")
    final = events[-1].response  # type: ignore[union-attr]
    assert deltas == done.text == final.output_text == plain.output_text and deltas.strip()
    assert final.id == events[0].response.id and final.usage.output_tokens == plain.usage.output_tokens  # type: ignore
    assert client.responses.retrieve(final.id).output_text == deltas  # a streamed response is stored too
    with client.responses.stream(**ask) as helper:  # the SDK's helper accumulates the events itself
        last = list(helper)[-1]
        assert last.type == events[-1].type and last.response.output_text == plain.output_text  # type: ignore


def test_previous_response_id_continues_from_the_cache(client: openai.OpenAI) -> None:
    first = client.responses.create(model=MODEL, input="My name is Ada. Greet me.", max_output_tokens=12,
                                    temperature=0)
    second = client.responses.create(model=MODEL, previous_response_id=first.id, input="What is my name?",
                                     max_output_tokens=12, temperature=0)
    assert second.previous_response_id == first.id and second.usage and first.usage
    # The second prompt re-renders the whole conversation; the prefix cache reads only the new turn.
    cached = second.usage.input_tokens_details.cached_tokens
    print(f"\ncontinued response: input_tokens={second.usage.input_tokens} cached_tokens={cached} "
          f"(first turn: input {first.usage.input_tokens} + output {first.usage.output_tokens})")
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert cached >= first.usage.input_tokens
    items = client.responses.input_items.list(second.id, order="asc")
    texts = [(i.type, getattr(i, "role", None), i.content[0].text) for i in items.data]  # type: ignore[union-attr]
    assert texts == [("message", "user", "My name is Ada. Greet me."),
                     ("message", "assistant", first.output_text),
                     ("message", "user", "What is my name?")]
    assert items.data[1].id == first.output[0].id and items.has_more is False


def test_tool_call_then_its_output_gets_an_answer(client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    called = client.responses.create(model=MODEL, input=ask, tools=[WEATHER], tool_choice="required",  # type: ignore
                                     max_output_tokens=48, temperature=0)
    calls = [o for o in called.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].call_id.startswith("call_")
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER["parameters"])
    assert called.tools[0].name == "get_weather" and called.tool_choice == "required"  # type: ignore[union-attr]
    result = {"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"temperature_c": 21}'}
    # Statefully, through previous_response_id ...
    answer = client.responses.create(model=MODEL, previous_response_id=called.id, input=[result],  # type: ignore
                                     tools=[WEATHER], tool_choice="none", max_output_tokens=16, temperature=0)
    assert answer.output[0].type == "message" and answer.output_text.strip()
    # ... and statelessly, every item sent back, as the Agents SDK does: the same prompt, the same answer.
    again = client.responses.create(model=MODEL, input=[*ask, calls[0].model_dump(), result], store=False,  # type: ignore
                                    tools=[WEATHER], tool_choice="none", max_output_tokens=16, temperature=0)
    assert again.output_text == answer.output_text
    assert again.usage and answer.usage and again.usage.input_tokens == answer.usage.input_tokens


def test_streamed_tool_call_arrives_as_argument_deltas(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model=MODEL, input="Weather in Oslo?", tools=[WEATHER],  # type: ignore
                                          tool_choice={"type": "function", "name": "get_weather"},
                                          max_output_tokens=48, temperature=0, stream=True))
    kinds = [e.type for e in events]
    assert "response.output_text.delta" not in kinds and kinds[-1] == "response.completed"
    pieces = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    final = events[-1].response.output[-1]  # type: ignore[union-attr]
    assert final.type == "function_call" and pieces == done.arguments == final.arguments
    jsonschema.validate(json.loads(pieces), WEATHER["parameters"])


def test_json_schema_text_format_is_enforced(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"],
              "additionalProperties": False}
    r = client.responses.create(model=MODEL, input="Ada is 36. Give her age as JSON.", max_output_tokens=24,
                                temperature=0, text={"format": {"type": "json_schema", "name": "age",
                                                                "schema": schema, "strict": True}})
    jsonschema.validate(json.loads(r.output_text), schema)
    assert r.text and r.text.format.type == "json_schema"  # type: ignore[union-attr]


def test_retrieve_list_input_items_and_delete(client: openai.OpenAI) -> None:
    items = [{"role": "developer", "content": "Answer in one word."},
             {"role": "user", "content": [{"type": "input_text", "text": "Capital of France?"}]}]
    r = client.responses.create(model=MODEL, input=items, max_output_tokens=8, temperature=0)  # type: ignore
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text and got.usage == r.usage
    listed = client.responses.input_items.list(r.id)  # newest first by default
    assert [i.role for i in listed.data] == ["user", "developer"]  # type: ignore[union-attr]
    page = client.responses.input_items.list(r.id, order="asc", limit=1)
    assert len(page.data) == 1 and page.has_more and page.first_id == page.last_id == listed.data[1].id
    rest = client.responses.input_items.list(r.id, order="asc", after=page.last_id)
    assert [i.id for i in rest.data] == [listed.data[0].id] and not rest.has_more
    assert client.responses.delete(r.id) is None
    for call in (lambda: client.responses.retrieve(r.id), lambda: client.responses.delete(r.id)):
        with pytest.raises(openai.NotFoundError):
            call()


def test_store_false_is_not_kept(client: openai.OpenAI) -> None:
    r = client.responses.create(model=MODEL, input="Hi", max_output_tokens=4, store=False)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError) as exc:
        client.responses.create(model=MODEL, input="Go on", previous_response_id=r.id, max_output_tokens=4)
    assert exc.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_another_keys_responses_do_not_exist_for_it(client: openai.OpenAI, bob: openai.OpenAI) -> None:
    mine = client.responses.create(model=MODEL, input="Secret: 42", max_output_tokens=4)
    for call in (lambda: bob.responses.retrieve(mine.id), lambda: bob.responses.input_items.list(mine.id),
                 lambda: bob.responses.delete(mine.id), lambda: bob.responses.cancel(mine.id),
                 lambda: bob.responses.create(model=MODEL, input="What was it?", previous_response_id=mine.id,
                                              max_output_tokens=4)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert client.responses.retrieve(mine.id).id == mine.id  # bob's delete did nothing


def _post(keyed: KeyedServer, body: Any, path: str = "/v1/responses") -> httpx.Response:
    headers = {"Authorization": f"Bearer {keyed.keys['alice']}"}
    if isinstance(body, str | bytes):
        return httpx.post(keyed.url + path, content=body, headers={**headers, "Content-Type": "application/json"},
                          timeout=120)
    return httpx.post(keyed.url + path, json=body, headers=headers, timeout=120)


@pytest.mark.parametrize(("body", "status", "param"), [
    ('{"model": "smollm2:135m", "input": ', 400, None),
    ({"model": MODEL, "input": 5}, 400, "input"),
    ({"model": MODEL}, 400, "input"),
    ({"model": "no-such-model:1b", "input": "hi"}, 404, "model"),
    ({"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     400, "input"),
    ({"model": MODEL, "input": [{"type": "function_call_output", "call_id": "call_nowhere", "output": "1"}]},
     400, "input"),
    ({"model": MODEL, "input": [{"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{oops"}]},
     400, "input"),
    ({"model": MODEL, "input": "hi", "tools": [{"type": "web_search"}]}, 400, "tools"),
    ({"model": MODEL, "input": "hi", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}},
     400, "tool_choice"),
    ({"model": MODEL, "input": "hi", "previous_response_id": "resp_nowhere"}, 404, "previous_response_id"),
    ({"model": MODEL, "input": "hi", "max_output_tokens": 0}, 400, "max_output_tokens"),
    ({"model": MODEL, "input": "hi", "temperature": -1}, 400, "temperature"),
    ({"model": MODEL, "input": "hi", "background": True, "stream": True}, 400, "stream"),
    ({"model": MODEL, "input": "hi", "background": True, "store": False}, 400, "background"),
    ({"model": MODEL, "input": "hi " * 1500}, 400, "input"),
    ({"model": MODEL, "input": "hi", "tools": [{"type": "function", "name": "bad name!"}]}, 400, "tools"),
    ({"model": MODEL, "input": "hi", "metadata": {"k": "v" * 513}}, 400, "metadata"),
    ({"model": MODEL, "input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, 400,
     "text.format.schema"),
])
def test_bad_requests_get_openai_errors(keyed: KeyedServer, body: Any, status: int, param: str | None) -> None:
    r = _post(keyed, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] is not None and error["param"].startswith(param), error
    if status == 404 and param == "model":
        assert error["code"] == "model_not_found"


def test_cancel_a_synchronous_response_is_refused(client: openai.OpenAI, keyed: KeyedServer) -> None:
    r = client.responses.create(model=MODEL, input="Hi", max_output_tokens=4)
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.cancel("resp_nowhere")
    assert _post(keyed, {}, f"/v1/responses/{r.id}/input_items?after=nope").status_code == 405
    got = httpx.get(f"{keyed.url}/v1/responses/{r.id}/input_items", params={"after": "msg_nowhere"},
                    headers={"Authorization": f"Bearer {keyed.keys['alice']}"})
    assert got.status_code == 400 and got.json()["error"]["param"] == "after"


def test_background_response_runs_on_and_can_be_cancelled(client: openai.OpenAI) -> None:
    quick = client.responses.create(model=MODEL, input="Say hi.", background=True, max_output_tokens=8, temperature=0)
    assert quick.background is True and quick.status in ("queued", "in_progress") and not quick.output
    deadline = time.monotonic() + 120
    while (got := client.responses.retrieve(quick.id)).status in ("queued", "in_progress"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert got.status in ("completed", "incomplete") and got.output_text and got.usage and got.usage.output_tokens
    assert client.responses.cancel(quick.id).status == got.status  # over already: returned as it is
    long = client.responses.create(model=MODEL, input="Write a long story about a dragon.", background=True,
                                   max_output_tokens=400)
    cancelled = client.responses.cancel(long.id)
    assert cancelled.status == "cancelled" and client.responses.retrieve(long.id).status == "cancelled"


def test_agents_sdk_runs_a_tool_using_agent(keyed: KeyedServer) -> None:
    from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    asked: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        asked.append(city)
        return f"It is 21 degrees and sunny in {city}."

    model = OpenAIResponsesModel(model=MODEL, openai_client=openai.AsyncOpenAI(
        base_url=keyed.url + "/v1", api_key=keyed.keys["alice"], max_retries=0, timeout=300))
    agent = Agent(name="weather", instructions="Answer weather questions with the get_weather tool.",
                  tools=[get_weather], model=model, tool_use_behavior="stop_on_first_tool",
                  model_settings=ModelSettings(tool_choice="required", temperature=0, max_tokens=48))
    # A forced call (what smollm2 can do reliably); its result is the agent's final output. Sending a
    # function_call_output back the way the SDK does (every item resent) is tested above.
    result = Runner.run_sync(agent, "What is the weather in Paris?", max_turns=2)
    assert len(asked) == 1 and result.final_output == f"It is 21 degrees and sunny in {asked[0]}."
    assert [item.type for item in result.new_items] == ["tool_call_item", "tool_call_output_item"]
    response = result.raw_responses[0]
    assert response.response_id and response.usage.input_tokens > 0 and response.usage.output_tokens > 0


def test_expired_responses_are_purged_and_share_the_ui_database(tmp_path: Path) -> None:
    from lokal.server.responses.store import ResponseStore
    from lokal.ui.conversations import ConversationStore
    from lokal.ui.database import UiDatabase

    path = tmp_path / "ui.sqlite3"
    store = ResponseStore(path, retention_s=3600)
    old = {"id": "resp_old", "created_at": time.time() - 7200, "status": "completed", "output": []}
    new = {"id": "resp_new", "created_at": time.time(), "status": "completed", "output": []}
    store.save("", old, [])
    assert store.get("resp_old", "") is None  # expired: never read back
    store.save("alice", new, [{"type": "message"}])
    assert store.get("resp_new", "alice") is not None and store.get("resp_new", "bob") is None
    chats = ConversationStore(UiDatabase(path))  # the web UI's tables live beside them in the same file
    chats.create(title="hello", model=MODEL)
    assert [c.title for c in chats.list()] == ["hello"]
    assert ResponseStore(path, retention_s=0).get("resp_new", "alice") is not None
    import sqlite3

    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT id FROM responses").fetchall() == [("resp_new",)]  # the old row is gone
