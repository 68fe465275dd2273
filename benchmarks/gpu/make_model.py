"""Write a randomly initialised Llama-architecture GGUF (F16), optionally quantized, for GPU speed runs.

    python benchmarks/gpu/make_model.py OUT.gguf [--dims llama3-8b|tiny] [--quantize Q4_K_M] [--threads N]

The weights are random (normal, std 0.02), so the text is noise: the file is for speed and memory
measurements only. The vocabulary is synthetic but a real byte-level BPE one in Llama 3's layout
(tokenizer "gpt2", pre-tokenizer "llama-bpe", 256 special tokens at the end, <|begin_of_text|> and
<|eot_id|> where Llama 3 has them): the 256 byte tokens, merges that join letters into 2- and
3-character tokens (so English takes roughly 2-3 characters per token), then filler tokens up to the
vocabulary size. Tensors are written one at a time from a shared pool of random values, so an 8B file
(16 GB) needs little memory. ``--quantize`` runs llama.cpp's own quantizer (llama_model_quantize, what
``llama-quantize`` calls) through the installed llama_cpp; the F16 file (``--f16``, default
OUT.f16.gguf) is reused when it exists and deleted afterwards. Files appear only when complete.
"""

from __future__ import annotations

import argparse
import string
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, LlamaFileType, TokenType


@dataclass(frozen=True)
class Dims:
    """A Llama model's shape."""

    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_vocab: int
    n_ctx_train: int = 131072

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


DIMS = {
    "llama3-8b": Dims(n_layer=32, n_embd=4096, n_ff=14336, n_head=32, n_head_kv=8, n_vocab=128256),
    "tiny": Dims(n_layer=2, n_embd=64, n_ff=128, n_head=4, n_head_kv=2, n_vocab=1000, n_ctx_train=2048),
}

# Llama 3.1's chat template, without tools.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LLAMA3_SPECIALS = {0: "<|begin_of_text|>", 1: "<|end_of_text|>", 4: "<|finetune_right_pad_id|>",
                   6: "<|start_header_id|>", 7: "<|end_header_id|>", 8: "<|eom_id|>", 9: "<|eot_id|>",
                   10: "<|python_tag|>"}
BOS, EOT = 0, 9  # offsets into the special tokens


def byte_tokens() -> list[str]:
    """GPT-2's byte-to-unicode map: the 256 single-byte tokens of a byte-level BPE vocabulary."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def bpe_vocab(n_vocab: int) -> tuple[list[str], list[str], list[int], int]:
    """Tokens, merges, token types and the first special token's id for ``n_vocab`` tokens."""
    n_special = 256 if n_vocab >= 4096 else 16
    n_regular = n_vocab - n_special
    if n_regular < 256:
        raise ValueError(f"n_vocab must be at least {256 + n_special}")
    space = byte_tokens()[ord(" ")]  # "Ġ"
    letters = string.ascii_lowercase
    merges = [f"{space} {a}" for a in letters]
    merges += [f"{a} {b}" for a in letters for b in letters]
    merges += [f"{space}{a} {b}" for a in letters for b in letters]
    merges = merges[: n_regular - 256]
    tokens = byte_tokens() + [m.replace(" ", "") for m in merges]
    i = 0
    while len(tokens) < n_regular:  # filler: words of 4+ letters that no merge produces
        word, k = "", i + 26**3
        while k:
            k, r = divmod(k, 26)
            word += letters[r]
        tokens.append(space + word)
        i += 1
    first_special = len(tokens)
    tokens += [LLAMA3_SPECIALS.get(k, f"<|reserved_special_token_{k}|>") for k in range(n_special)]
    types = [int(TokenType.NORMAL)] * first_special + [int(TokenType.CONTROL)] * n_special
    return tokens, merges, types, first_special


