"""Embeddings over HTTP with the official openai and ollama clients, against a live lokal serve
(smollm2:135m, ctx 1024): POST /v1/embeddings, /api/embed and the older /api/embeddings."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import ollama
import openai
import pytest

pytestmark = pytest.mark.slow

MODEL = "smollm2:135m"
N_EMBD = 576
CTX = 1024  # the server fixture's --ctx-size: the longest input
TEXTS = ["The cat sat on the mat.", "A kitten is sleeping on the rug.", "Stock markets fell sharply."]
TOO_LONG = "word " * (CTX + 100)


@pytest.fixture(scope="module")
def oai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def oll(server) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=120)


def norms(vectors) -> np.ndarray:
    return np.linalg.norm(np.asarray(vectors, dtype=np.float64), axis=1)


# ---- OpenAI ------------------------------------------------------------------------------------
def test_openai_client_embeds_a_batch_with_usage(oai):
    r = oai.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    assert r.object == "list" and r.model == MODEL
    assert [d.index for d in r.data] == [0, 1, 2]
    assert all(d.object == "embedding" and len(d.embedding) == N_EMBD for d in r.data)
    np.testing.assert_allclose(norms([d.embedding for d in r.data]), 1.0, rtol=1e-5)
    assert r.usage.prompt_tokens > len(TEXTS) and r.usage.total_tokens == r.usage.prompt_tokens


def test_base64_encoding_carries_the_same_float32_vectors(oai, server):
    floats = oai.embeddings.create(model=MODEL, input=TEXTS[0], encoding_format="float").data[0].embedding
    # The openai client asks for base64 by default and decodes it itself.
    decoded = oai.embeddings.create(model=MODEL, input=TEXTS[0]).data[0].embedding
    np.testing.assert_allclose(decoded, floats, rtol=1e-6, atol=1e-7)
    body = httpx.post(server.url + "/v1/embeddings",
                      json={"model": MODEL, "input": TEXTS[0], "encoding_format": "base64"}, timeout=60).json()
    raw = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert raw.shape == (N_EMBD,)
    np.testing.assert_allclose(raw, floats, rtol=1e-6, atol=1e-7)


def test_token_arrays_are_accepted_one_or_many(oai):
    one = oai.embeddings.create(model=MODEL, input=[1, 2, 3], encoding_format="float")
    many = oai.embeddings.create(model=MODEL, input=[[1, 2, 3], [4, 5]], encoding_format="float")
    assert one.usage.prompt_tokens == 3 and many.usage.prompt_tokens == 5
    np.testing.assert_allclose(many.data[0].embedding, one.data[0].embedding, atol=1e-5)


def test_dimensions_must_match_the_model(oai):
    r = oai.embeddings.create(model=MODEL, input="hi", dimensions=N_EMBD, encoding_format="float")
    assert len(r.data[0].embedding) == N_EMBD
    with pytest.raises(openai.BadRequestError, match="576-dimensional") as info:
        oai.embeddings.create(model=MODEL, input="hi", dimensions=256)
    assert info.value.status_code == 400


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "no-such-model:1b", "input": "hi"}, 404, "model_not_found"),
        ({"model": MODEL, "input": ""}, 400, None),
        ({"model": MODEL, "input": []}, 400, None),
        ({"model": MODEL, "input": [["a"]]}, 400, None),
        ({"model": MODEL, "input": [10**9]}, 400, None),
        ({"model": MODEL, "input": TOO_LONG}, 400, "context_length_exceeded"),
        ({"input": "hi"}, 400, None),
    ],
    ids=["unknown-model", "empty-string", "empty-list", "bad-shape", "bad-token", "too-long", "no-model"],
)
def test_openai_errors(server, body, status, code):
    r = httpx.post(server.url + "/v1/embeddings", json=body, timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"]
    if code:
        assert error["code"] == code
    if code == "context_length_exceeded":
        assert str(CTX) in error["message"]


# ---- Ollama ------------------------------------------------------------------------------------
def test_ollama_embed_returns_normalized_vectors_and_counts(oll, oai):
    r = oll.embed(model=MODEL, input=TEXTS)
    assert r.model == MODEL
    assert len(r.embeddings) == 3 and all(len(v) == N_EMBD for v in r.embeddings)
    np.testing.assert_allclose(norms(r.embeddings), 1.0, rtol=1e-5)
    assert r.prompt_eval_count > len(TEXTS)
    assert r.total_duration > 0 and r.load_duration is not None and r.load_duration >= 0
    # The same vectors as the OpenAI endpoint: one implementation behind both.
    same = oai.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    np.testing.assert_allclose(r.embeddings, [d.embedding for d in same.data], atol=1e-6)


def test_ollama_embed_of_one_string_and_with_fewer_dimensions(oll):
    full = oll.embed(model=MODEL, input=TEXTS[0]).embeddings
    assert len(full) == 1
    short = oll.embed(model=MODEL, input=TEXTS[0], dimensions=64).embeddings[0]
    assert len(short) == 64
    np.testing.assert_allclose(np.linalg.norm(short), 1.0, rtol=1e-5)
    expected = np.asarray(full[0][:64]) / np.linalg.norm(full[0][:64])
    np.testing.assert_allclose(short, expected, atol=1e-6)


def test_ollama_embed_truncates_by_default_and_refuses_when_told_not_to(oll):
    cut = oll.embed(model=MODEL, input=TOO_LONG, keep_alive="10m")
    assert cut.prompt_eval_count == CTX
    with pytest.raises(ollama.ResponseError, match=str(CTX)) as info:
        oll.embed(model=MODEL, input=TOO_LONG, truncate=False)
    assert info.value.status_code == 400


def test_ollama_empty_input_only_loads_the_model(oll, server):
    assert oll.embed(model=MODEL, input="").embeddings == []
    assert oll.embed(model=MODEL, input=[]).embeddings == []
    assert list(oll.embeddings(model=MODEL, prompt="").embedding) == []


def test_legacy_embeddings_endpoint_is_not_normalized(oll):
    legacy = np.asarray(oll.embeddings(model=MODEL, prompt=TEXTS[0]).embedding)
    unit = np.asarray(oll.embed(model=MODEL, input=TEXTS[0]).embeddings[0])
    assert legacy.shape == (N_EMBD,)
    assert abs(np.linalg.norm(legacy) - 1.0) > 1e-3
    np.testing.assert_allclose(legacy / np.linalg.norm(legacy), unit, atol=1e-6)


@pytest.mark.parametrize("path", ["/api/embed", "/api/embeddings"])
def test_ollama_errors_have_ollama_status_codes(oll, server, path):
    with pytest.raises(ollama.ResponseError) as info:
        if path == "/api/embed":
            oll.embed(model="no-such-model:1b", input="hi")
        else:
            oll.embeddings(model="no-such-model:1b", prompt="hi")
    assert info.value.status_code == 404
    r = httpx.post(server.url + path, json={"model": MODEL, "input": [1, 2], "prompt": 3}, timeout=60)
    assert r.status_code == 400
    assert r.json()["error"]


# ---- beside generation ---------------------------------------------------------------------------
def test_embeddings_do_not_change_a_concurrent_greedy_generation(oai):
    chat = dict(model=MODEL, messages=[{"role": "user", "content": "Name three colours."}], temperature=0,
                max_tokens=24)
    alone = oai.chat.completions.create(**chat).choices[0].message.content
    with ThreadPoolExecutor(4) as pool:
        answer = pool.submit(lambda: oai.chat.completions.create(**chat).choices[0].message.content)
        vectors = [pool.submit(oai.embeddings.create, model=MODEL, input=TEXTS, encoding_format="float")
                   for _ in range(3)]
        results = [f.result() for f in vectors]
        assert answer.result() == alone
    for r in results[1:]:
        np.testing.assert_allclose([d.embedding for d in r.data], [d.embedding for d in results[0].data],
                                   atol=1e-6)
