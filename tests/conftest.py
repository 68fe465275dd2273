"""Fixtures shared by every test folder: a pulled model home and tiny generated GGUF files."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_CHAT_TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """A safetensors file of F32 tensors, written by hand (the format is a JSON header and the bytes)."""
    header, offset, blobs = {}, 0, []
    for name, array in tensors.items():
        data = np.ascontiguousarray(array, dtype=np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def link_model(src_home: Path, dst_home: Path, name: str) -> None:
    """Put model ``name`` of the store at ``src_home`` into the one at ``dst_home``: its blob hard-linked
    (a symlink across file systems), its manifest copied."""
    from lokal.store.model_store import ModelStore

    src, dst = ModelStore(src_home), ModelStore(dst_home)
    manifest = src.get(name)
    blob = dst.blob_path(manifest.digest)
    blob.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src.blob_path(manifest.digest), blob)
    except OSError:
        blob.symlink_to(src.blob_path(manifest.digest))
    dst.write_manifest(manifest)


@pytest.fixture(scope="session")
def model_home() -> Path:
    """A lokal home with ``smollm2:135m`` pulled (``$LOKAL_TEST_HOME`` or ``.test-home/``).

    Kept between runs so that the model is downloaded once per machine.
    """
    from lokal.store.model_store import ModelStore
    from lokal.store.pull import pull_model

    home = Path(os.environ.get("LOKAL_TEST_HOME") or REPO_ROOT / ".test-home")
    pull_model(ModelStore(home), "smollm2:135m")
    return home


def write_tiny_gguf(
    path: Path,
    *,
    seed: int = 0,
    arch: str = "llama",
    file_type: int | None = int(LlamaFileType.MOSTLY_Q8_0),
    chat_template: str | None = TINY_CHAT_TEMPLATE,
    parameter_count: int | None = None,
    n_vocab: int = 64,
    tokenizer_model: str | None = None,
) -> Path:
    """Write a few-KB GGUF with llama-style metadata and tensors; ``seed`` varies its bytes."""
    rng = np.random.default_rng(seed)
    writer = GGUFWriter(str(path), arch)
    writer.add_name(f"tiny-{seed}")
    writer.add_context_length(256)
    writer.add_embedding_length(32)
    writer.add_block_count(1)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_license("mit")
    writer.add_array("general.tags", ["tiny", "test"])
    writer.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(n_vocab)])
    writer.add_array("tokenizer.ggml.scores", [float(i) for i in range(n_vocab)])
    if tokenizer_model is not None:
        writer.add_tokenizer_model(tokenizer_model)
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
    if file_type is not None:
        writer.add_file_type(file_type)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    if parameter_count is not None:
        writer.add_uint64("general.parameter_count", parameter_count)
    writer.add_tensor("token_embd.weight", rng.standard_normal((n_vocab, 32), dtype=np.float32))
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(32, dtype=np.float32))
    # Two Q8_0 matrices (raw blocks: 34 bytes per 32 values) so that Q8_0 dominates.
    for name in ("blk.0.attn_q.weight", "blk.0.ffn_up.weight"):
        raw = rng.integers(0, 255, size=(64, 34 * 2), dtype=np.uint8)
        writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``tiny_gguf(seed=1)`` writes a distinct tiny GGUF under ``tmp_path``."""

    def make(name: str | None = None, **options: object) -> Path:
        seed = options.get("seed", 0)
        return write_tiny_gguf(tmp_path / (name or f"tiny-{seed}.gguf"), **options)  # type: ignore[arg-type]

    return make
