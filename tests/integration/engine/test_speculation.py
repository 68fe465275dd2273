"""Prompt-lookup speculation on the real engine: greedy output is token for token what decoding
without speculation produces, drafts are accepted where the answer repeats the prompt, and stop
strings, max_tokens, logprobs, cancellation and the prefix cache keep working."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lokal.engine import speculate
from lokal.engine.engine import Engine
from lokal.engine.llama_model import ContextShape, LlamaModel
from lokal.engine.sampling import SamplingParams
from lokal.engine.sequence import FinishReason, Sequence
from lokal.engine.speculate import Speculation
from lokal.store.model_store import ModelStore

pytestmark = pytest.mark.slow

CODE = '''def total_price(items, tax_rate):
    subtotal = 0
    for item in items:
        subtotal += item.price * item.quantity
    tax = subtotal * tax_rate
    return subtotal + tax
'''
# A completion-style edit: smollm2 answers by writing the function again (drafts get accepted).
CODE_EDIT = "# Original version\n" + CODE + "\n\n# The same function, with the variable subtotal renamed to base\n"
CHAT = "<|im_start|>user\nWhy is the sky blue?<|im_end|>\n<|im_start|>assistant\n"
GREEDY = SamplingParams(temperature=0, max_tokens=96)


@pytest.fixture(scope="module")
def model(model_home: Path) -> Iterator[LlamaModel]:
    m = LlamaModel(ModelStore(model_home).gguf_path("smollm2:135m"),
                   ContextShape(slot_ctx=512, n_slots=8, n_batch=128, n_threads=2))
    yield m
    m.close()


@pytest.fixture(autouse=True)
def eager(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Draft as much as possible (as if extra rows were free), so that verification is exercised on
    every step; the adaptive policy itself is tested with the real costs (``adaptive`` marker)."""
    if "adaptive" not in request.node.name:
        monkeypatch.setattr(speculate, "SPEC_OVERHEAD", 0.0)
        monkeypatch.setattr(speculate, "ROW_COST", 0.0)


def engine(model: LlamaModel, spec: Speculation, prefix_cache: bool = False) -> Engine:
    for slot in range(model.shape.n_slots):
        model.forget(slot, 0)
    return Engine(model, prefix_cache=prefix_cache, speculation=spec)


def run(eng: Engine, prompts: list[str], params: list[SamplingParams]) -> list[Sequence]:
    seqs = [eng.add(eng.model.tokenize(p, add_special=True, parse_special=True), sp)
            for p, sp in zip(prompts, params, strict=True)]
    texts = {s.id: "" for s in seqs}
    while eng.has_work():
        for seq, delta in eng.step():
            texts[seq.id] += delta.text
    for s in seqs:
        s.text = texts[s.id]  # type: ignore[attr-defined]
    return seqs


def both(model: LlamaModel, prompts: list[str], params: list[SamplingParams]) -> tuple[list[Sequence], Engine]:
    """Runs the prompts without and with speculation, asserts identical tokens and text."""
    plain = run(engine(model, Speculation.OFF), prompts, params)
    eng = engine(model, Speculation.NGRAM)
    fast = run(eng, prompts, params)
    for a, b in zip(plain, fast, strict=True):
        assert b.tokens == a.tokens
        assert b.text == a.text  # type: ignore[attr-defined]
        assert (b.finish_reason, b.n_generated) == (a.finish_reason, a.n_generated)
    return fast, eng


def test_code_edit_accepts_drafts_and_keeps_the_greedy_answer(model: LlamaModel) -> None:
    fast, eng = both(model, [CODE_EDIT], [GREEDY])
    stats = eng.stats()
    assert stats.drafted_tokens > 0
    assert stats.accepted_tokens > 10
    assert stats.steps < fast[0].n_generated  # fewer decodes than tokens: speculation paid off
    assert "def " in fast[0].text  # type: ignore[attr-defined]


