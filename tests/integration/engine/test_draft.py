"""Draft-model speculation on the real engine: smollm2:135m drafting for itself (the same
vocabulary, so nearly every draft is accepted) keeps every greedy answer token for token, drafts
all running sequences in one draft decode per position, keeps each draft slot's cells equal to
what it believes they hold, and stops feeding drafts that do not pay; models with another
vocabulary are refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lokal.engine import speculate
from lokal.engine.draft import DraftMismatch, DraftModel
from lokal.engine.engine import Engine
from lokal.engine.llama_model import ContextShape, LlamaModel
from lokal.engine.sampling import SamplingParams
from lokal.engine.sequence import FinishReason, Sequence
from lokal.engine.speculate import Speculation
from lokal.store.model_store import ModelStore
from lokal.store.pull import pull_model
from tests.integration.engine.test_speculation import run  # the same run-to-the-end loop

pytestmark = pytest.mark.slow

SMOL = "smollm2:135m"
CHAT = "<|im_start|>user\nWhy is the sky blue?<|im_end|>\n<|im_start|>assistant\n"
LIST = "<|im_start|>user\nName five fruits, one per line.<|im_end|>\n<|im_start|>assistant\n"
CODE = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
STORY = "Once upon a time, in a small village by the sea,"
# Longer than BORROW_MIN tokens: a second request can copy its draft cells from another slot.
LONG = ("<|im_start|>system\nYou are a careful assistant. You answer in plain English, in short sentences, "
        "and you never use lists or headings.<|im_end|>\n<|im_start|>user\nWhy do leaves change colour in "
        "autumn?<|im_end|>\n<|im_start|>assistant\n")
GREEDY = SamplingParams(temperature=0, max_tokens=64)


@pytest.fixture(scope="module")
def model(model_home: Path) -> Iterator[LlamaModel]:
    m = LlamaModel(ModelStore(model_home).gguf_path(SMOL),
                   ContextShape(slot_ctx=512, n_slots=4, n_batch=128, n_threads=2))
    yield m
    m.close()


@pytest.fixture(scope="module")
def draft(model_home: Path, model: LlamaModel) -> Iterator[DraftModel]:
    """smollm2 drafting for itself, as if drafting cost nothing (so that every step drafts)."""
    d = DraftModel(ModelStore(model_home).gguf_path(SMOL), model, draft_cost=0.0)
    yield d
    d.close()


@pytest.fixture(autouse=True)
def eager(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Draft rows as if free, so that verification runs on every step; the adaptive policy is
    tested with the real costs (``adaptive`` in the test's name)."""
    if "adaptive" not in request.node.name:
        monkeypatch.setattr(speculate, "SPEC_OVERHEAD", 0.0)
        monkeypatch.setattr(speculate, "ROW_COST", 0.0)


def engine(model: LlamaModel, draft: DraftModel | None, prefix_cache: bool = False) -> Engine:
    for slot in range(model.shape.n_slots):
        model.forget(slot, 0)
    return Engine(model, prefix_cache=prefix_cache, draft=draft)


def both(model: LlamaModel, draft: DraftModel, prompts: list[str],
         params: list[SamplingParams], prefix_cache: bool = False) -> tuple[list[Sequence], Engine]:
    """Runs the prompts without and with the draft model; asserts identical tokens and text."""
    plain = run(engine(model, None, prefix_cache), prompts, params)
    eng = engine(model, draft, prefix_cache)
    fast = run(eng, prompts, params)
    for a, b in zip(plain, fast, strict=True):
        assert b.tokens == a.tokens
        assert b.text == a.text  # type: ignore[attr-defined]
        assert (b.finish_reason, b.n_generated) == (a.finish_reason, a.n_generated)
    assert_cells_match(draft)
    return fast, eng


def assert_cells_match(draft: DraftModel) -> None:
    """Each draft slot holds exactly the cells the draft model believes it holds."""
    for slot, held in enumerate(draft._held):
        assert draft.model.cached_tokens(slot) == len(held)


@pytest.mark.parametrize("other", ["gemma3:270m", "qwen2.5-coder:0.5b"])
def test_a_draft_model_with_another_vocabulary_is_refused(model_home: Path, model: LlamaModel, other: str) -> None:
    store = ModelStore(model_home)
    pull_model(store, other)
    with pytest.raises(DraftMismatch, match="vocabulary"):
        DraftModel(store.gguf_path(other), model, draft_cost=0.0)


