"""/api/show's capabilities from a model's GGUF facts, template and vocabulary."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from lokal.server.ollama.capabilities import capabilities, has_fim
from lokal.store.gguf_facts import GgufFacts

CHATML_WITH_TOOLS = "{% if tools %}{{ tools | tojson }}{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}"
QWEN3_LIKE = "{% if enable_thinking is false %}<think>\n\n</think>{% endif %}{{ messages[0].content }}"
LLAMA = GgufFacts(architecture="llama", chat_template="{% for m in messages %}{{ m.content }}{% endfor %}")


def vocab_file(path: Path, tokens: list[str]) -> Path:
    """Bytes laid out like a GGUF string array (u64 length, then UTF-8), as the vocabulary is stored."""
    body = b"GGUF" + b"".join(struct.pack("<Q", len(t.encode())) + t.encode() for t in tokens)
    path.write_bytes(body)
    return path


def test_a_plain_chat_model_only_completes() -> None:
    assert capabilities(LLAMA, None, None) == ["completion"]


def test_tools_come_from_a_template_that_renders_them_and_thinking_from_a_reasoning_template() -> None:
    assert capabilities(LLAMA, CHATML_WITH_TOOLS, None) == ["completion", "tools"]
    assert capabilities(LLAMA, QWEN3_LIKE, None) == ["completion", "thinking"]


def test_embedding_models_and_pooling_generative_models_only_embed() -> None:
    assert capabilities(GgufFacts(architecture="bert"), None, None) == ["embedding"]
    # A pooling type marks an embedding model (Qwen3-Embedding: qwen3 with LAST pooling), as in Ollama.
    pooled = GgufFacts(architecture="qwen2", metadata={"qwen2.pooling_type": 1})
    assert capabilities(pooled, "x", None) == ["embedding"]
    ranker = GgufFacts(architecture="bert", metadata={"bert.pooling_type": 4})
    assert capabilities(ranker, None, None) == []


@pytest.mark.parametrize("names", [
    ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"],  # Qwen2.5-Coder
    ["<fim_prefix>", "<fim_suffix>", "<fim_middle>"],  # StarCoder
    ["<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"],  # DeepSeek-Coder
])
def test_insert_needs_all_three_fim_tokens_in_the_vocabulary(tmp_path: Path, names: list[str]) -> None:
    full = vocab_file(tmp_path / "full.gguf", ["<s>", *names, "hello"])
    assert has_fim(LLAMA, full)
    assert capabilities(LLAMA, None, full) == ["completion", "insert"]
    partial = vocab_file(tmp_path / "partial.gguf", ["<s>", *names[:2], "hello"])
    assert not has_fim(LLAMA, partial)
    # The text inside a longer string (a chat template mentioning it) is not a token.
    mention = vocab_file(tmp_path / "mention.gguf", ["say " + " ".join(names)])
    assert not has_fim(LLAMA, mention)


def test_fim_token_ids_in_the_metadata_are_enough() -> None:
    keys = {"tokenizer.ggml.fim_pre_token_id": 1, "tokenizer.ggml.fim_suf_token_id": 2,
            "tokenizer.ggml.fim_mid_token_id": 3}
    assert has_fim(GgufFacts(architecture="llama", metadata=keys), None)
    assert not has_fim(GgufFacts(architecture="llama", metadata={"tokenizer.ggml.fim_pre_token_id": 1}), None)


def test_the_stored_test_models_say_what_llama_cpp_finds(model_home: Path) -> None:
    from lokal.store.model_store import ModelStore

    store = ModelStore(model_home)
    smol = store.get("smollm2:135m")
    # SmolLM2's template has no tools and its vocabulary no FIM tokens (llama.cpp finds none either).
    assert capabilities(smol.facts, smol.template, store.gguf_path("smollm2:135m")) == ["completion"]
