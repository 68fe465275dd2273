"""How many slots to run when the user did not say: as many as the KV cache memory allows,
up to the point where more parallel sequences stop adding throughput on a CPU."""

from __future__ import annotations

from lokal.store.gguf_facts import GgufFacts

MAX_AUTO_SLOTS = 8  # beyond this, CPU decode steps grow about linearly: more slots only add latency
KV_SHARE_OF_FREE_RAM = 0.5
F16_BYTES = 2
# Bytes per cached K/V element for the KV cache types llama.cpp offers (q8_0: 34-byte blocks of
# 32 values, q4_0: 18-byte blocks of 32).
KV_TYPE_BYTES: dict[str, float] = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}


def kv_bytes_per_token(facts: GgufFacts, kv_type: str = "f16") -> int | None:
    """K and V for every layer: layers x kv_heads x (key_length + value_length) x bytes per element
    of ``kv_type`` (f16 by default, as lokal runs). Head sizes default to embedding_length /
    head_count unless the GGUF states them (Gemma)."""
    if not (facts.block_count and facts.head_count and facts.embedding_length):
        return None
    default = facts.embedding_length // facts.head_count
    arch = facts.architecture or ""
    k = facts.metadata.get(f"{arch}.attention.key_length", default)
    v = facts.metadata.get(f"{arch}.attention.value_length", default)
    if not isinstance(k, int) or not isinstance(v, int):
        return None
    kv_heads = facts.head_count_kv or facts.head_count
    return int(facts.block_count * kv_heads * (k + v) * KV_TYPE_BYTES[kv_type])


def auto_parallel(facts: GgufFacts, ctx_size: int, free_bytes: int) -> int:
    """Slots of ctx_size tokens whose KV cache fits in half the free memory, 1 to MAX_AUTO_SLOTS."""
    per_token = kv_bytes_per_token(facts)
    if per_token is None:
        return 1
    fitting = int(free_bytes * KV_SHARE_OF_FREE_RAM) // (per_token * ctx_size)
    return max(1, min(MAX_AUTO_SLOTS, fitting))