def test_a_self_draft_is_accepted_and_keeps_the_greedy_answer(model: LlamaModel, draft: DraftModel) -> None:
    fast, eng = both(model, draft, [CHAT], [GREEDY])
    stats = eng.stats()
    assert eng.speculation is Speculation.DRAFT
    assert stats.drafted_tokens > 20
    assert stats.accepted_tokens >= 0.9 * stats.drafted_tokens  # the same model: drafts are its own picks
    assert stats.steps < fast[0].n_generated // 2  # most steps emit several tokens


def test_concurrent_sequences_keep_their_answers(model: LlamaModel, draft: DraftModel) -> None:
    prompts = [CHAT, LIST, CODE, STORY, LIST, CHAT]  # more than the 4 slots: some wait, slots are reused
    params = [SamplingParams(temperature=0, max_tokens=40 + 7 * i) for i in range(len(prompts))]
    params[2] = SamplingParams(temperature=0, max_tokens=48, repeat_penalty=1.2, repeat_last_n=32)
    params[4] = SamplingParams(temperature=0.8, seed=11, max_tokens=40)  # a sampled one among them
    _, eng = both(model, draft, prompts, params)
    assert eng.stats().accepted_tokens > 50


def test_all_sequences_draft_in_one_decode_per_position(model: LlamaModel, draft: DraftModel,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    eng = engine(model, draft)
    seqs = [eng.add(model.tokenize(p, add_special=True, parse_special=True), GREEDY) for p in (CHAT, LIST, CODE)]
    while not all(s.n_generated >= 2 for s in seqs):  # all decoding, their drafts caught up
        eng.step()
    calls: list[int] = []
    decode = draft.model.decode
    monkeypatch.setattr(draft.model, "decode", lambda rows, *a, **kw: (calls.append(len(rows)), decode(rows, *a, **kw)))
    for s in seqs:
        assert s.lookup is not None
        s.lookup.k = 3
    drafts = draft.propose([(s, 3) for s in seqs])
    assert [len(d) for d in drafts] == [3, 3, 3]
    assert len(calls) == 3 and calls[1:] == [3, 3]  # three positions, each one decode for all three
    eng.abort(seqs[0].id)
    eng.abort(seqs[1].id)
    eng.abort(seqs[2].id)
    eng.step()


@pytest.mark.parametrize("cut", [9, 16, 23])
def test_max_tokens_cuts_inside_an_accepted_run(model: LlamaModel, draft: DraftModel, cut: int) -> None:
    fast, eng = both(model, draft, [STORY], [SamplingParams(temperature=0, max_tokens=cut)])
    assert fast[0].n_generated == cut and fast[0].finish_reason is FinishReason.LENGTH
    assert eng.stats().accepted_tokens > 0


def test_stop_strings_cut_inside_an_accepted_run(model: LlamaModel, draft: DraftModel) -> None:
    plain = run(engine(model, None), [CHAT], [GREEDY])
    text: str = plain[0].text  # type: ignore[attr-defined]
    words = [w for w in text.split() if len(w) > 4][2:6]
    assert words
    for stop in words:
        fast, _ = both(model, draft, [CHAT], [SamplingParams(temperature=0, max_tokens=64, stop=[stop])])
        assert fast[0].finish_reason is FinishReason.STOP
        assert stop not in fast[0].text  # type: ignore[attr-defined]


def test_cancel_mid_draft_then_a_reused_prefix_keeps_the_answer(model: LlamaModel, draft: DraftModel,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    eng = engine(model, draft, prefix_cache=True)
    seq = eng.add(model.tokenize(LONG, add_special=True, parse_special=True), GREEDY)
    while eng.stats().accepted_tokens == 0 and not seq.is_finished:
        eng.step()
    assert not seq.is_finished
    eng.abort(seq.id)
    eng.step()
    assert seq.finish_reason is FinishReason.CANCELLED and seq.slot is not None
    assert model.cached_tokens(seq.slot) == seq.n_past  # no rejected draft's cell is left
    # The next two requests reuse the cached prompt (the second from another slot: the draft copies
    # its own cells too) and still answer as without speculation.
    borrowed: list[tuple[int, int]] = []
    share = draft.model.share_prefix
    monkeypatch.setattr(draft.model, "share_prefix",
                        lambda src, dst, n: (borrowed.append((src, dst)), share(src, dst, n))[1])
    again = run(eng, [LONG, LONG], [GREEDY, GREEDY])
    assert all(s.n_cached > 0 for s in again)
    assert borrowed  # the second slot's draft cells were copied, not fed again
    plain = run(engine(model, None), [LONG], [GREEDY])
    assert again[0].tokens == again[1].tokens == plain[0].tokens
    assert_cells_match(draft)


def test_adaptive_a_draft_as_slow_as_the_target_is_never_fed(model_home: Path, model: LlamaModel) -> None:
    """Drafting for itself, a draft token costs a whole target step (measured at load): no draft
    length pays even if every draft were accepted, so the draft model does not even decode."""
    slow = DraftModel(ModelStore(model_home).gguf_path(SMOL), model)
    try:
        assert slow.draft_cost > 0.45
        for slot in range(model.shape.n_slots):
            slow.model.forget(slot, 0)
        _, eng = both(model, slow, [CHAT, LIST], [GREEDY, GREEDY])
        assert eng.stats().drafted_tokens == 0
        assert all(slow.model.cached_tokens(slot) == 0 for slot in range(model.shape.n_slots))
    finally:
        slow.close()


def test_adaptive_shadow_drafts_teach_a_cheap_draft_to_draft(model: LlamaModel, draft: DraftModel,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """With the real row costs and a cheap draft, a sequence starts pessimistic (nothing fed), and
    its shadow drafts, all hits when smollm2 drafts for itself, raise alpha until drafts are fed."""
    monkeypatch.setattr(draft, "draft_cost", 0.05)
    fast, eng = both(model, draft, [STORY], [SamplingParams(temperature=0, max_tokens=96)])
    assert fast[0].lookup is not None and fast[0].lookup.alpha > 0.9
    assert eng.stats().drafted_tokens > 0 and eng.stats().accepted_tokens >= 0.9 * eng.stats().drafted_tokens


def test_draft_reaches_the_runtime_from_settings_and_metrics(model_home: Path) -> None:
    from lokal.config import Settings
    from lokal.llm import LLM
    from lokal.server.metrics import EngineCollector

    with LLM(SMOL, Settings(home=model_home, parallel=2, ctx_size=512, draft=SMOL)) as llm:
        assert llm.engine.draft is not None and llm.engine.speculation is Speculation.DRAFT
        llm.engine.draft.draft_cost = 0.0  # so that it drafts now (the eager costs above)
        llm.generate([STORY], SamplingParams(temperature=0, max_tokens=32), chat=False)
        stats = llm.engine.stats()
        samples = {(s.name, s.labels["model"]): s.value
                   for m in EngineCollector(llm.runtime).collect() for s in m.samples}
        (loaded,) = llm.runtime.loaded()
    assert stats.accepted_tokens > 0
    assert loaded.plan is not None
    assert llm.runtime.memory_bytes(loaded) == 2 * loaded.plan.total_bytes  # its draft (itself) counts too
    assert samples["lokal_speculative_drafted_tokens_total", SMOL] == stats.drafted_tokens
    assert samples["lokal_speculative_accepted_tokens_total", SMOL] == stats.accepted_tokens


def test_a_modelfile_names_its_draft_model_and_a_mismatched_one_fails_to_load(model_home: Path) -> None:
    import asyncio

    from lokal.config import Settings
    from lokal.runtime import errors
    from lokal.runtime.runtime import Runtime
    from lokal.store.create import create_model
    from lokal.store.modelfile import parse_modelfile

    store = ModelStore(model_home)
    pull_model(store, "gemma3:270m")
    create_model(store, "draft-test:good", parse_modelfile(f"FROM {SMOL}\nPARAMETER draft {SMOL}\n"))
    create_model(store, "draft-test:bad", parse_modelfile(f"FROM {SMOL}\nPARAMETER draft gemma3:270m\n"))
    runtime = Runtime(Settings(home=model_home, parallel=2, ctx_size=512))
    try:
        good = runtime.load_sync("draft-test:good", start_thread=False)
        try:
            assert good.engine.draft is not None and good.engine.speculation is Speculation.DRAFT
        finally:
            good.close()
        with pytest.raises(errors.ModelLoadFailed, match="`gemma3:270m` cannot draft for it: .*vocabulary"):
            asyncio.run(runtime.model("draft-test:bad"))
    finally:
        store.delete("draft-test:good")
        store.delete("draft-test:bad")