def test_plain_chat_is_unchanged(model: LlamaModel) -> None:
    both(model, [CHAT], [GREEDY])


def test_penalties_bias_and_logprobs_follow_each_accepted_token(model: LlamaModel) -> None:
    params = SamplingParams(temperature=0, max_tokens=80, repeat_penalty=1.1, repeat_last_n=16,
                            logit_bias={29: -0.5}, logprobs=2)
    plain = run(engine(model, Speculation.OFF), [CODE_EDIT], [params])
    eng = engine(model, Speculation.NGRAM)
    fast = run(eng, [CODE_EDIT], [params])
    assert fast[0].tokens == plain[0].tokens
    assert eng.stats().drafted_tokens > 0


def test_eight_concurrent_greedy_and_sampled(model: LlamaModel) -> None:
    prompts = [CODE_EDIT, CHAT] * 4
    params = [GREEDY if i % 2 == 0 else SamplingParams(temperature=0.8, seed=7 + i, max_tokens=48)
              for i in range(8)]
    params[1] = GREEDY  # a greedy chat among them too
    _, eng = both(model, prompts, params)
    assert eng.stats().accepted_tokens > 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sampled_answers_are_the_same_with_drafts(model: LlamaModel, seed: int) -> None:
    """A sampled sequence draws one random number per emitted token, drafts or not, and keeps a draft
    only where its own pick equals it: with a seed, the answer is the one decoding without drafts gives."""
    params = SamplingParams(temperature=0.7, top_p=0.95, top_k=40, seed=seed, max_tokens=80)
    _, eng = both(model, [CODE_EDIT], [params])
    assert eng.stats().accepted_tokens > 0


def chi_square_quantile_999(df: int) -> float:
    """The 0.999 quantile of the chi-square distribution (Wilson-Hilferty; within 1 % for df >= 2)."""
    z = 3.0902
    return df * (1 - 2 / (9 * df) + z * (2 / (9 * df)) ** 0.5) ** 3


def test_sampling_with_drafts_keeps_the_models_distribution(model: LlamaModel) -> None:
    """Two independent samples (different seeds) of the 4th to 9th sampled tokens, with and without drafts,
    come from one distribution: a chi-square test of homogeneity at the 0.1 % level."""
    n = 160

    def sample(spec: Speculation, seed0: int) -> tuple[list[tuple[int, ...]], Engine]:
        eng = engine(model, spec, prefix_cache=True)
        params = [SamplingParams(temperature=1.0, seed=seed0 + i, max_tokens=10) for i in range(n)]
        seqs = run(eng, [CODE_EDIT] * n, params)
        return [tuple(s.tokens[s.n_prompt + 3:s.n_prompt + 9]) for s in seqs], eng

    off, _ = sample(Speculation.OFF, 1000)
    on, eng = sample(Speculation.NGRAM, 5000)
    assert eng.stats().accepted_tokens > 50  # the drafts were really used
    for pos in range(6):
        a = [t[pos] if len(t) > pos else -1 for t in off]
        b = [t[pos] if len(t) > pos else -1 for t in on]
        counts = {tok: (a.count(tok), b.count(tok)) for tok in set(a) | set(b)}
        big = {k: v for k, v in counts.items() if v[0] + v[1] >= 10}
        small = [v for k, v in counts.items() if k not in big]
        rare = (sum(v[0] for v in small), sum(v[1] for v in small))
        cells = [*big.values(), *([rare] if sum(rare) else [])]
        if len(cells) < 2:
            continue  # one token dominates: nothing to compare
        stat = 0.0
        for ca, cb in cells:
            tot = ca + cb
            for obs in (ca, cb):
                exp = tot / 2  # equal sample sizes
                stat += (obs - exp) ** 2 / exp
        assert stat < chi_square_quantile_999(len(cells) - 1), (pos, cells)


