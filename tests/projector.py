"""A tiny, randomly initialised LLaVA-style vision projector GGUF that llama.cpp's mtmd loads.

No real vision model with its projector is published on PyPI (searched: no GGUF vision model
or mmproj file; ``globalmm`` builds projectors but ships no weights). So the vision tests run
smollm2:135m with this projector: a 2-layer CLIP vision encoder over 32 × 32 images in 8 × 8
patches (16 image tokens) and an MLP (``mm.0``, GELU, ``mm.2``) whose output width is the text
model's embedding width. Its weights are random, so it cannot make a model *describe* an image;
it makes every image give the text model its own embeddings, which is what the mechanics tests
(images reach the model, the prefix cache, batching) need.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFWriter

IMAGE_SIZE = 32
PATCH_SIZE = 8
N_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
_N_EMBD, _N_HEAD, _N_FF, _N_LAYER, _N_HIDDEN = 64, 4, 128, 2, 128


def write_test_projector(path: Path, n_embd_out: int = 576, seed: int = 0) -> Path:
    """Write the projector (a few hundred KB) for a text model of width ``n_embd_out``."""
    rng = np.random.default_rng(seed)

    def weight(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = GGUFWriter(str(path), "clip")
    w.add_type("mmproj")
    w.add_name("lokal-test-projector")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_text_encoder", False)
    w.add_string("clip.projector_type", "mlp")
    w.add_bool("clip.use_gelu", True)
    w.add_uint32("clip.vision.image_size", IMAGE_SIZE)
    w.add_uint32("clip.vision.patch_size", PATCH_SIZE)
    w.add_uint32("clip.vision.embedding_length", _N_EMBD)
    w.add_uint32("clip.vision.feed_forward_length", _N_FF)
    w.add_uint32("clip.vision.projection_dim", n_embd_out)
    w.add_uint32("clip.vision.block_count", _N_LAYER)
    w.add_uint32("clip.vision.attention.head_count", _N_HEAD)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    w.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    w.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    w.add_uint32("general.file_type", 0)  # all F32
    # Shapes as numpy sees them: ggml's dimensions reversed (a linear layer is [out, in]).
    w.add_tensor("v.patch_embd.weight", weight(_N_EMBD, 3, PATCH_SIZE, PATCH_SIZE).astype(np.float16))
    w.add_tensor("v.patch_embd.bias", weight(_N_EMBD))
    w.add_tensor("v.position_embd.weight", weight(N_IMAGE_TOKENS, _N_EMBD))
    w.add_tensor("v.pre_ln.weight", np.ones(_N_EMBD, np.float32))
    w.add_tensor("v.pre_ln.bias", np.zeros(_N_EMBD, np.float32))
    for i in range(_N_LAYER):
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            w.add_tensor(f"v.blk.{i}.{name}.weight", weight(_N_EMBD, _N_EMBD))
            w.add_tensor(f"v.blk.{i}.{name}.bias", weight(_N_EMBD, scale=0.02))
        for name in ("ln1", "ln2"):
            w.add_tensor(f"v.blk.{i}.{name}.weight", np.ones(_N_EMBD, np.float32))
            w.add_tensor(f"v.blk.{i}.{name}.bias", np.zeros(_N_EMBD, np.float32))
        w.add_tensor(f"v.blk.{i}.ffn_up.weight", weight(_N_FF, _N_EMBD))
        w.add_tensor(f"v.blk.{i}.ffn_up.bias", weight(_N_FF, scale=0.02))
        w.add_tensor(f"v.blk.{i}.ffn_down.weight", weight(_N_EMBD, _N_FF))
        w.add_tensor(f"v.blk.{i}.ffn_down.bias", weight(_N_EMBD, scale=0.02))
    # The text model's token embeddings are small (smollm2: ~0.05 per component): so are these.
    w.add_tensor("mm.0.weight", weight(_N_HIDDEN, _N_EMBD, scale=0.1))
    w.add_tensor("mm.0.bias", weight(_N_HIDDEN, scale=0.01))
    w.add_tensor("mm.2.weight", weight(n_embd_out, _N_HIDDEN, scale=0.05))
    w.add_tensor("mm.2.bias", weight(n_embd_out, scale=0.01))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
