"""The shared KV pool (``ContextShape.kv_pool == "shared"``): sequences take cells as they grow, more
of them fit than fixed slots hold, and when the pool runs out the newest is preempted (its cells
dropped, its tokens read again later) instead of anyone failing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lokal.engine.engine import Engine
from lokal.engine.llama_model import ContextShape, LlamaModel, kernel_modes
from lokal.engine.sampling import SamplingParams
from lokal.engine.sequence import FinishReason, Sequence
from lokal.store.model_store import ModelStore

pytestmark = pytest.mark.slow

TOPICS = ["the sea", "a cat", "mountains", "rain", "coffee", "trains", "the moon", "bread", "music", "winter",
          "a garden", "chess", "rivers", "a library", "bicycles", "the desert"]
GREEDY = SamplingParams(temperature=0, max_tokens=48)


def shared_model(home: Path, pool_cells: int, n_slots: int = 32) -> LlamaModel:
    shape = ContextShape(slot_ctx=512, n_slots=n_slots, n_batch=256, n_threads=2, kv_pool="shared",
                         pool_cells=pool_cells)
    return LlamaModel(ModelStore(home).gguf_path("smollm2:135m"), shape)


@pytest.fixture(scope="module")
def small_pool(model_home: Path) -> Iterator[LlamaModel]:
    m = shared_model(model_home, pool_cells=1024)
    yield m
    m.close()


def prompts(model: LlamaModel, n: int) -> list[list[int]]:
    return [model.tokenize(f"<|im_start|>user\nWrite a short story about {TOPICS[i % len(TOPICS)]} and the "
                           f"number {i}.<|im_end|>\n<|im_start|>assistant\n", True, True) for i in range(n)]


def run(engine: Engine, batch: list[list[int]], params: SamplingParams = GREEDY,
        interrupt: int | None = None) -> tuple[list[str], list[Sequence]]:
    """Generate for every prompt together; ``interrupt``: preempt the newest sequence after that many steps."""
    seqs = [engine.add(p, params) for p in batch]
    texts: dict[int, list[str]] = {s.id: [] for s in seqs}
    steps = 0
    while engine.has_work():
        for seq, delta in engine.step():
            assert delta.error is None, delta.error
            texts[seq.id].append(delta.text)
        steps += 1
        if steps == interrupt:
            newest = engine.scheduler.newest()
            assert newest is not None
            engine._preempt(newest)
    return ["".join(texts[s.id]) for s in seqs], seqs


@pytest.mark.parametrize("host_bytes", [0, 64 * 2**20], ids=["recomputed", "swapped"])
def test_32_requests_whose_contexts_fixed_slots_could_not_hold_all_complete(
    small_pool: LlamaModel, host_bytes: int
) -> None:
    # 32 sequences of ~80 tokens each need ~2,600 cells; the pool has 1,024 (32 fixed slots: 32 cells each).
    engine = Engine(small_pool, prefix_cache=True, host_prefix_bytes=host_bytes)
    texts, seqs = run(engine, prompts(small_pool, 32))
    assert all(s.finish_reason is FinishReason.LENGTH and s.n_generated == GREEDY.max_tokens for s in seqs)
    assert all(texts), "every request produced text"
    stats = engine.stats()
    assert stats.preemptions > 0 and stats.preemptions == sum(s.preemptions for s in seqs)
    assert engine.n_swapped == (stats.preemptions if host_bytes else 0)
    assert stats.kv_pool == "shared" and stats.kv_cells_total == 1024
    assert stats.kv_cells_used <= 1024
    for text, seq in zip(texts, seqs, strict=True):  # nothing lost or repeated across a preemption
        assert text == b"".join(small_pool.piece(t) for t in seq.tokens[seq.n_prompt:]).decode("utf-8", "replace")


@pytest.mark.skipif(kernel_modes() is None, reason="needs lokal's llama.cpp build (scripts/install.sh)")
@pytest.mark.parametrize("params", [GREEDY, SamplingParams(temperature=0.9, seed=11, max_tokens=48)],
                         ids=["greedy", "seeded"])
@pytest.mark.parametrize("host_bytes", [0, 64 * 2**20], ids=["recomputed", "swapped"])
def test_a_preempted_sequence_continues_exactly_as_if_it_never_was(
    model_home: Path, params: SamplingParams, host_bytes: int
) -> None:
    # Recomputed: its prompt is read again as a prompt and its generated tokens as generated ones, so
    # its cells are the same bits. Swapped: its cells come back from host memory. Either way its
    # sampler (random state, penalties) carries on.
    m = shared_model(model_home, pool_cells=2048, n_slots=4)
    try:
        engine = Engine(m, prefix_cache=bool(host_bytes), host_prefix_bytes=host_bytes)
        (prompt,) = prompts(m, 1)
        (straight,), _ = run(engine, [prompt], params)
        (interrupted,), (seq,) = run(engine, [prompt], params, interrupt=20)
        assert seq.preemptions == 1
        assert engine.n_swapped == (1 if host_bytes else 0)
        assert interrupted == straight
    finally:
        m.close()


def test_a_request_served_alone_gets_the_same_answer_from_either_pool(model_home: Path) -> None:
    # Alone, a sequence's cells lie in position order from the first cell, as in its own slot. Under
    # load they interleave with other sequences' and may fall below its earlier ones, which changes
    # how attention rounds: answers may then change with load (measured in docs/engine.md).
    store = ModelStore(model_home)
    per_slot = LlamaModel(store.gguf_path("smollm2:135m"),
                          ContextShape(slot_ctx=512, n_slots=2, n_batch=256, n_threads=2))
    shared = shared_model(model_home, pool_cells=1024, n_slots=2)
    try:
        batch = prompts(shared, 4)
        a = [run(Engine(per_slot, prefix_cache=False), [p])[0][0] for p in batch]
        b = [run(Engine(shared, prefix_cache=False), [p])[0][0] for p in batch]
        assert a == b
    finally:
        per_slot.close()
        shared.close()