@pytest.mark.parametrize("cut", [10, 17, 23, 31])
def test_max_tokens_cuts_inside_an_accepted_run(model: LlamaModel, cut: int) -> None:
    fast, eng = both(model, [CODE_EDIT], [SamplingParams(temperature=0, max_tokens=cut)])
    assert fast[0].n_generated == cut and fast[0].finish_reason is FinishReason.LENGTH
    assert eng.stats().accepted_tokens > 0


def test_stop_string_cuts_inside_an_accepted_run(model: LlamaModel) -> None:
    plain = run(engine(model, Speculation.OFF), [CODE_EDIT], [GREEDY])
    text: str = plain[0].text  # type: ignore[attr-defined]
    stops = [stop for stop in ("quantity", "tax_rate)", "return", "price") if stop in text]
    assert stops  # the answer repeats the function, so some of them occur
    for stop in stops:
        if stop in text:
            fast, _ = both(model, [CODE_EDIT], [SamplingParams(temperature=0, max_tokens=96, stop=[stop])])
            assert fast[0].finish_reason is FinishReason.STOP
            assert stop not in fast[0].text  # type: ignore[attr-defined]


def test_cancel_mid_speculation_frees_the_slot_and_leaves_the_cells_consistent(model: LlamaModel) -> None:
    eng = engine(model, Speculation.NGRAM, prefix_cache=True)
    seq = eng.add(model.tokenize(CODE_EDIT, add_special=True, parse_special=True), GREEDY)
    while eng.stats().accepted_tokens == 0 and not seq.is_finished:
        eng.step()
    assert not seq.is_finished
    eng.abort(seq.id)
    eng.step()
    assert seq.finish_reason is FinishReason.CANCELLED
    assert eng.stats().running == 0 and seq.slot is not None
    # The slot's cells are exactly the sequence's tokens (no rejected drafts left), and the prefix
    # cache offers what a later prompt may reuse of them.
    assert model.cached_tokens(seq.slot) == seq.n_past
    assert eng.scheduler.slot_cache[seq.slot] == seq.tokens[: eng.scheduler.reusable(seq)]
    # and the next request reuses them and still answers as without speculation
    again = run(eng, [CODE_EDIT], [GREEDY])
    assert again[0].n_cached > 0
    plain = run(engine(model, Speculation.OFF), [CODE_EDIT], [GREEDY])
    assert again[0].tokens == plain[0].tokens


def test_adaptive_policy_keeps_a_plain_chat_almost_free_of_draft_rows(model: LlamaModel) -> None:
    fast, eng = both(model, [CHAT], [GREEDY])
    assert eng.stats().drafted_tokens <= fast[0].n_generated // 10


def test_drafts_never_pass_the_slot_context(model: LlamaModel) -> None:
    prompt = model.tokenize(CODE_EDIT, add_special=True, parse_special=True)
    room = model.shape.slot_ctx - len(prompt)
    fast, _ = both(model, [CODE_EDIT], [SamplingParams(temperature=0, max_tokens=room + 50)])
    assert len(fast[0].tokens) <= model.shape.slot_ctx


def test_counters_reach_metrics_through_the_runtime(model_home: Path) -> None:
    from lokal.config import Settings
    from lokal.llm import LLM
    from lokal.server.metrics import EngineCollector

    with LLM("smollm2:135m", Settings(home=model_home, parallel=1, ctx_size=512, speculate="ngram")) as llm:
        llm.generate([CODE_EDIT], GREEDY, chat=False)
        stats = llm.engine.stats()
        samples = {(s.name, s.labels["model"]): s.value
                   for m in EngineCollector(llm.runtime).collect() for s in m.samples}
    assert stats.accepted_tokens > 0
    assert samples["lokal_speculative_drafted_tokens_total", "smollm2:135m"] == stats.drafted_tokens
    assert samples["lokal_speculative_accepted_tokens_total", "smollm2:135m"] == stats.accepted_tokens
