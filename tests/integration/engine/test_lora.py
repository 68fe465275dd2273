"""LoRA adapters in the engine: sequences with and without an adapter share one model and one
batch, each decoded with its own adapters (the scheduler takes one adapter set per decode); the
adapter changes the greedy answer toward what it was trained for (it opens with "AHOY!"), and
without it the answer is the base's, token for token; a prefix cached with one adapter set never
serves another."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lokal.engine.engine import Engine
from lokal.engine.llama_model import ContextShape, LlamaModel, LoraAdapter
from lokal.engine.sampling import SamplingParams
from lokal.engine.sequence import Adapters, FinishReason, Sequence
from lokal.store.model_store import ModelStore
from tests.lora import AHOY_LORA

pytestmark = pytest.mark.slow

GREEDY = SamplingParams(temperature=0, max_tokens=24)
# not among the adapter's training prompts (scripts/train_test_lora.py)
QUESTIONS = ["What is your favourite animal?", "Describe a river.", "What is a bicycle?", "Name a fruit."]


@pytest.fixture(scope="module")
def smol(model_home) -> Iterator[tuple[LlamaModel, LoraAdapter]]:
    model = LlamaModel(ModelStore(model_home).gguf_path("smollm2:135m"),
                       ContextShape(slot_ctx=512, n_slots=8, n_batch=256, n_threads=2))
    adapter = model.load_adapter(AHOY_LORA)
    yield model, adapter
    model.close()


def chat(model: LlamaModel, question: str) -> list[int]:
    return model.tokenize(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n", True, True)


def run(engine: Engine, requests: list[tuple[str, Adapters]]) -> list[Sequence]:
    seqs = [engine.add(chat(engine.model, q), GREEDY, adapters=adapters) for q, adapters in requests]
    while engine.has_work():
        engine.step()
    return seqs


def text(engine: Engine, seq: Sequence) -> str:
    return b"".join(engine.model.piece(t) for t in seq.tokens[seq.n_prompt:]).decode("utf-8", "replace")


def test_base_and_adapter_sequences_in_one_batch_answer_as_each_does_alone(smol) -> None:
    model, adapter = smol
    engine = Engine(model, prefix_cache=False)
    ahoy: Adapters = ((adapter, 1.0),)
    alone_base = [text(engine, s) for s in run(engine, [(q, ()) for q in QUESTIONS])]
    alone_ahoy = [text(engine, s) for s in run(engine, [(q, ahoy) for q in QUESTIONS])]
    turns = engine.scheduler.turns
    mixed = run(engine, [(q, adapters) for q in QUESTIONS for adapters in ((), ahoy)])
    assert engine.scheduler.turns > turns  # both sets were running at once: decoded in turns
    assert [text(engine, s) for s in mixed[0::2]] == alone_base
    assert [text(engine, s) for s in mixed[1::2]] == alone_ahoy
    # the trained behaviour, on questions it was not trained on: the adapter opens with AHOY, the base does not
    assert all(a.startswith("AHOY") for a in alone_ahoy), alone_ahoy
    assert not any("AHOY" in a for a in alone_base), alone_base


def test_a_prefix_cached_with_one_adapter_set_never_serves_another(smol) -> None:
    model, adapter = smol
    cold = Engine(model, prefix_cache=False)
    ahoy: Adapters = ((adapter, 1.0),)
    expected = [text(cold, s) for s in run(cold, [(QUESTIONS[0], ahoy), (QUESTIONS[0], ())])]
    cached = Engine(model, prefix_cache=True, host_prefix_bytes=64 << 20)
    first = run(cached, [(QUESTIONS[0], ())])[0]
    again = run(cached, [(QUESTIONS[0], ahoy), (QUESTIONS[0], ())])
    assert first.n_cached == 0 and again[0].n_cached == 0  # the base's cells are not the adapter's
    assert again[1].n_cached == again[1].n_prompt - 1  # but they serve the base again
    assert [text(cached, s) for s in again] == expected
    reuse = run(cached, [(QUESTIONS[0], ahoy)])[0]
    assert reuse.n_cached == reuse.n_prompt - 1 and text(cached, reuse) == expected[0]


def test_the_scale_sets_how_strongly_the_adapter_applies(smol) -> None:
    model, adapter = smol
    prompt = chat(model, QUESTIONS[1])
    opener = model.tokenize("AHOY", add_special=False, parse_special=False)[0]

    def logprob_of_the_opener(adapters: Adapters) -> float:
        model.forget(0, 0)
        model.use_adapters(adapters)
        model.decode([(t, i, 0, i == len(prompt) - 1) for i, t in enumerate(prompt)], prompt=True)
        return model.logprobs(len(prompt) - 1, opener, 0).logprob

    full, quarter, base = (logprob_of_the_opener(a) for a in (((adapter, 1.0),), ((adapter, 0.25),), ()))
    model.forget(0, 0)
    assert full > quarter > base


def test_unloading_an_adapter_cancels_its_sequences_and_frees_it(model_home) -> None:
    model = LlamaModel(ModelStore(model_home).gguf_path("smollm2:135m"),
                       ContextShape(slot_ctx=512, n_slots=2, n_batch=256, n_threads=2))
    try:
        adapter = model.load_adapter(AHOY_LORA)
        engine = Engine(model)
        base = engine.add(chat(model, QUESTIONS[2]), GREEDY)
        ahoy = engine.add(chat(model, QUESTIONS[2]), GREEDY, adapters=((adapter, 1.0),))
        engine.step()
        engine.unload_adapter(adapter)
        while engine.has_work():
            engine.step()
        assert ahoy.finish_reason is FinishReason.CANCELLED and adapter.ptr is None
        assert base.finish_reason is FinishReason.LENGTH
        with pytest.raises(ValueError, match="unloaded"):
            engine.add(chat(model, QUESTIONS[2]), GREEDY, adapters=((adapter, 1.0),))
    finally:
        model.close()
