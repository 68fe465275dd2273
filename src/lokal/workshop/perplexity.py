"""A model's perplexity on a text, from its logits, computed as llama.cpp's ``llama-perplexity`` does.

The text is tokenized whole (with BOS where the model adds one) and cut into chunks of ``ctx``
tokens; each chunk is a sequence of its own, its first token replaced by BOS where the model adds
one, and only the second half of each chunk is scored, so every scored token has at least
``ctx / 2`` tokens of context. Several chunks go into one ``llama_decode`` (each in its own KV
stream), as many as fit in ``batch`` tokens. The result is exp of the mean negative log-likelihood
over every scored token, with the standard error llama-perplexity prints (``PPL = x +/- y``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from lokal.engine.llama_model import ContextShape, LlamaModel

# The text lokal ships for `lokal eval`: public domain (texts/README.md says where it comes from).
EVAL_TEXT = "macbeth-acts-1-2.txt"
DEFAULT_CTX = 512  # llama-perplexity's -c default in its published tables
DEFAULT_BATCH = 2048  # llama-perplexity's -b default: 4 chunks of 512 per llama_decode

ChunkProgress = Callable[[int, int], None]  # (chunks done, chunks in all)


class PerplexityError(ValueError):
    """The text is too short for the context, or the context or batch is unusable."""


@dataclass(frozen=True)
class Perplexity:
    """``ppl`` ± ``stderr`` over ``tokens`` scored tokens in ``chunks`` chunks of ``ctx`` tokens."""

    ppl: float
    stderr: float
    tokens: int
    chunks: int
    ctx: int
    text: str
    seconds: float

    def __str__(self) -> str:
        return f"PPL = {self.ppl:.4f} +/- {self.stderr:.5f}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def builtin_text(name: str = EVAL_TEXT) -> str:
    """A text shipped with lokal (``lokal/workshop/texts/``)."""
    return resources.files("lokal.workshop").joinpath("texts", name).read_text(encoding="utf-8")


def perplexity(
    gguf: Path,
    text: str | None = None,
    *,
    ctx: int = DEFAULT_CTX,
    batch: int = DEFAULT_BATCH,
    threads: int = 4,
    max_chunks: int | None = None,
    progress: ChunkProgress | None = None,
    text_name: str | None = None,
) -> Perplexity:
    """The perplexity of the GGUF model at ``gguf`` on ``text`` (default: lokal's built-in text).

    Raises :class:`PerplexityError` for a text shorter than two chunks (llama-perplexity's
    minimum) or a context below 16 tokens; :class:`lokal.engine.llama_model.ModelLoadError` for a
    file llama.cpp cannot load.
    """
    if ctx < 16:
        raise PerplexityError(f"the context must be at least 16 tokens, not {ctx}")
    if text is None:
        text, text_name = builtin_text(), text_name or EVAL_TEXT
    n_seq = max(1, batch // ctx)
    started = time.perf_counter()
    model = LlamaModel(gguf, ContextShape(slot_ctx=ctx, n_slots=n_seq, n_batch=n_seq * ctx, n_threads=threads))
    try:
        tokens = model.tokenize(text, add_special=True, parse_special=False)
        if len(tokens) < 2 * ctx:
            raise PerplexityError(
                f"the text has {len(tokens)} tokens; perplexity with a context of {ctx} needs at least {2 * ctx}"
            )
        n_chunks = len(tokens) // ctx if max_chunks is None else min(max_chunks, len(tokens) // ctx)
        nll = nll2 = 0.0
        count = 0
        for first_chunk in range(0, n_chunks, n_seq):
            chunks = range(first_chunk, min(first_chunk + n_seq, n_chunks))
            for seq in range(len(chunks)):
                model.forget(seq)
            for scored in _score_chunks(model, tokens, chunks, ctx):
                nll -= scored
                nll2 += scored * scored
                count += 1
            if progress is not None:
                progress(chunks.stop, n_chunks)
    finally:
        model.close()
    mean = nll / count
    variance = nll2 / count - mean * mean
    ppl = math.exp(mean)
    stderr = math.sqrt(variance / (count - 1)) * ppl if variance > 0 and count > 1 else 0.0
    return Perplexity(ppl=ppl, stderr=stderr, tokens=count, chunks=n_chunks, ctx=ctx,
                      text=text_name or "text", seconds=time.perf_counter() - started)


def _score_chunks(model: LlamaModel, tokens: list[int], chunks: range, ctx: int) -> list[float]:
    """One llama_decode of ``chunks`` (chunk i is sequence i - chunks.start); the log-probability of
    each token of their second halves given what came before it in its chunk."""
    first = ctx // 2
    # The BOS id, as the tokenizer adds it (LlamaModel names only its text).
    bos = model.tokenize("", add_special=True, parse_special=False)[0] if model.add_bos else None
    rows: list[tuple[int, int, int, bool]] = []
    for seq, chunk in enumerate(chunks):
        window = tokens[chunk * ctx:(chunk + 1) * ctx]
        if bos is not None:
            window[0] = bos  # every chunk starts as a document does
        rows.extend((token, pos, seq, pos >= first) for pos, token in enumerate(window))
    model.decode(rows, prompt=True)
    scores = []
    for seq, chunk in enumerate(chunks):
        for pos in range(first, ctx - 1):
            following = tokens[chunk * ctx + pos + 1]
            scores.append(model.logprobs(seq * ctx + pos, following, 0).logprob)
    return scores
