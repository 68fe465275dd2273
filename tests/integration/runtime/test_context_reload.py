"""A request's num_ctx larger than the loaded context (automatic mode) reloads the model, in
process with the real qwen2.5-coder:0.5b: the reload waits for the running request, which
finishes on the old engine untouched; a request arriving meanwhile runs on the new one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lokal.config import Settings
from lokal.runtime.events import Finished
from lokal.runtime.request import GenerateRequest
from lokal.runtime.runtime import Runtime

pytestmark = pytest.mark.slow
QWEN = "qwen2.5-coder:0.5b"


@pytest.fixture
async def runtime(model_home: Path) -> AsyncIterator[Runtime]:
    from lokal.store.model_store import ModelStore
    from lokal.store.pull import pull_model

    pull_model(ModelStore(model_home), QWEN)  # once per test home, shared with other tests
    rt = Runtime(Settings(home=model_home, parallel=1, keep_alive="-1"))
    yield rt
    await rt.close()


def ask(text: str, max_tokens: int, **options: object) -> GenerateRequest:
    return GenerateRequest(model=QWEN, messages=[{"role": "user", "content": text}],
                           options={"temperature": 0, "max_tokens": max_tokens, **options})


async def finish(stream: AsyncIterator[object]) -> Finished:
    events = [e async for e in stream]
    assert isinstance(events[-1], Finished), events[-1]
    return events[-1]


async def test_the_reload_waits_for_running_requests_and_later_ones_wait_for_it(runtime: Runtime) -> None:
    before = await runtime.get(QWEN)
    assert before.context_length == 16384  # the automatic context: under the trained 32,768
    running = await runtime.generate(ask("Count from 1 to 100, separated by commas.", 64))
    first = await anext(running)  # Queued: it holds the model
    larger = asyncio.create_task(_grow_then_finish(runtime))
    await asyncio.sleep(0.1)
    assert not larger.done()  # waiting for the running request
    later = asyncio.create_task(runtime.get(QWEN))  # arrives while the reload is pending
    await asyncio.sleep(0.1)
    assert not later.done()
    done = await finish(_rest(first, running))
    assert done.usage.completion_tokens == 64  # the old engine finished its request, whole
    assert await larger == 24576
    grown = await later
    assert grown is not before and grown.context_length == 24576  # it waited for the new model
    assert before.context_length == 16384 and [m.context_length for m in runtime.loaded()] == [24576]


async def _grow_then_finish(runtime: Runtime) -> int:
    stream = await runtime.generate(ask("Say hi.", 2, num_ctx=24576))
    await finish(stream)
    return runtime.loaded()[0].context_length


async def _rest(first: object, stream: AsyncIterator[object]) -> AsyncIterator[object]:
    yield first
    async for e in stream:
        yield e


async def test_a_modelfile_num_ctx_is_the_load_context_in_automatic_mode(model_home: Path, tmp_path: Path) -> None:
    import os
    import shutil

    from lokal.store.model_store import ModelStore

    src, dst = ModelStore(model_home), ModelStore(tmp_path)
    smol = src.get("smollm2:135m")
    dst.blobs_dir.mkdir(parents=True)
    try:
        os.link(src.blob_path(smol.digest), dst.blob_path(smol.digest))
    except OSError:
        shutil.copyfile(src.blob_path(smol.digest), dst.blob_path(smol.digest))
    dst.write_manifest(smol.model_copy(update={"name": "short:latest", "parameters": {"num_ctx": 2048}}))
    dst.write_manifest(smol.model_copy(update={"name": "long:latest", "parameters": {"num_ctx": 100_000}}))
    auto = Runtime(Settings(home=tmp_path, parallel=1))
    fixed = Runtime(Settings(home=tmp_path, parallel=1, ctx_size=1024))
    try:
        assert auto.planned_context(dst.get("short")) == 2048
        assert auto.planned_context(dst.get("long")) == 8192  # clamped to the trained length
        assert (await auto.get("short")).context_length == 2048
        assert fixed.planned_context(dst.get("short")) == 1024  # --ctx-size wins
    finally:
        await auto.close()
        await fixed.close()
