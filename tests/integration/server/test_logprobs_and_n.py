"""logprobs (chat and completions) and n > 1 through the official openai client, on a live server
with the real smollm2."""

from __future__ import annotations

import math
import time

import httpx
import openai
import pytest

pytestmark = pytest.mark.slow

MODEL = "smollm2:135m"
ASK = [{"role": "user", "content": "Name three colors."}]
# The model's Modelfile sets a repeat penalty; without it, greedy picks the raw distribution's top token.
NO_PENALTY = {"repeat_penalty": 1.0}


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=180)


def test_chat_logprobs_describe_every_token_and_greedy_picks_the_top_one(client):
    r = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=10,
                                       logprobs=True, top_logprobs=3, extra_body=NO_PENALTY)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert t.logprob <= 0
        assert t.bytes == list(t.token.encode())
        assert len(t.top_logprobs) == 3
        assert (t.top_logprobs[0].token, t.top_logprobs[0].logprob) == (t.token, t.logprob)
        assert sum(math.exp(a.logprob) for a in t.top_logprobs) <= 1 + 1e-9
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob


def test_streamed_chat_logprobs_are_the_same_as_the_whole_answers(client):
    whole = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=8,
                                           logprobs=True, top_logprobs=2)
    streamed = []
    for chunk in client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=8,
                                                logprobs=True, top_logprobs=2, stream=True):
        if chunk.choices and chunk.choices[0].logprobs is not None:
            streamed.extend(chunk.choices[0].logprobs.content)
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in whole.choices[0].logprobs.content]
    assert whole.choices[0].logprobs.content


def test_no_logprobs_unless_asked(client):
    r = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=4)
    assert r.choices[0].logprobs is None


def test_completion_logprobs_have_tokens_offsets_and_alternatives(client):
    prompt = "The capital of France is"
    r = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=6, logprobs=2, echo=True,
                                  extra_body=NO_PENALTY)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert r.choices[0].text == prompt + "".join(lp.tokens)
    assert lp.text_offset[0] == len(prompt)
    for token, logprob, top, offset in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, lp.text_offset,
                                           strict=True):
        assert logprob <= 0 and len(top) == 2
        assert max(top.values()) == logprob and top[token] == logprob  # greedy: the most likely
        assert r.choices[0].text[offset:offset + len(token)] == token


def test_three_greedy_choices_equal_the_single_answer_with_the_prompt_counted_once(client):
    one = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=12)
    three = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=12, n=3)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert [c.message.content for c in three.choices] == [one.choices[0].message.content] * 3
    assert three.usage.prompt_tokens == one.usage.prompt_tokens
    assert three.usage.completion_tokens == 3 * one.usage.completion_tokens


def test_sampled_choices_differ_and_a_seed_reproduces_them(client):
    def ask():
        r = client.chat.completions.create(model=MODEL, messages=ASK, temperature=1.0, seed=7, max_tokens=12, n=3)
        return [c.message.content for c in r.choices]

    first = ask()
    assert len(set(first)) > 1
    assert ask() == first


def test_streamed_choices_carry_their_index_and_match_the_whole_response(client):
    whole = client.chat.completions.create(model=MODEL, messages=ASK, temperature=1.0, seed=11, max_tokens=10, n=2)
    texts = ["", ""]
    finishes = [None, None]
    usage = None
    for chunk in client.chat.completions.create(model=MODEL, messages=ASK, temperature=1.0, seed=11, max_tokens=10,
                                                n=2, stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            finishes[c.index] = c.finish_reason or finishes[c.index]
    assert texts == [c.message.content for c in whole.choices]
    assert all(finishes)
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens == whole.usage.prompt_tokens


def test_completions_with_n_and_logprobs_together(client):
    r = client.completions.create(model=MODEL, prompt="Once upon a time", temperature=0, max_tokens=5, n=2,
                                  logprobs=1)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].text == r.choices[1].text
    assert r.choices[0].logprobs.token_logprobs == r.choices[1].logprobs.token_logprobs
    assert r.usage.completion_tokens == 10


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/chat/completions", {"messages": ASK, "n": 17}, "n"),
    ("/v1/chat/completions", {"messages": ASK, "n": 0}, "n"),
    ("/v1/chat/completions", {"messages": ASK, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/chat/completions", {"messages": ASK, "top_logprobs": 2}, "top_logprobs"),
    ("/v1/completions", {"prompt": "hi", "logprobs": 6}, "logprobs"),
    ("/v1/completions", {"prompt": "hi", "n": 100}, "n"),
])
def test_out_of_range_n_and_logprobs_are_a_400_naming_the_field(server, path, body, param):
    r = httpx.post(server.url + path, json={"model": MODEL, "max_tokens": 2, **body}, timeout=60)
    assert r.status_code == 400, r.text
    assert param in r.text


# ---- Ollama's logprobs and top_logprobs (/api/generate, /api/chat), through the ollama client ----

@pytest.fixture(scope="module")
def ollama_client(server):
    import ollama

    return ollama.Client(host=server.url, timeout=180)


def test_ollama_generate_reports_each_tokens_logprob_and_alternatives(ollama_client):
    r = ollama_client.generate(model=MODEL, prompt="Name three colors.", logprobs=True, top_logprobs=2,
                               options={"temperature": 0, "num_predict": 6, "repeat_penalty": 1.0})
    assert len(r.logprobs) == r.eval_count
    assert "".join(lp.token for lp in r.logprobs) == r.response
    for lp in r.logprobs:
        assert lp.logprob <= 0 and len(lp.top_logprobs) == 2
        assert (lp.top_logprobs[0].token, lp.top_logprobs[0].logprob) == (lp.token, lp.logprob)


def test_ollama_chat_streams_logprobs_with_the_text_they_describe(ollama_client):
    tokens, text = [], ""
    for chunk in ollama_client.chat(model=MODEL, messages=ASK, logprobs=True, stream=True,
                                    options={"temperature": 0, "num_predict": 6}):
        text += chunk.message.content or ""
        tokens.extend(chunk.logprobs or [])
    assert len(tokens) == 6
    assert "".join(t.token for t in tokens) == text
    assert all(t.logprob <= 0 and not t.top_logprobs for t in tokens)
    plain = ollama_client.chat(model=MODEL, messages=ASK, options={"temperature": 0, "num_predict": 2})
    assert plain.logprobs is None


def _running(server) -> int:
    return httpx.get(server.url + "/health", timeout=10).json()["loaded"][0]["running"]


def _wait_idle(server) -> int:
    deadline = time.monotonic() + 10
    while _running(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _running(server)


def test_a_client_that_goes_away_cancels_every_choice(server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a very long story."}], "n": 3,
            "stream": True, "max_tokens": 800, "ignore_eos": True, "temperature": 1.0}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(12):
            next(lines)
        assert _running(server) == 3
    assert _wait_idle(server) == 0
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json={**body, "stream": False}, timeout=2)
    assert _wait_idle(server) == 0


def _counter(server, name: str) -> float:
    for line in httpx.get(server.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(f'{name}_total{{model="{MODEL}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_the_prompt_of_an_n_request_once_and_every_choices_tokens(client, server):
    prompt_before = _counter(server, "lokal_prompt_tokens")
    generated_before = _counter(server, "lokal_generation_tokens")
    r = client.chat.completions.create(model=MODEL, messages=ASK, temperature=1.0, seed=5, max_tokens=6, n=3)
    assert _counter(server, "lokal_prompt_tokens") - prompt_before == r.usage.prompt_tokens
    assert _counter(server, "lokal_generation_tokens") - generated_before == r.usage.completion_tokens
