"""Token logprobs (the raw distribution's, only for sequences that ask) and n > 1 groups (the
prompt read once, siblings decoding on their own) on the real engine, stepped here."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import llama_cpp as C
import numpy as np
import pytest

from lokal.engine.engine import Engine
from lokal.engine.llama_model import ContextShape, LlamaModel
from lokal.engine.sampling import SamplingParams
from lokal.engine.sequence import Delta, Sequence, TokenLogprob
from lokal.store.model_store import ModelStore

pytestmark = pytest.mark.slow

PROMPT = "<|im_start|>user\nName three colors.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def model(model_home: Path) -> Iterator[LlamaModel]:
    m = LlamaModel(ModelStore(model_home).gguf_path("smollm2:135m"),
                   ContextShape(slot_ctx=256, n_slots=4, n_batch=64, n_threads=2))
    yield m
    m.close()


@pytest.fixture
def engine(model: LlamaModel) -> Engine:
    for slot in range(model.shape.n_slots):
        model.forget(slot, 0)
    return Engine(model, prefix_cache=False)


def tokens(model: LlamaModel) -> list[int]:
    return model.tokenize(PROMPT, add_special=True, parse_special=True)


def run(engine: Engine, seqs: list[Sequence]) -> dict[int, list[Delta]]:
    engine.enqueue(seqs)
    out: dict[int, list[Delta]] = {s.id: [] for s in seqs}
    while not all(s.is_finished for s in seqs):
        for seq, delta in engine.step():
            out[seq.id].append(delta)
    return out


def text(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas)


def logprobs(deltas: list[Delta]) -> list[TokenLogprob]:
    return [lp for d in deltas for lp in d.logprobs]


def test_greedy_logprobs_are_the_top_alternative_and_a_distribution(engine: Engine, model: LlamaModel) -> None:
    seq = engine.new_sequence(tokens(model), SamplingParams(temperature=0, max_tokens=12, logprobs=5))
    deltas = run(engine, [seq])[seq.id]
    lps = logprobs(deltas)
    assert len(lps) == seq.n_generated > 4  # one per generated token, none lost to held-back text
    assert [lp.token for lp in lps] == seq.tokens[seq.n_prompt:]
    for lp in lps:
        assert lp.logprob <= 0.0
        assert len(lp.top) == 5
        assert lp.top[0] == (lp.token, lp.logprob)  # greedy picks the most likely token
        assert [p for _, p in lp.top] == sorted((p for _, p in lp.top), reverse=True)
        assert sum(math.exp(p) for _, p in lp.top) <= 1.0 + 1e-9
        assert len({t for t, _ in lp.top}) == 5


def test_the_first_logprob_is_the_log_softmax_of_the_prompts_logits(engine: Engine, model: LlamaModel) -> None:
    prompt = tokens(model)
    seq = engine.new_sequence(prompt, SamplingParams(temperature=0, max_tokens=1, logprobs=3))
    first = logprobs(run(engine, [seq])[seq.id])[0]
    # The same prompt read alone in slot 0 (prompt-mode kernels, as the engine reads prompts), its
    # last row read straight from llama.cpp.
    model.forget(0, 0)
    model.decode([(t, i, 0, i == len(prompt) - 1) for i, t in enumerate(prompt)], prompt=True)
    row = np.ctypeslib.as_array(C.llama_get_logits_ith(model._ctx, len(prompt) - 1), shape=(model.n_vocab,))
    row = row.astype(np.float64)
    log_softmax = row - np.logaddexp.reduce(row)
    model.forget(0, 0)
    assert first.token == int(row.argmax())
    assert first.logprob == pytest.approx(log_softmax[first.token], abs=1e-5)
    expected = np.argsort(-log_softmax, kind="stable")[:3]
    assert [t for t, _ in first.top] == [int(t) for t in expected]
    np.testing.assert_allclose([p for _, p in first.top], log_softmax[expected], atol=1e-5)


def test_sampled_tokens_report_their_raw_logprob_not_the_tempered_one(engine: Engine, model: LlamaModel) -> None:
    hot = SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=3, max_tokens=16, logprobs=20)
    seq = engine.new_sequence(tokens(model), hot)
    lps = logprobs(run(engine, [seq])[seq.id])
    assert lps and all(lp.logprob <= 0.0 for lp in lps)
    for lp in lps:
        listed = dict(lp.top)
        if lp.token in listed:
            assert listed[lp.token] == lp.logprob
        else:
            assert lp.logprob <= lp.top[-1][1]


def test_only_sequences_that_ask_get_logprobs(engine: Engine, model: LlamaModel) -> None:
    plain = engine.new_sequence(tokens(model), SamplingParams(temperature=0, max_tokens=6))
    asked = engine.new_sequence(tokens(model), SamplingParams(temperature=0, max_tokens=6, logprobs=0))
    out = run(engine, [plain, asked])
    assert logprobs(out[plain.id]) == []
    lps = logprobs(out[asked.id])
    assert len(lps) == 6 and all(lp.top == () for lp in lps)
    assert text(out[plain.id]) == text(out[asked.id])


def test_three_greedy_choices_equal_the_single_answer_and_read_the_prompt_once(
        engine: Engine, model: LlamaModel) -> None:
    prompt = tokens(model)
    greedy = SamplingParams(temperature=0, max_tokens=16)
    single = engine.new_sequence(prompt, greedy)
    alone = text(run(engine, [single])[single.id])
    before = engine.n_prompt - engine.n_cached
    group = engine.new_group(prompt, greedy, 3)
    out = run(engine, group)
    assert [text(out[s.id]) for s in group] == [alone] * 3
    # The leader reads the prompt; each sibling copies its cells and re-reads only the last token.
    assert engine.n_prompt - engine.n_cached - before == len(prompt) + 2
    assert [s.n_cached for s in group] == [0, len(prompt) - 1, len(prompt) - 1]


def test_sampled_choices_differ_and_a_seed_reproduces_them(engine: Engine, model: LlamaModel) -> None:
    hot = SamplingParams(temperature=1.0, seed=42, max_tokens=12)
    group = engine.new_group(tokens(model), hot, 3)
    first = [text(d) for d in run(engine, group).values()]
    again_group = engine.new_group(tokens(model), hot, 3)
    again = [text(d) for d in run(engine, again_group).values()]
    assert first == again
    assert len(set(first)) > 1
    assert [s.params.seed for s in group] == [42, 43, 44]


def test_more_choices_than_slots_wait_for_a_slot(engine: Engine, model: LlamaModel) -> None:
    group = engine.new_group(tokens(model), SamplingParams(temperature=0, max_tokens=4), 6)  # 4 slots
    out = run(engine, group)
    assert len({text(d) for d in out.values()}) == 1
    with pytest.raises(ValueError, match="n must be"):
        engine.new_group(tokens(model), SamplingParams(), 17)
