"""Automatic slot count from the model's KV size and free memory."""

from lokal.runtime.sizing import MAX_AUTO_SLOTS, auto_parallel, kv_bytes_per_token
from lokal.store.gguf_facts import GgufFacts

# SmolLM2-135M: 30 layers, 9 heads, 3 KV heads, 576 wide -> head_dim 64
SMOL = GgufFacts(architecture="llama", block_count=30, head_count=9, head_count_kv=3, embedding_length=576)


def test_kv_bytes_per_token_matches_hand_computation():
    assert kv_bytes_per_token(SMOL) == 2 * 30 * 3 * 64 * 2  # 23,040 bytes


def test_small_machine_gets_fewer_slots_and_never_zero():
    per_slot = 23_040 * 4096
    assert auto_parallel(SMOL, 4096, free_bytes=2 * per_slot * 3) == 3
    assert auto_parallel(SMOL, 4096, free_bytes=1) == 1


def test_big_machine_is_capped():
    assert auto_parallel(SMOL, 4096, free_bytes=1 << 40) == MAX_AUTO_SLOTS


def test_unknown_architecture_falls_back_to_one_slot():
    assert auto_parallel(GgufFacts(architecture="x"), 4096, free_bytes=1 << 40) == 1


def test_explicit_head_sizes_are_used_when_the_gguf_states_them():
    gemma = GgufFacts(
        architecture="gemma3", block_count=18, head_count=4, head_count_kv=1, embedding_length=640,
        metadata={"gemma3.attention.key_length": 256, "gemma3.attention.value_length": 256},
    )
    assert kv_bytes_per_token(gemma) == 18 * 1 * (256 + 256) * 2


# ---- the automatic context ------------------------------------------------------------------

def test_auto_context_is_the_trained_length_when_memory_allows():
    from lokal.runtime.sizing import auto_context

    assert auto_context(SMOL.model_copy(update={"context_length": 8192}), free_bytes=16 << 30) == 8192


def test_auto_context_is_capped_and_never_below_the_floor_or_above_the_trained_length():
    from lokal.runtime.sizing import AUTO_CTX_CEILING, AUTO_CTX_FLOOR, auto_context

    long = SMOL.model_copy(update={"context_length": 131072})
    assert auto_context(long, free_bytes=1 << 40) == AUTO_CTX_CEILING
    assert auto_context(long, free_bytes=1) == AUTO_CTX_FLOOR  # a starved machine still gets Ollama's default
    short = SMOL.model_copy(update={"context_length": 2048})
    assert auto_context(short, free_bytes=1 << 40) == 2048
    assert auto_context(GgufFacts(architecture="x"), free_bytes=1 << 40) == AUTO_CTX_FLOOR  # nothing known


def test_auto_context_halves_until_one_slot_takes_a_quarter_of_free_memory():
    from lokal.runtime.sizing import auto_context

    long = SMOL.model_copy(update={"context_length": 131072})
    per_token = 23_040
    # 8192 tokens of KV = a quarter of this much free memory: 16384 does not fit, 8192 does.
    assert auto_context(long, free_bytes=4 * per_token * 8192) == 8192


def test_settings_take_0_as_automatic_and_refuse_tiny_contexts():
    import pytest
    from pydantic import ValidationError

    from lokal.config import Settings

    assert Settings().ctx_size == 0
    assert Settings(ctx_size=512).ctx_size == 512
    with pytest.raises(ValidationError):
        Settings(ctx_size=32)
