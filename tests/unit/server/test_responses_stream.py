"""The Responses API's event stream built from the runtime's events: the order OpenAI's SDK
accumulates (a thinking model's reasoning item done before its message starts, calls after),
sequence numbers, and what is stored at the end (the final response, or a failed one)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Any

from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from lokal.engine.sequence import FinishReason, Timings, Usage
from lokal.runtime.errors import RequestTimedOut
from lokal.runtime.events import Delta, Event, Failed, Finished
from lokal.runtime.tools import ToolCall
from lokal.server.responses.routes import _events

TIMINGS = Timings(queued_s=0.0, ttft_s=0.1, total_s=0.2, decode_tps=10.0)


def _run(events: list[Event]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(SSE events as sent, responses stored) for a generation that yields ``events``."""
    saved: list[dict[str, Any]] = []

    async def stream() -> AsyncGenerator[Event, None]:
        for e in events:
            yield e

    async def save(body: dict[str, Any]) -> None:
        saved.append(json.loads(json.dumps(body)))

    async def collect() -> list[dict[str, Any]]:
        body = {"id": "resp_1", "object": "response", "created_at": 1, "status": "in_progress", "output": [],
                "model": "m", "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "usage": None}
        out = []
        async for chunk in _events(stream(), body, True, save):
            head, data = chunk.decode().split("\n", 1)
            event = json.loads(data.removeprefix("data: "))
            assert head == f"event: {event['type']}"
            out.append(event)
        return out

    return asyncio.run(collect()), saved


def test_reasoning_then_answer_then_call_in_openai_order() -> None:
    call = ToolCall("get_weather", {"city": "Oslo"})
    done = Finished(FinishReason.STOP, Usage(20, 9, 4), TIMINGS, text="", content="It rains.",
                    tool_calls=(call,), reasoning="Think.")
    sent, saved = _run([Delta("", reasoning="Thi"), Delta("", reasoning="nk."), Delta("It "), Delta("rains."), done])
    kinds = [e["type"] for e in sent]
    assert kinds == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.reasoning_text.delta", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in sent] == list(range(len(sent)))
    final = sent[-1]["response"]
    assert [o["type"] for o in final["output"]] == ["reasoning", "message", "function_call"]
    assert [e["output_index"] for e in sent if "output_index" in e and e["type"].endswith(".added")] == [0, 0, 1, 1, 2]
    assert final["usage"]["input_tokens_details"]["cached_tokens"] == 4 and saved == [final]
    # The openai SDK's own accumulator rebuilds the same response from the events.
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=[], text_format=omit)
    parse = TypeAdapter(ResponseStreamEvent).validate_python
    emitted = [out for e in sent for out in state.handle_event(parse(e))]
    rebuilt = emitted[-1].response  # type: ignore[union-attr]
    assert emitted[-1].type == "response.completed" and rebuilt.output_text == "It rains."
    assert rebuilt.output[0].content[0].text == "Think."  # type: ignore[union-attr,index]


def test_a_whole_answer_held_to_the_end_still_streams_as_one_delta() -> None:
    done = Finished(FinishReason.LENGTH, Usage(5, 3), TIMINGS, text="abc", content="abc")
    sent, saved = _run([done])
    delta = [e["delta"] for e in sent if e["type"] == "response.output_text.delta"]
    assert delta == ["abc"] and sent[-1]["type"] == "response.incomplete"
    assert saved[0]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_a_failed_generation_ends_with_response_failed_and_is_stored_failed() -> None:
    sent, saved = _run([Delta("par"), Failed(RequestTimedOut("request timed out after 1 s"))])
    assert [e["type"] for e in sent][-1] == "response.failed"
    assert "error" not in [e["type"] for e in sent]  # a timeout is the server's doing, not the request's
    assert saved[0]["status"] == "failed" and saved[0]["error"]["message"] == "request timed out after 1 s"


def test_every_item_the_events_opened_is_in_the_output_at_its_index() -> None:
    """Streamed text the final answer lacks (whitespace before a call) and thinking that comes
    after the answer started: the output lists items in the order the events gave them."""
    call = ToolCall("get_weather", {"city": "Oslo"})
    done = Finished(FinishReason.STOP, Usage(20, 9), TIMINGS, text="", content="", tool_calls=(call,),
                    reasoning="late")
    sent, saved = _run([Delta("\n"), Delta("", reasoning="late"), done])
    added = [(e["output_index"], e["item"]["type"]) for e in sent if e["type"] == "response.output_item.added"]
    output = saved[0]["output"]
    assert [(i, o["type"]) for i, o in enumerate(output)] == added == [(0, "message"), (1, "reasoning"),
                                                                          (2, "function_call")]
    assert output[0]["content"][0]["text"] == "\n" and output[2]["name"] == "get_weather"
    done_items = [e["item"]["id"] for e in sent if e["type"] == "response.output_item.done"]
    assert sorted(done_items) == sorted(o["id"] for o in output)
