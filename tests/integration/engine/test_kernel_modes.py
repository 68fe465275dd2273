"""Prompt-mode and decode-mode kernels (scripts/llama_cpp_patch.py): a row's logits never depend on
how many rows share its llama_decode, for a K-quant model (qwen2.5-coder, Q4_K_M with Q5_0/Q6_K/Q8_0
tensors) as for smollm2 (Q4_1, Q8_0)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import llama_cpp as C
import numpy as np
import pytest

from lokal.config import Settings
from lokal.engine.llama_model import ContextShape, LlamaModel, kernel_modes
from lokal.engine.sampling import SamplingParams
from lokal.llm import LLM
from lokal.store.model_store import ModelStore
from lokal.store.pull import pull_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(kernel_modes() is None, reason="needs lokal's llama.cpp build (scripts/install.sh)"),
]

MODELS = ["smollm2:135m", "qwen2.5-coder:0.5b"]
TEXT = (Path(__file__).parents[3] / "src/lokal/engine/scheduler.py").read_text()


@pytest.fixture(scope="module", params=MODELS)
def model(request: pytest.FixtureRequest, model_home: Path) -> Iterator[LlamaModel]:
    store = ModelStore(model_home)
    pull_model(store, request.param)
    m = LlamaModel(store.gguf_path(request.param), ContextShape(slot_ctx=1024, n_slots=3, n_batch=512, n_threads=2))
    yield m
    m.close()


def last_logits(model: LlamaModel) -> np.ndarray:
    return np.ctypeslib.as_array(C.llama_get_logits_ith(model._ctx, -1), shape=(model.n_vocab,)).copy()


def read_prompt(model: LlamaModel, prompt: list[int], chunks: list[int], slot: int = 0) -> np.ndarray:
    model.forget(slot, 0)
    pos = 0
    for n in chunks:
        rows = [(prompt[pos + i], pos + i, slot, pos + i == len(prompt) - 1) for i in range(n)]
        model.decode(rows, prompt=True)
        pos += n
    assert pos == len(prompt)
    return last_logits(model)


def test_a_prompts_logits_do_not_depend_on_how_it_is_chunked(model: LlamaModel) -> None:
    prompt = model.tokenize(TEXT, add_special=True, parse_special=False)[:300]
    n = len(prompt)
    whole = read_prompt(model, prompt, [n])
    cuts = ([n - 1, 1], [n - 3, 3], [n - 4, 4], [n - 9, 9], [n - 17, 17], [200, 64, n - 264], [1] * 40 + [n - 40])
    for chunks in cuts:
        np.testing.assert_array_equal(read_prompt(model, prompt, chunks), whole, err_msg=f"chunks {chunks[:4]}")


def test_a_generated_rows_logits_do_not_depend_on_the_other_rows(model: LlamaModel) -> None:
    prompt = model.tokenize(TEXT, add_special=True, parse_special=False)[:120]
    n = len(prompt)
    follow = model.tokenize(" return the first", add_special=False, parse_special=False)
    for slot in range(3):
        read_prompt(model, prompt, [n], slot)

    def decode_row(others: list[tuple[int, int, int, bool]], drafts: list[int]) -> np.ndarray:
        for slot in range(3):
            model.forget(slot, n)
        rows = [(t, n + i, 0, True) for i, t in enumerate([follow[0], *drafts])]
        model.decode(rows + others, prompt=False)
        return np.ctypeslib.as_array(C.llama_get_logits_ith(model._ctx, 0), shape=(model.n_vocab,)).copy()

    alone = decode_row([], [])
    np.testing.assert_array_equal(decode_row([], follow[1:4]), alone)  # with its own drafts (speculation)
    np.testing.assert_array_equal(decode_row([(follow[1], n, 1, True)], []), alone)  # beside another sequence
    others = [(t, n + i, s, True) for s in (1, 2) for i, t in enumerate(follow[:4])]
    np.testing.assert_array_equal(decode_row(others, follow[1:3]), alone)  # 11 rows of three sequences


@pytest.fixture(scope="module")
def qwen(model_home: Path) -> Iterator[LLM]:
    pull_model(ModelStore(model_home), "qwen2.5-coder:0.5b")
    with LLM("qwen2.5-coder:0.5b", Settings(home=model_home, parallel=8, ctx_size=4096, batch_size=256)) as llm:
        yield llm


QUESTIONS = ["What is a list in Python?", "Write a function that adds two numbers.", "What does git rebase do?",
             "Name a sorting algorithm.", "What is a closure?", "Explain recursion briefly.",
             "What is HTTP?", "Reverse a string in Python."]
GREEDY = SamplingParams(temperature=0, max_tokens=24)


def test_k_quant_model_answers_the_same_alone_and_in_a_batch_of_eight(qwen: LLM) -> None:
    together = qwen.generate(QUESTIONS, GREEDY)
    alone = [qwen.generate([q], GREEDY)[0] for q in QUESTIONS]
    assert [g.text for g in together] == [g.text for g in alone]


def test_a_chat_turn_answers_the_same_with_the_previous_turn_cached_or_not(qwen: LLM, model_home: Path) -> None:
    """The next turn's prompt holds the previous answer, whose cells were computed in decode mode: they
    are not reused as a prompt prefix (the cold prompt reads them in prompt mode), so the cache cannot
    change the answer."""
    first = [{"role": "user", "content": "Write a Python function that checks if a number is prime."}]
    answer = qwen.generate([first], SamplingParams(temperature=0, max_tokens=48))[0]
    turn = [*first, {"role": "assistant", "content": answer.text}, {"role": "user", "content": "Now make it faster."}]
    warm = qwen.generate([turn], GREEDY)[0]
    assert warm.usage.cached_tokens > 10  # the first question's cells were reused
    with LLM("qwen2.5-coder:0.5b", Settings(home=model_home, parallel=1, ctx_size=4096, prefix_cache=False)) as cold:
        assert cold.generate([turn], GREEDY)[0].text == warm.text
