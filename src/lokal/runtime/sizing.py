"""What a model is loaded with when the user did not say: its context (``auto_context``), how
many slots (``auto_parallel``) and a shared KV pool's cells (``auto_pool_cells``), from the
model's facts and the free memory its KV cache goes to (VRAM when the model is offloaded)."""

from __future__ import annotations

from pathlib import Path

from lokal.advise.memory import MemoryEstimate, ModelShape, estimate_memory, kv_bytes_per_token, model_shape
from lokal.engine.llama_model import ContextShape
from lokal.store.gguf_facts import GgufFacts
from lokal.store.manifest import Manifest

MAX_AUTO_SLOTS = 8  # beyond this, CPU decode steps grow about linearly: more slots only add latency
KV_SHARE_OF_FREE_RAM = 0.5
# The automatic context (Ollama's rules, on the memory lokal runs in): the model's trained length,
# at least AUTO_CTX_FLOOR (Ollama's default), at most AUTO_CTX_CEILING: a CPU reads a prompt at
# about 1-2k tokens/s for a 0.5B model and far slower for bigger ones, so a longer default only
# reserves memory few prompts use (a request's num_ctx asks for more, up to the trained length).
AUTO_CTX_FLOOR = 4096
AUTO_CTX_CEILING = 16384
ONE_SLOT_SHARE_OF_FREE_RAM = 0.25  # one slot's KV cache at the automatic context
# A shared pool admits sequences by free cells, so it runs many more than slots would: a GPU
# decodes 128 sequences in about the time of a few, a CPU's step grows with each.
SHARED_AUTO_SEQUENCES_GPU = 128
SHARED_AUTO_SEQUENCES_CPU = 32
GROW_SHARE_OF_FREE_RAM = 0.7  # a model reloaded with a larger context must fit in this much (advise's "tight")


def auto_parallel(facts: GgufFacts, ctx_size: int, free_bytes: int) -> int:
    """Slots of ctx_size tokens whose KV cache fits in half the free memory, 1 to MAX_AUTO_SLOTS."""
    per_token = kv_bytes_per_token(facts)
    if per_token is None:
        return 1
    fitting = int(free_bytes * KV_SHARE_OF_FREE_RAM) // (per_token * ctx_size)
    return max(1, min(MAX_AUTO_SLOTS, fitting))


def auto_context(facts: GgufFacts, free_bytes: int) -> int:
    """The context of one slot when the user did not set one: the model's trained length,
    between AUTO_CTX_FLOOR and AUTO_CTX_CEILING, halved while one slot's KV cache would take
    more than a quarter of the free memory (never below the floor, nor above the trained length)."""
    trained = facts.context_length or AUTO_CTX_FLOOR
    floor = min(trained, AUTO_CTX_FLOOR)
    ctx = max(floor, min(trained, AUTO_CTX_CEILING))
    per_token = kv_bytes_per_token(facts)
    if per_token is not None:
        while ctx > floor and per_token * ctx > free_bytes * ONE_SLOT_SHARE_OF_FREE_RAM:
            ctx = max(floor, ctx // 2)
    return ctx


def auto_pool_cells(facts: GgufFacts, slot_ctx: int, n_slots: int, free_bytes: int) -> int:
    """A shared pool's cells when the user did not set them: those whose KV cache fits in the share
    of free memory slots get (KV_SHARE_OF_FREE_RAM), at most every sequence's whole context, at
    least one sequence's."""
    per_token = kv_bytes_per_token(facts)
    fitting = int(free_bytes * KV_SHARE_OF_FREE_RAM) // per_token if per_token else slot_ctx
    return max(slot_ctx, min(n_slots * slot_ctx, fitting))


def model_estimate(model: ModelShape, shape: ContextShape) -> MemoryEstimate:
    """The estimate for a model loaded with ``shape``: every slot's context, or a shared pool's cells."""
    cells = shape.n_ctx if shape.shared else None
    return estimate_memory(model, shape.slot_ctx, shape.n_slots, batch=shape.n_batch, cells=cells)


def model_memory_bytes(manifest: Manifest, shape: ContextShape, home: Path | None = None) -> int:
    """lokal's one memory figure for a model loaded with ``shape``: the estimate ``lokal advise``
    makes (weights, KV cache of every slot or of the shared pool, compute, overhead;
    docs/memory-estimate.md). Where its bytes go (VRAM, RAM): ``lokal.advise.offload``."""
    return model_estimate(model_shape(manifest, home), shape).total
