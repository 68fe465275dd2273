"""What a stored model is (chat, embedding, reranker, …), derived from its GGUF's metadata."""

from __future__ import annotations

from typing import Literal, get_args

from lokal.store.gguf_facts import GgufFacts

ModelKind = Literal["chat", "embedding", "reranker", "vision-projector", "speech-to-text", "text-to-speech"]
MODEL_KINDS: tuple[ModelKind, ...] = get_args(ModelKind)

# Kinds whose model answers /v1/embeddings (and /v1/rerank by cosine similarity).
EMBEDDING_KINDS: frozenset[ModelKind] = frozenset({"chat", "embedding"})
# Kinds whose model generates text (chat, completions, responses).
GENERATING_KINDS: frozenset[ModelKind] = frozenset({"chat"})

# llama.cpp's encoder-only text architectures: they cannot generate, only embed (or rank).
_ENCODER_ARCHITECTURES = frozenset({
    "bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "modern-bert", "neo-bert",
    "eurobert", "t5encoder",
})
# llama.cpp's ``enum llama_pooling_type``
_POOLING_NONE, _POOLING_RANK = 0, 4


def kind_from_facts(facts: GgufFacts) -> ModelKind:
    """The kind of a GGUF model: a CLIP file is a vision projector; a RANK pooling or classifier
    labels make a reranker; any other pooling, or an encoder-only architecture, an embedding model;
    everything else chat (llama.cpp's generative models store no pooling type)."""
    meta = facts.metadata
    arch = facts.architecture or ""
    if arch == "clip" or meta.get("general.type") == "mmproj":
        return "vision-projector"
    pooling = meta.get(f"{arch}.pooling_type")
    if pooling == _POOLING_RANK or f"{arch}.classifier.output_labels" in meta:
        return "reranker"
    if isinstance(pooling, int) and not isinstance(pooling, bool) and pooling != _POOLING_NONE:
        return "embedding"
    if arch in _ENCODER_ARCHITECTURES:
        return "embedding"
    return "chat"
