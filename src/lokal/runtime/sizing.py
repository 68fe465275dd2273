"""How many slots to run when the user did not say: as many as the KV cache memory allows,
up to the point where more parallel sequences stop adding throughput on a CPU."""

from __future__ import annotations

from pathlib import Path

from lokal.advise.memory import estimate_memory, kv_bytes_per_token, model_shape
from lokal.engine.llama_model import ContextShape
from lokal.store.gguf_facts import GgufFacts
from lokal.store.manifest import Manifest

MAX_AUTO_SLOTS = 8  # beyond this, CPU decode steps grow about linearly: more slots only add latency
KV_SHARE_OF_FREE_RAM = 0.5


def auto_parallel(facts: GgufFacts, ctx_size: int, free_bytes: int) -> int:
    """Slots of ctx_size tokens whose KV cache fits in half the free memory, 1 to MAX_AUTO_SLOTS."""
    per_token = kv_bytes_per_token(facts)
    if per_token is None:
        return 1
    fitting = int(free_bytes * KV_SHARE_OF_FREE_RAM) // (per_token * ctx_size)
    return max(1, min(MAX_AUTO_SLOTS, fitting))


def model_memory_bytes(manifest: Manifest, shape: ContextShape, home: Path | None = None) -> int:
    """lokal's one memory figure for a model loaded with ``shape``: the estimate ``lokal advise``
    makes (weights, KV cache of every slot, compute, overhead; docs/memory-estimate.md)."""
    model = model_shape(manifest, home)
    return estimate_memory(model, shape.slot_ctx, shape.n_slots, batch=shape.n_batch).total
