"""Continuous batching must not change results; the prefix cache must not either."""

from __future__ import annotations

import pytest

from lokal.config import Settings
from lokal.engine.sampling import SamplingParams
from lokal.llm import LLM

pytestmark = pytest.mark.slow

PROMPTS = [
    "Name three colors.", "What is 2+2?", "Write a haiku about the sea.", "Who wrote Hamlet?",
    "List two animals.", "What is the boiling point of water?", "Say hello in French.", "Count to five.",
    "What is a noun?", "Describe the sun.", "Give me a name for a cat.", "What is Python?",
    "Why is the sky blue?", "Tell me a joke.", "What day comes after Monday?", "Spell 'apple'.",
]
GREEDY = SamplingParams(temperature=0, max_tokens=32)


@pytest.fixture(scope="module")
def llm(model_home):
    with LLM("smollm2:135m", Settings(home=model_home, parallel=16, ctx_size=512, batch_size=256)) as llm:
        yield llm


def test_sixteen_concurrent_greedy_requests_equal_each_run_alone(llm):
    together = llm.generate(PROMPTS, GREEDY)
    assert llm.engine.stats().steps > 0
    alone = [llm.generate([p], GREEDY)[0] for p in PROMPTS]
    assert [g.text for g in together] == [g.text for g in alone]
    assert all(g.usage.completion_tokens > 0 for g in together)


def test_results_come_back_in_prompt_order(llm):
    out = llm.generate(["Say A.", "What is 2+2?"], GREEDY)
    assert out[0].text == llm.generate(["Say A."], GREEDY)[0].text


def test_prefix_cache_reports_cached_tokens_and_does_not_change_the_answer(model_home):
    system = "You are a meticulous assistant who answers in one short sentence. " * 20
    conv = [[{"role": "system", "content": system}, {"role": "user", "content": q}] for q in PROMPTS[:4]]
    with LLM("smollm2:135m", Settings(home=model_home, parallel=2, ctx_size=1024, prefix_cache=True)) as cached:
        first = cached.generate(conv[:1], GREEDY)[0]
        rest = cached.generate(conv[1:], GREEDY)
    with LLM("smollm2:135m", Settings(home=model_home, parallel=2, ctx_size=1024, prefix_cache=False)) as plain:
        uncached = plain.generate(conv, GREEDY)
    assert first.usage.cached_tokens < 20  # nothing to reuse yet
    assert all(g.usage.cached_tokens > 200 for g in rest)  # the shared system prompt
    assert all(g.usage.cached_tokens == 0 for g in uncached)
    assert [first.text, *[g.text for g in rest]] == [g.text for g in uncached]


def test_stop_frees_the_slot_for_the_next_request(model_home):
    with LLM("smollm2:135m", Settings(home=model_home, parallel=1, ctx_size=512)) as llm:
        out = llm.generate(["Count from 1 to 50."] * 3, SamplingParams(temperature=0, max_tokens=200, stop=["5"]))
        assert all(g.finish_reason.value == "stop" and "5" not in g.text for g in out)
        assert llm.engine.stats().running == 0


def test_the_argmax_shortcut_picks_what_llamas_greedy_sampler_picks(llm):
    import llama_cpp as C

    model = llm.engine.model
    tokens = model.tokenize("The capital of France is a city named", add_special=True, parse_special=False)
    model.forget(0, 0)
    model.decode([(t, i, 0, True) for i, t in enumerate(tokens)])
    chain = model.new_sampler(GREEDY, [])
    assert chain.argmax_only
    picks = [model.sample(chain, i) for i in range(len(tokens))]
    assert picks == [int(C.llama_sampler_sample(chain.ptr, model._ctx, i)) for i in range(len(tokens))]
    penalised = model.new_sampler(SamplingParams(temperature=0, repeat_penalty=1.1), [])
    assert not penalised.argmax_only
    penalised.free()
    chain.free()
    model.forget(0, 0)


@pytest.mark.parametrize(
    "extra",
    [
        {"repeat_penalty": 1.5, "repeat_last_n": 8},
        {"repeat_penalty": 0.7, "repeat_last_n": 64},
        {"repeat_penalty": 1.3, "frequency_penalty": 1.7, "repeat_last_n": 6},
        {"presence_penalty": 1.9, "repeat_last_n": -1},
        {"repeat_penalty": 1.2, "repeat_last_n": 8, "logit_bias": {13: 6.5, 30: -2.0, 260: 3.25}},
    ],
)
def test_greedy_with_penalties_and_bias_in_numpy_picks_what_llamas_chain_picks(llm, extra):
    """Greedy rows with a penalty window or a logit bias are picked in numpy; every pick over
    many rows (each one remembered, so the window slides) equals llama.cpp's own chain's."""
    import llama_cpp as C

    model = llm.engine.model
    text = "The cat sat on the mat. The cat sat on the mat again, and the dog sat on the cat's mat too."
    tokens = model.tokenize(text, add_special=True, parse_special=False)
    model.forget(0, 0)
    model.decode([(t, i, 0, True) for i, t in enumerate(tokens)])
    params = SamplingParams(temperature=0, **extra)
    ours = model.new_sampler(params, tokens[:10])
    theirs = model.new_sampler(params, tokens[:10])
    assert ours.greedy_in_numpy and not ours.argmax_only
    picks = [model.sample(ours, i) for i in range(len(tokens))]
    expected = [int(C.llama_sampler_sample(theirs.ptr, model._ctx, i)) for i in range(len(tokens))]
    greedy = model.new_sampler(GREEDY, [])
    plain = [model.sample(greedy, i) for i in range(len(tokens))]
    greedy.free()
    assert picks == expected
    assert picks != plain  # the penalties or the bias did change some picks
    ours.free()
    theirs.free()
    model.forget(0, 0)


def test_reading_token_pieces_on_another_thread_never_garbles_generated_text(llm):
    """The runtime measures and tokenizes prompts on worker threads while the engine thread
    detokenizes: the two must not share a buffer (a shared one garbled answers)."""
    import threading

    alone = llm.generate(PROMPTS[:4], GREEDY)
    model = llm.engine.model
    stop = threading.Event()

    def read_pieces() -> None:
        while not stop.is_set():
            for token in range(0, model.n_vocab, 7):
                model._piece(token, special=True)

    readers = [threading.Thread(target=read_pieces)]
    for r in readers:
        r.start()
    model._pieces.clear()  # the engine reads each token's piece anew, beside the readers
    try:
        busy = llm.generate(PROMPTS[:4], GREEDY)
    finally:
        stop.set()
        for r in readers:
            r.join()
    assert [g.text for g in busy] == [g.text for g in alone]
