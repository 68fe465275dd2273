"""The runtime as a service, in-process: generate's events in order with queue positions,
refusals before any event, tokenize/detokenize, embed, subscribers, and cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lokal.config import Settings
from lokal.engine.sequence import FinishReason
from lokal.runtime.errors import ContextLengthExceeded, InvalidRequest, ModelNotFound
from lokal.runtime.events import Delta, Event, Finished, FirstToken, GenerationRecord, Queued, Started, finished
from lokal.runtime.request import GenerateRequest, JsonOutput
from lokal.runtime.runtime import Runtime

pytestmark = pytest.mark.slow
MODEL = "smollm2:135m"


@pytest.fixture
async def runtime(model_home: Path) -> AsyncIterator[Runtime]:
    rt = Runtime(Settings(home=model_home, parallel=1, ctx_size=512, keep_alive="-1", threads=2))
    yield rt
    await rt.close()


def chat(text: str, **options: object) -> GenerateRequest:
    return GenerateRequest(model=MODEL, messages=[{"role": "user", "content": text}],
                           options={"temperature": 0, "max_tokens": 6, **options})


async def test_events_come_in_order_and_queue_positions_count_the_requests_ahead(runtime: Runtime) -> None:
    seen: list[tuple[int, Event]] = []
    runtime.subscribe(lambda record, event: seen.append((record.id, event)))
    streams = [await runtime.generate(chat(f"Say {w}.")) for w in ("one", "two", "three")]
    results = [[e async for e in s] for s in streams]
    queued = [r[0] for r in results]
    assert all(isinstance(q, Queued) for q in queued)
    positions = [q.position for q in queued if isinstance(q, Queued)]
    # One slot: the first is admitted at once (maybe before the second arrives); the third finds
    # at least the second waiting ahead of it.
    assert positions[0] == 0 and positions == sorted(positions) and positions[2] >= 1
    for events in results:
        kinds = [type(e) for e in events]
        assert kinds[:3] == [Queued, Started, FirstToken] and kinds[-1] is Finished
        assert set(kinds[3:-1]) <= {Delta}
        done = events[-1]
        assert isinstance(done, Finished) and done.usage.completion_tokens == 6 and done.reason is FinishReason.LENGTH
        assert done.text == "".join(e.text for e in events if isinstance(e, Delta))
    assert len(seen) == sum(len(r) for r in results)  # the subscriber saw every event


async def test_refusals_come_before_any_event_as_lokal_errors(runtime: Runtime) -> None:
    with pytest.raises(ModelNotFound):
        await runtime.generate(GenerateRequest(model="nope:1b", prompt="hi"))
    with pytest.raises(ContextLengthExceeded, match="num_ctx"):
        await runtime.generate(chat("A long question about the sea. " * 10, num_ctx=16))
    with pytest.raises(InvalidRequest) as bad_schema:
        await runtime.generate(GenerateRequest(model=MODEL, prompt="hi", output=JsonOutput({"not": {}}, "format")))
    assert bad_schema.value.param == "format"
    with pytest.raises(ContextLengthExceeded):
        await runtime.generate(GenerateRequest(model=MODEL, prompt=[1] * 600))
    assert runtime.status()[0].engine.running == 0  # nothing was left behind


async def test_json_output_is_json(runtime: Runtime) -> None:
    import json

    done = await finished(await runtime.generate(GenerateRequest(
        model=MODEL, messages=[{"role": "user", "content": "Give a name and an age."}],
        options={"temperature": 0, "max_tokens": 64},
        output=JsonOutput({"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}),
    )))
    assert isinstance(json.loads(done.text)["age"], int)


async def test_tokenize_detokenize_and_embed(runtime: Runtime) -> None:
    tokens = await runtime.tokenize(MODEL, "Hello world", special=False)
    assert len(tokens) >= 2 and await runtime.detokenize(MODEL, tokens) == "Hello world"
    with pytest.raises(InvalidRequest):
        await runtime.detokenize(MODEL, [10**9])
    result, dimensions, _ = await runtime.embed(MODEL, ["Hello world", tokens])
    assert dimensions > 0 and len(result.vectors) == 2 and len(result.vectors[0]) == dimensions
    assert result.vectors[0] == pytest.approx(result.vectors[1], abs=1e-5)  # the same tokens, the same vector


async def test_a_dropped_stream_frees_its_slot_and_its_hold(runtime: Runtime) -> None:
    records: list[GenerationRecord] = []
    runtime.subscribe(lambda record, event: records.append(record) if isinstance(event, Finished) else None)
    stream = await runtime.generate(chat("Count to a hundred.", max_tokens=200))
    async for event in stream:
        if isinstance(event, Delta):
            break
    await stream.aclose()
    for _ in range(100):
        if runtime.status()[0].engine.running == 0:
            break
        await asyncio.sleep(0.02)
    assert runtime.status()[0].engine.running == 0
    assert records[-1].outcome == "cancelled" and 0 < records[-1].completion_tokens < 200
    unread = await runtime.generate(chat("Count to a hundred.", max_tokens=200))
    del unread  # never read: collected, it cancels the sequence and releases the model
    for _ in range(200):
        if runtime.status()[0].engine.running == 0 and runtime.status()[0].engine.waiting == 0:
            break
        await asyncio.sleep(0.02)
    assert runtime.status()[0].engine.running == 0
    assert await runtime.unload(MODEL)  # no hold left behind


async def test_a_megabyte_prompt_is_refused_by_its_length_without_tokenizing_it(runtime: Runtime) -> None:
    import time

    await runtime.model(MODEL)
    started = time.perf_counter()
    with pytest.raises(ContextLengthExceeded, match="at least"):
        await runtime.generate(GenerateRequest(model=MODEL, prompt="word " * 1_000_000))
    with pytest.raises(ContextLengthExceeded, match="at least"):
        await runtime.generate(chat("word " * 1_000_000))
    assert time.perf_counter() - started < 1.0  # tokenizing 5 MB alone takes seconds