def tensor_shapes(d: Dims) -> list[tuple[str, tuple[int, ...]]]:
    """The Llama tensors in GGUF's names, each with its numpy shape (rows, columns)."""
    kv = d.n_head_kv * d.head_dim
    shapes: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (d.n_vocab, d.n_embd))]
    for i in range(d.n_layer):
        b = f"blk.{i}."
        shapes += [(b + "attn_norm.weight", (d.n_embd,)), (b + "attn_q.weight", (d.n_embd, d.n_embd)),
                   (b + "attn_k.weight", (kv, d.n_embd)), (b + "attn_v.weight", (kv, d.n_embd)),
                   (b + "attn_output.weight", (d.n_embd, d.n_embd)), (b + "ffn_norm.weight", (d.n_embd,)),
                   (b + "ffn_gate.weight", (d.n_ff, d.n_embd)), (b + "ffn_up.weight", (d.n_ff, d.n_embd)),
                   (b + "ffn_down.weight", (d.n_embd, d.n_ff))]
    shapes += [("output_norm.weight", (d.n_embd,)), ("output.weight", (d.n_vocab, d.n_embd))]
    return shapes


def write_random_llama(path: Path, d: Dims, seed: int = 0, name: str = "random-llama") -> int:
    """Write an F16 Llama GGUF with random weights (norms f32 ones); returns the parameter count."""
    rng = np.random.default_rng(seed)
    pool = (rng.standard_normal(1 << 24, dtype=np.float32) * 0.02).astype(np.float16)
    tokens, merges, types, first_special = bpe_vocab(d.n_vocab)
    part = path.with_name(path.name + ".part")
    w = GGUFWriter(str(part), "llama")
    w.add_name(name)
    w.add_file_type(int(LlamaFileType.MOSTLY_F16))
    w.add_context_length(d.n_ctx_train)
    w.add_embedding_length(d.n_embd)
    w.add_block_count(d.n_layer)
    w.add_feed_forward_length(d.n_ff)
    w.add_head_count(d.n_head)
    w.add_head_count_kv(d.n_head_kv)
    w.add_rope_dimension_count(d.head_dim)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(d.n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(first_special + BOS)
    w.add_eos_token_id(first_special + EOT)
    w.add_eot_token_id(first_special + EOT)
    w.add_add_bos_token(True)
    w.add_chat_template(CHAT_TEMPLATE)
    shapes = tensor_shapes(d)
    for tname, shape in shapes:
        dtype = np.dtype(np.float32) if len(shape) == 1 else np.dtype(np.float16)
        w.add_tensor_info(tname, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    params = 0
    for _, shape in shapes:
        n = int(np.prod(shape))
        params += n
        if len(shape) == 1:
            w.write_tensor_data(np.ones(shape, dtype=np.float32))
            continue
        start = int(rng.integers(0, pool.size))  # each matrix a different stretch of the pool
        w.write_tensor_data(np.resize(np.roll(pool, -start), n).reshape(shape))
    w.close()
    part.replace(path)
    return params


def quantize(src: Path, dst: Path, ftype: str, threads: int) -> None:
    """llama.cpp's quantizer (what llama-quantize runs), as ``lokal quantize`` runs it."""
    from lokal.workshop.quantize import QuantizeError, quantize_file

    part = dst.with_name(dst.name + ".part")
    try:
        quantize_file(src, part, ftype, threads=threads)
    except QuantizeError as exc:  # an unknown type, or llama.cpp's refusal
        part.unlink(missing_ok=True)
        raise SystemExit(str(exc)) from None
    part.replace(dst)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--dims", choices=sorted(DIMS), default="llama3-8b")
    ap.add_argument("--quantize", metavar="TYPE", help="e.g. Q4_K_M: quantize and keep only the result")
    ap.add_argument("--f16", type=Path, help="the F16 file to quantize (default OUT.f16.gguf; written if missing)")
    ap.add_argument("--threads", type=int, default=0, help="quantizer threads (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    d = DIMS[args.dims]
    t0 = time.monotonic()
    f16 = (args.f16 or args.out.with_name(args.out.stem + ".f16.gguf")) if args.quantize else args.out
    if args.quantize and f16.is_file():
        print(f"using {f16}", flush=True)
    else:
        params = write_random_llama(f16, d, args.seed, name=f"random-{args.dims}")
        print(f"wrote {f16} ({params / 1e9:.2f}B parameters, {f16.stat().st_size / 2**30:.2f} GiB F16) "
              f"in {time.monotonic() - t0:.0f} s", flush=True)
    if args.quantize:
        t1 = time.monotonic()
        quantize(f16, args.out, args.quantize, args.threads)
        f16.unlink()
        print(f"quantized to {args.quantize}: {args.out} ({args.out.stat().st_size / 2**30:.2f} GiB) "
              f"in {time.monotonic() - t1:.0f} s", flush=True)


if __name__ == "__main__":
    main()
