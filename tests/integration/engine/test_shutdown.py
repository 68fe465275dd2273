"""Closing an engine while a long prefill is in its step: llama.cpp's memory is freed exactly
once, by whoever is last (never under the running step), and nothing crashes or leaks."""

from __future__ import annotations

import asyncio
import time

import pytest

from lokal.engine.async_engine import AsyncEngine
from lokal.engine.engine import Engine
from lokal.engine.llama_model import ContextShape, LlamaModel
from lokal.engine.sampling import SamplingParams
from lokal.store.model_store import ModelStore

pytestmark = pytest.mark.slow


async def test_close_during_a_long_prefill_leaves_the_freeing_to_the_engine_thread(model_home) -> None:
    path = ModelStore(model_home).gguf_path("smollm2:135m")
    model = LlamaModel(path, ContextShape(slot_ctx=4096, n_slots=1, n_batch=2048, n_threads=2))
    runner = AsyncEngine(Engine(model), name="engine:shutdown-test")
    prompt = model.tokenize("The history of the sea. " * 300, add_special=True, parse_special=False)[:2000]
    submission = runner.submit(prompt, SamplingParams(temperature=0, max_tokens=4))
    deadline = time.monotonic() + 30
    while runner.stats().running == 0 and time.monotonic() < deadline:  # admitted: its prefill step runs now
        await asyncio.sleep(0.001)
    assert runner.stats().running == 1

    freed_now = runner.close(join_timeout_s=0.05)

    assert not freed_now and runner.running  # the step still runs: close() must not free under it
    assert not model.closed
    deadline = time.monotonic() + 120
    while runner.running and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not runner.running and model.closed  # freed by the thread as it left: no leak
    last = await asyncio.wait_for(anext(submission.deltas), 5)
    while last.finish_reason is None:  # the waiting client is told, not left hanging
        last = await asyncio.wait_for(anext(submission.deltas), 5)
    assert last.error == "the engine stopped"


async def test_close_of_an_idle_engine_frees_at_once(model_home) -> None:
    path = ModelStore(model_home).gguf_path("smollm2:135m")
    model = LlamaModel(path, ContextShape(slot_ctx=256, n_slots=1, n_batch=256, n_threads=2))
    runner = AsyncEngine(Engine(model))
    assert runner.close() is True and model.closed and not runner.running
