"""convert_bert on a tiny BERT folder the test writes (random weights): the GGUF llama.cpp loads,
embeds with, and reads as an embedding model; the same bytes twice; folders it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lokal.store.bert_gguf import convert_bert, read_safetensors
from lokal.store.errors import PullError
from lokal.store.gguf_facts import read_gguf_facts
from lokal.store.kinds import kind_from_facts
from tests.conftest import write_safetensors

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["hello", "world", "##s", "cat", "dog", "the", ".", "a"]
HIDDEN, FFN, LAYERS = 32, 64, 2


def tiny_bert(folder: Path, model_type: str = "bert") -> Path:
    rng = np.random.default_rng(0)
    vocab = SPECIAL + WORDS
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": model_type, "hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": LAYERS,
        "num_attention_heads": 4, "max_position_embeddings": 64, "layer_norm_eps": 1e-12, "type_vocab_size": 2,
        "vocab_size": len(vocab)}))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))

    def w(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32) * 0.1

    tensors = {
        "embeddings.word_embeddings.weight": w(len(vocab), HIDDEN),
        "embeddings.position_embeddings.weight": w(64, HIDDEN),
        "embeddings.token_type_embeddings.weight": w(2, HIDDEN),
        "embeddings.LayerNorm.weight": np.ones(HIDDEN), "embeddings.LayerNorm.bias": np.zeros(HIDDEN),
        "pooler.dense.weight": w(HIDDEN, HIDDEN), "pooler.dense.bias": w(HIDDEN),
    }
    for layer in range(LAYERS):
        p = f"encoder.layer.{layer}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            tensors[p + name + ".weight"], tensors[p + name + ".bias"] = w(HIDDEN, HIDDEN), w(HIDDEN)
        tensors[p + "intermediate.dense.weight"], tensors[p + "intermediate.dense.bias"] = w(FFN, HIDDEN), w(FFN)
        tensors[p + "output.dense.weight"], tensors[p + "output.dense.bias"] = w(HIDDEN, FFN), w(HIDDEN)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            tensors[p + norm + ".weight"], tensors[p + norm + ".bias"] = np.ones(HIDDEN), np.zeros(HIDDEN)
    write_safetensors(folder / "model.safetensors", tensors)
    return folder


def test_the_gguf_is_an_embedding_model_llama_cpp_loads_and_the_same_bytes_twice(tmp_path: Path) -> None:
    from lokal.engine.embedder import Embedder
    from lokal.engine.llama_model import ContextShape, LlamaModel

    folder = tiny_bert(tmp_path / "bert")
    assert read_safetensors(folder / "model.safetensors")["embeddings.LayerNorm.weight"].tolist() == [1.0] * HIDDEN
    first, second = tmp_path / "a.gguf", tmp_path / "b.gguf"
    convert_bert(folder, first, "tiny-bert")
    convert_bert(folder, second, "tiny-bert")
    assert first.read_bytes() == second.read_bytes()
    facts = read_gguf_facts(first)
    assert (facts.architecture, facts.embedding_length, facts.block_count) == ("bert", HIDDEN, LAYERS)
    assert facts.metadata["bert.pooling_type"] == 1 and facts.metadata["bert.attention.causal"] is False
    assert kind_from_facts(facts) == "embedding"

    model = LlamaModel(first, ContextShape(slot_ctx=64, n_slots=1, n_batch=64, n_threads=1))
    embedder = Embedder(model)
    try:
        # WordPiece in llama.cpp's form: [CLS] the cat ##s [SEP], ids as in vocab.txt
        assert embedder.tokenize("The cats") == [2, 10, 8, 7, 3]
        vectors = embedder.embed(["the cats", "hello world", "the cats"]).vectors
        assert len(vectors[0]) == HIDDEN and vectors[0] == vectors[2] and vectors[0] != vectors[1]
    finally:
        embedder.close()
        model.close()


def test_folders_that_are_not_bert_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PullError, match="config.json"):
        convert_bert(tmp_path, tmp_path / "x.gguf", "x")
    with pytest.raises(PullError, match="not 'bert'"):
        convert_bert(tiny_bert(tmp_path / "roberta", model_type="roberta"), tmp_path / "y.gguf", "y")
    no_cls = tiny_bert(tmp_path / "no-cls")
    (no_cls / "vocab.txt").write_text("\n".join(w for w in SPECIAL + WORDS if w != "[CLS]") + "\n")
    with pytest.raises(PullError, match=r"lacks \[CLS\]"):  # llama.cpp would abort on its first tokenize
        convert_bert(no_cls, tmp_path / "z.gguf", "z")
