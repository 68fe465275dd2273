"""The Embedder on the real smollm2 weights (a generative model: mean pooling) and on a tiny
generated BERT (an embedding model: non-causal, pooling from its GGUF): pooled, normalized,
batch-independent vectors (each input equals itself embedded alone)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter, PoolingType, TokenType

from lokal.engine.embedder import Embedder, InputTooLong
from lokal.engine.llama_model import ContextShape, LlamaModel
from lokal.store.model_store import ModelStore

CAT = "The cat sat on the mat."
KITTEN = "A kitten is sleeping on the rug."
STOCKS = "Stock markets fell sharply after the interest rate decision."


@pytest.fixture(scope="module")
def model(model_home: Path) -> Iterator[LlamaModel]:
    path = ModelStore(model_home).gguf_path("smollm2:135m")
    m = LlamaModel(path, ContextShape(slot_ctx=512, n_slots=1, n_batch=64, n_threads=2))
    yield m
    m.close()


@pytest.fixture(scope="module")
def embedder(model: LlamaModel) -> Iterator[Embedder]:
    e = Embedder(model)
    yield e
    e.close()


def cosine(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_generative_model_without_pooling_in_its_gguf_is_mean_pooled(embedder: Embedder) -> None:
    assert embedder.pooling_name == "mean"


def test_vectors_are_unit_length_with_the_models_embedding_size(embedder: Embedder, model: LlamaModel) -> None:
    result = embedder.embed([CAT, STOCKS])
    n_embd = int(model.meta(f"{model.architecture}.embedding_length") or 0)
    assert embedder.n_embd == n_embd == 576
    assert len(result.vectors) == 2
    for v in result.vectors:
        assert len(v) == n_embd
        assert math.isclose(float(np.linalg.norm(v)), 1.0, rel_tol=1e-6)
    assert result.prompt_tokens == len(embedder.tokenize(CAT)) + len(embedder.tokenize(STOCKS))


def test_a_text_gets_the_same_vector_alone_or_batched_with_others(embedder: Embedder) -> None:
    alone = embedder.embed([CAT]).vectors[0]
    first = embedder.embed([CAT, KITTEN, STOCKS]).vectors[0]
    last = embedder.embed([STOCKS, KITTEN, CAT]).vectors[2]
    np.testing.assert_allclose(first, alone, atol=1e-5)
    np.testing.assert_allclose(last, alone, atol=1e-5)


def test_six_copies_and_other_texts_each_equal_the_text_embedded_alone(embedder: Embedder) -> None:
    # Batched in one shared KV cache, copies past ~128 tokens of batch differed by up to 2e-3.
    long = "Stock markets fell sharply after the interest rate decision, and investors fled to bonds " \
           "while the dollar rallied against most currencies."
    texts = [long] * 6 + [CAT, KITTEN, STOCKS, "hi", "a " * 40]
    together = embedder.embed(texts).vectors
    for text, vector in zip(texts, together, strict=True):
        alone = embedder.embed([text]).vectors[0]
        assert np.abs(np.asarray(vector) - np.asarray(alone)).max() <= 1e-6, text
    assert embedder.embed(list(reversed(texts))).vectors == list(reversed(together))


def test_different_texts_differ_and_similar_ones_are_closer(embedder: Embedder) -> None:
    cat, kitten, stocks = embedder.embed([CAT, KITTEN, STOCKS]).vectors
    assert cosine(cat, kitten) < 0.999
    assert cosine(cat, kitten) > cosine(cat, stocks)
    assert cosine(cat, kitten) > cosine(kitten, stocks)


def test_token_ids_embed_like_the_text_they_spell(embedder: Embedder) -> None:
    by_text = embedder.embed([CAT]).vectors[0]
    by_tokens = embedder.embed([embedder.tokenize(CAT)]).vectors[0]
    np.testing.assert_allclose(by_tokens, by_text, atol=1e-6)


def test_unnormalized_vectors_point_the_same_way(embedder: Embedder) -> None:
    raw = embedder.embed([CAT], normalize=False).vectors[0]
    unit = embedder.embed([CAT]).vectors[0]
    assert not math.isclose(float(np.linalg.norm(raw)), 1.0, rel_tol=1e-3)
    np.testing.assert_allclose(np.asarray(raw) / np.linalg.norm(raw), unit, atol=1e-6)


def test_long_input_is_cut_to_the_context_or_refused(model: LlamaModel) -> None:
    small = Embedder(model, n_ctx=32)
    try:
        long_tokens = small.tokenize("one two three four five six seven eight nine ten " * 8)
        assert len(long_tokens) > 32
        cut = small.embed([long_tokens], truncate=True)
        assert cut.prompt_tokens == 32
        np.testing.assert_allclose(cut.vectors[0], small.embed([long_tokens[:32]]).vectors[0], atol=1e-6)
        with pytest.raises(InputTooLong, match=r"holds 32 tokens") as info:
            small.embed(["short", long_tokens], truncate=False)
        assert (info.value.index, info.value.n_tokens) == (1, len(long_tokens))
    finally:
        small.close()


def test_empty_inputs(embedder: Embedder, model: LlamaModel) -> None:
    assert embedder.embed([]).vectors == []
    with pytest.raises(ValueError, match="empty"):
        embedder.embed([[]])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        embedder.embed([[model.n_vocab]])


def test_an_unloaded_models_embedder_refuses_work_before_touching_the_freed_vocab(model_home: Path) -> None:
    m = LlamaModel(ModelStore(model_home).gguf_path("smollm2:135m"),
                   ContextShape(slot_ctx=64, n_slots=1, n_batch=64, n_threads=1))
    e = Embedder(m)
    e.embed(["warm up"])
    e.close()
    m.close()  # what LoadedModel.close does; a request holding the LoadedModel may still call embed
    with pytest.raises(RuntimeError, match="unloaded"):
        e.embed(["again"])
    with pytest.raises(RuntimeError, match="unloaded"):
        e.embed([])


# ---- an embedding model: a tiny BERT written here (random weights, a 16-word WordPiece vocab) ----
BERT_WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "stock", "market", "fell", "."]


def write_tiny_bert(path: Path, pooling: int, n_embd: int = 32, n_ctx_train: int = 64) -> Path:
    rng = np.random.default_rng(7)
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += ["\u2581" + w for w in BERT_WORDS]  # WordPiece word starts, as llama.cpp's converter writes them
    w = GGUFWriter(str(path), "bert")
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(2 * n_embd)
    w.add_block_count(1)
    w.add_head_count(2)
    w.add_layer_norm_eps(1e-12)
    w.add_causal_attention(False)
    if pooling != PoolingType.NONE:
        w.add_pooling_type(PoolingType(pooling))
    w.add_tokenizer_model("bert")
    w.add_token_list(tokens)
    w.add_token_types([TokenType.CONTROL if t.startswith("[") else TokenType.NORMAL for t in tokens])
    w.add_token_type_count(2)
    w.add_bos_token_id(101)
    w.add_sep_token_id(102)
    w.add_unk_token_id(100)
    w.add_pad_token_id(0)

    def rand(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) * 0.2

    def norm(prefix: str) -> None:
        w.add_tensor(f"{prefix}.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"{prefix}.bias", np.zeros(n_embd, dtype=np.float32))

    w.add_tensor("token_embd.weight", rand(len(tokens), n_embd))
    w.add_tensor("token_types.weight", rand(2, n_embd))
    w.add_tensor("position_embd.weight", rand(n_ctx_train, n_embd))
    norm("token_embd_norm")
    for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
        w.add_tensor(f"blk.0.{name}.weight", rand(n_embd, n_embd))
        w.add_tensor(f"blk.0.{name}.bias", rand(n_embd))
    norm("blk.0.attn_output_norm")
    w.add_tensor("blk.0.ffn_up.weight", rand(2 * n_embd, n_embd))
    w.add_tensor("blk.0.ffn_down.weight", rand(n_embd, 2 * n_embd))
    norm("blk.0.layer_output_norm")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(params=[PoolingType.CLS, PoolingType.MEAN, PoolingType.NONE], ids=["cls", "mean", "none"])
def bert(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, LlamaModel]]:
    path = write_tiny_bert(tmp_path / "tiny-bert.gguf", int(request.param))
    m = LlamaModel(path, ContextShape(slot_ctx=512, n_slots=1, n_batch=64, n_threads=1))
    yield int(request.param), m
    m.close()


def test_an_embedding_models_pooling_comes_from_its_gguf(bert: tuple[int, LlamaModel]) -> None:
    pooling, model = bert
    e = Embedder(model)
    try:
        assert e.pooling_name == {PoolingType.CLS: "cls", PoolingType.MEAN: "mean", PoolingType.NONE: "mean"}[pooling]
        assert e.n_embd == 32
        assert e.n_ctx == 64  # capped by the GGUF's training context, not the 512 asked for
        assert e.tokenize("the cat sat.")[0] == 101 and e.tokenize("the cat sat.")[-1] == 102  # [CLS] … [SEP]
        texts = ["the cat sat on the mat", "a dog ran", "stock market fell"]
        together = e.embed(texts).vectors
        np.testing.assert_allclose(np.linalg.norm(together, axis=1), np.ones(3), rtol=1e-6)
        # Non-causal attention: neighbours in the batch must still not see each other.
        np.testing.assert_allclose(e.embed([texts[1]]).vectors[0], together[1], atol=1e-5)
        assert cosine(together[0], together[2]) < 0.999
        with pytest.raises(InputTooLong, match="holds 64 tokens"):
            e.embed(["the cat " * 40], truncate=False)
        assert e.embed(["the cat " * 40]).prompt_tokens == 64
    finally:
        e.close()
