"""A real model's GGUF with random weights: its header travels, its weights are made where it runs.

    python benchmarks/gpu/like_model.py head REAL.gguf HEAD.gz   # here: the header (metadata, vocabulary,
                                                                 # tensor table), gzipped: a few MB
    python benchmarks/gpu/like_model.py fill HEAD.gz OUT.gguf    # there: the header as it was, then
                                                                 # random tensors of the same types

The GPU machine cannot download a catalog model and the 64 MiB that travel cannot hold one (the largest,
qwen2.5-coder:0.5b, is 491 MB), but its header can. ``fill`` writes the file back byte for byte up to the
data section, so architecture, vocabulary, chat template, quantization types and tensor sizes are the
real model's, and fills each tensor with random but finite values: every quantized block gets a small
positive f16 scale, 1-D F32 tensors (norms, biases) are ones. Speed and memory are the real model's;
the text is noise.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from lokal.store.gguf_header import GgufHeader, TensorInfo, read_gguf_header, read_gguf_header_prefix

Q = GGMLQuantizationType
# Byte offsets of each block's f16 scale fields (ggml-common.h): random bytes there could be inf or NaN.
SCALE_OFFSETS: dict[GGMLQuantizationType, tuple[int, ...]] = {
    Q.Q4_0: (0,), Q.Q4_1: (0, 2), Q.Q5_0: (0,), Q.Q5_1: (0, 2), Q.Q8_0: (0,),
    Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,),
}
HUGE = 1 << 62  # a file size no header's tensors reach: the header alone is parsed


def write_head(src: Path, dst: Path) -> GgufHeader:
    """The bytes of ``src`` before its data section, gzipped into ``dst``."""
    header = read_gguf_header(src)
    with open(src, "rb") as f:
        prefix = f.read(header.data_offset)
    dst.write_bytes(gzip.compress(prefix, mtime=0))
    return header


def read_head(path: Path) -> tuple[bytes, GgufHeader]:
    prefix = gzip.decompress(path.read_bytes())
    return prefix, read_gguf_header_prefix(prefix, HUGE)


def data_size(header: GgufHeader) -> int:
    """The data section's size: the last tensor's end, padded to the alignment as GGUF writers do."""
    alignment = int(header.metadata.get("general.alignment", 32))
    end = max((t.offset + t.n_bytes for t in header.tensors), default=0)
    return -(-end // alignment) * alignment


def random_tensor(rng: np.random.Generator, t: TensorInfo) -> np.ndarray:
    """``t.n_bytes`` bytes of finite random values in ``t``'s type."""
    if t.type == Q.F32:
        values = np.ones(t.n_elements, np.float32) if len(t.shape) == 1 else \
            (rng.standard_normal(t.n_elements, dtype=np.float32) * 0.02)
        return values.view(np.uint8)
    if t.type in (Q.F16, Q.BF16):
        values = rng.standard_normal(t.n_elements, dtype=np.float32) * 0.02
        if t.type == Q.F16:
            return values.astype(np.float16).view(np.uint8)
        return (values.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    offsets = SCALE_OFFSETS.get(t.type)
    if offsets is None:
        raise SystemExit(f"{t.name}: no random filling for {t.type.name} (add its scale offsets)")
    block_bytes = GGML_QUANT_SIZES[t.type][1]
    blocks = rng.integers(0, 256, size=(t.n_bytes // block_bytes, block_bytes), dtype=np.uint8)
    scales = rng.uniform(5e-5, 2e-4, size=(blocks.shape[0], len(offsets))).astype(np.float16).view(np.uint8)
    for i, off in enumerate(offsets):
        blocks[:, off:off + 2] = scales[:, 2 * i:2 * i + 2]
    return blocks.reshape(-1)


def fill(head: Path, out: Path, seed: int = 0) -> GgufHeader:
    """Write ``out``: the header from ``head``, then each tensor's random bytes at its offset."""
    prefix, header = read_head(head)
    rng = np.random.default_rng(seed)
    part = out.with_name(out.name + ".part")
    with open(part, "wb") as f:
        f.write(prefix)
        f.truncate(header.data_offset + data_size(header))  # the gaps between tensors stay zero
        for t in sorted(header.tensors, key=lambda t: t.offset):
            f.seek(header.data_offset + t.offset)
            random_tensor(rng, t).tofile(f)
    part.replace(out)
    return header


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("head", help="REAL.gguf -> HEAD.gz")
    h.add_argument("src", type=Path)
    h.add_argument("dst", type=Path)
    f = sub.add_parser("fill", help="HEAD.gz -> OUT.gguf with random weights")
    f.add_argument("head", type=Path)
    f.add_argument("out", type=Path)
    f.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.cmd == "head":
        header = write_head(args.src, args.dst)
        print(f"{args.dst}: {len(header.tensors)} tensors, header {header.data_offset / 2**20:.1f} MiB, "
              f"{args.dst.stat().st_size / 2**20:.1f} MiB gzipped")
    else:
        header = fill(args.head, args.out, args.seed)
        print(f"{args.out}: {args.out.stat().st_size / 2**20:.0f} MiB, {len(header.tensors)} random tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
