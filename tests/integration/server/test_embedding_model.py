"""A real embedding model (all-MiniLM-L6-v2, converted from its PyPI wheel's safetensors on pull)
through /v1/embeddings, Ollama's /api/embed and /api/embeddings, and /v1/rerank; its kind in every
listing; and the 4xx a chat request to it gets.

The reference values are sentence-transformers' math (BERT forward, mean pooling, L2 norm) in
float64 numpy over the same safetensors and Hugging Face tokenizer (docs/models.md, "all-minilm")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tests.integration.conftest import LiveServer

pytestmark = pytest.mark.slow

MODEL = "all-minilm:l6-v2"
CHAT = "smollm2:135m"
# Pairs with sentence-transformers' cosine: each similar pair first, then an unrelated one.
PAIRS = [
    ("A man is eating food.", "A man is eating a piece of bread.", 0.7553),
    ("A man is eating food.", "The stock market fell sharply today.", 0.0037),
    ("How do I reset my password?", "Steps to recover a forgotten account password", 0.7053),
    ("How do I reset my password?", "The new movie is awesome!", -0.0354),
]
# The first components of sentence-transformers' vector for PAIRS[0][0].
REFERENCE_HEAD = [0.03324, 0.00441, -0.00628, 0.04838, -0.1387, -0.03362, 0.10113, -0.05438]


@pytest.fixture(scope="session")
def minilm_server(model_home: Path, server: LiveServer) -> LiveServer:
    """The shared server, with all-minilm:l6-v2 pulled into its store (once per machine)."""
    from lokal.store.model_store import ModelStore
    from lokal.store.pull import pull_model

    pull_model(ModelStore(model_home), MODEL)
    return server


@pytest.fixture
def oai(minilm_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=minilm_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _vectors(client: openai.OpenAI, texts: list[str]) -> np.ndarray:
    return np.asarray([d.embedding for d in client.embeddings.create(model=MODEL, input=texts).data],
                      dtype=np.float32)


def test_vectors_match_sentence_transformers_and_similar_pairs_rank_above_unrelated(oai: openai.OpenAI) -> None:
    texts = [t for a, b, _ in PAIRS for t in (a, b)]
    vectors = _vectors(oai, texts)
    assert vectors.shape == (len(texts), 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.abs(vectors[0, :8] - REFERENCE_HEAD).max() < 1e-3
    cosines = [float(vectors[2 * i] @ vectors[2 * i + 1]) for i in range(len(PAIRS))]
    for got, (_, _, want) in zip(cosines, PAIRS, strict=True):
        assert abs(got - want) < 2e-3, (got, want)
    assert cosines[0] > cosines[1] + 0.5 and cosines[2] > cosines[3] + 0.5


def test_a_text_alone_and_anywhere_in_a_batch_of_16_gets_the_same_bits(oai: openai.OpenAI) -> None:
    text = PAIRS[2][1]
    others = [f"filler sentence number {i} about {topic}" for i, topic in
              enumerate(["cats", "rain", "tax law", "jazz", "rust", "tea", "mars", "chess"] * 2)]
    alone = _vectors(oai, [text])[0]
    for position in (0, 7, 15):
        batch = [*others[:position], text, *others[position:15]]
        assert len(batch) == 16
        assert np.array_equal(_vectors(oai, batch)[position], alone), position


def test_ollama_embed_and_embeddings_give_the_same_vector(oai: openai.OpenAI, minilm_server: LiveServer) -> None:
    text = PAIRS[0][0]
    want = _vectors(oai, [text])[0]
    r = httpx.post(minilm_server.url + "/api/embed", json={"model": MODEL, "input": [text, PAIRS[0][1]]}, timeout=60)
    assert r.status_code == 200, r.text
    # The openai SDK asks for base64 float32; Ollama's JSON carries the same vector in float64.
    assert np.array_equal(np.asarray(r.json()["embeddings"][0], dtype=np.float32), want)
    legacy = httpx.post(minilm_server.url + "/api/embeddings", json={"model": MODEL, "prompt": text}, timeout=60)
    raw = np.asarray(legacy.json()["embedding"])  # not normalized, as Ollama's older endpoint
    assert np.allclose(raw / np.linalg.norm(raw), want, atol=1e-6) and abs(np.linalg.norm(raw) - 1) > 1e-3


def test_kind_is_in_v1_models_api_tags_api_show_and_lokal_list(minilm_server: LiveServer, model_home: Path) -> None:
    url = minilm_server.url
    cards = {m["id"]: m for m in httpx.get(url + "/v1/models").json()["data"]}
    assert cards[MODEL]["kind"] == "embedding" and cards[CHAT]["kind"] == "chat"
    assert httpx.get(url + f"/v1/models/{MODEL}").json()["kind"] == "embedding"
    tags = {m["name"]: m["details"] for m in httpx.get(url + "/api/tags").json()["models"]}
    assert tags[MODEL]["kind"] == "embedding" and tags[MODEL]["family"] == "bert"
    assert tags[CHAT]["kind"] == "chat"
    show = httpx.post(url + "/api/show", json={"model": MODEL}).json()
    assert show["capabilities"] == ["embedding"] and show["details"]["kind"] == "embedding"
    listed = subprocess.run([sys.executable, "-m", "lokal.cli.main", "list"], capture_output=True, text=True,
                            env={**os.environ, "LOKAL_HOME": str(model_home), "COLUMNS": "200"}, timeout=60)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:] if line.strip()}
    assert "KIND" in listed.stdout.splitlines()[0]
    assert "embedding" in rows[MODEL] and "chat" in rows[CHAT]


def test_a_chat_request_to_the_embedding_model_is_a_clear_400(oai: openai.OpenAI, minilm_server: LiveServer) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert "is an embedding model and cannot generate text" in str(info.value)
    assert info.value.code == "model_kind_mismatch"
    r = httpx.post(minilm_server.url + "/api/chat", timeout=30,
                   json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False})
    assert r.status_code == 400 and "embedding model" in r.json()["error"]
    r = httpx.post(minilm_server.url + "/v1/completions", json={"model": MODEL, "prompt": "hi"}, timeout=30)
    assert r.status_code == 400, r.text


def test_a_chat_model_still_embeds_from_its_hidden_states(oai: openai.OpenAI) -> None:
    # Documented in docs/api.md: any chat model embeds (mean of its last hidden states), for clients
    # that expect it; retrieval wants an embedding model.
    data = oai.embeddings.create(model=CHAT, input=["hello"]).data
    assert len(data[0].embedding) == 576


def test_rerank_uses_the_embedding_model_by_default_and_says_how(minilm_server: LiveServer) -> None:
    docs = ["The new movie is awesome!", "Steps to recover a forgotten account password", "Cats sleep a lot."]
    r = httpx.post(minilm_server.url + "/v1/rerank", json={"query": PAIRS[2][0], "documents": docs}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == f"{MODEL} (embedding similarity, not a cross-encoder)"
    assert body["results"][0]["index"] == 1 and abs(body["results"][0]["relevance_score"] - 0.7053) < 2e-3


def test_keep_alive_zero_unloads_the_embedding_model_after_the_request(minilm_server: LiveServer) -> None:
    url = minilm_server.url
    r = httpx.post(url + "/api/embed", json={"model": MODEL, "input": "x", "keep_alive": 0}, timeout=60)
    assert r.status_code == 200
    assert MODEL not in [m["name"] for m in httpx.get(url + "/api/ps").json()["models"]]
    r = httpx.post(url + "/api/embed", json={"model": MODEL, "input": "x", "keep_alive": "5m"}, timeout=60)
    ps = {m["name"]: m for m in httpx.get(url + "/api/ps").json()["models"]}
    # One idle slot of 512 tokens beside the weights: well under the chat model's figure.
    assert MODEL in ps and 40e6 < ps[MODEL]["size"] < 120e6


def test_inputs_longer_than_512_tokens_are_cut_by_ollama_and_refused_by_openai(
        oai: openai.OpenAI, minilm_server: LiveServer) -> None:
    long_text = "word " * 600  # 602 tokens with [CLS] and [SEP]
    r = httpx.post(minilm_server.url + "/api/embed", json={"model": MODEL, "input": long_text}, timeout=60)
    assert r.status_code == 200 and r.json()["prompt_eval_count"] == 512
    with pytest.raises(openai.BadRequestError) as info:
        oai.embeddings.create(model=MODEL, input=long_text)
    assert info.value.code == "context_length_exceeded"
