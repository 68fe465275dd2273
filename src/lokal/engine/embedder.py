"""Sentence embeddings from any GGUF: a pooled-embedding llama.cpp context beside the model's
generation context, over the same weights.

The generation context decodes with pooling off and one KV stream per slot; pooled embeddings
need every token of a sequence in one ubatch and pooling on, so they get a context of their own
(created on the first embed, freed before the model). Both contexts only read the shared
``llama_model``, so an embedding never touches the engine thread's state.

Each input is computed in a llama_decode of its own, from empty KV cells, so its vector is
exactly the vector it gets alone, whatever else the request holds. Packing several inputs in one
decode (a shared, unified KV cache) put each sequence's cells at offsets that depended on its
neighbours; attention then summed the same terms in other SIMD lanes (a ~1e-7 difference), and
the next layer's int8 quantization of activations (Q8_1 for Q4/Q8 weights) turned that into a
different rounding step: up to 2e-3 per component. Measured cost in docs/api.md."""

from __future__ import annotations

import ctypes
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import llama_cpp as C

from lokal.engine.llama_model import LlamaModel, ModelLoadError, kernel_modes

_POOLING_NAMES = {
    C.LLAMA_POOLING_TYPE_MEAN: "mean",
    C.LLAMA_POOLING_TYPE_CLS: "cls",
    C.LLAMA_POOLING_TYPE_LAST: "last",
}


class InputTooLong(ValueError):
    """An input has more tokens than the embedding context holds, and truncation is off."""

    def __init__(self, index: int, n_tokens: int, n_ctx: int) -> None:
        super().__init__(
            f"input {index} is {n_tokens} tokens but the embedding context holds {n_ctx} tokens; "
            f"shorten it or allow truncation"
        )
        self.index = index
        self.n_tokens = n_tokens
        self.n_ctx = n_ctx


@dataclass(frozen=True)
class EmbedResult:
    """One vector per input, in input order, and the tokens read (after truncation)."""

    vectors: list[list[float]]
    prompt_tokens: int


def model_pooling(model: LlamaModel) -> int:
    """The GGUF's pooling type (``<arch>.pooling_type``), or MEAN when it has none: generative
    models store none (or NONE), and a mean over the last hidden states is the usual choice."""
    raw = model.meta(f"{model.architecture}.pooling_type")
    try:
        value = int(raw) if raw is not None else C.LLAMA_POOLING_TYPE_NONE
    except ValueError:
        value = C.LLAMA_POOLING_TYPE_NONE
    return value if value in _POOLING_NAMES else C.LLAMA_POOLING_TYPE_MEAN


def l2_normalize(vector: list[float]) -> list[float]:
    norm = math.sqrt(math.fsum(x * x for x in vector))
    if not math.isfinite(norm):
        raise RuntimeError("the embedding contains NaN or infinite values")
    scale = 1.0 / max(norm, 1e-12)
    return [x * scale for x in vector]


class Embedder:
    """Pooled, optionally L2-normalized embeddings for a loaded model. Thread-safe: calls are
    serialized by a lock, and run on the caller's thread (not the engine thread)."""

    def __init__(self, model: LlamaModel, n_ctx: int | None = None, n_threads: int | None = None) -> None:
        self.model = model
        limit = n_ctx or model.shape.slot_ctx
        if model.n_ctx_train > 0:
            limit = min(limit, model.n_ctx_train)
        self.n_ctx = limit  # the longest input, and the token budget of one llama_decode
        self.n_threads = n_threads or model.shape.n_threads
        self.pooling = model_pooling(model)
        # The C handle is LlamaModel's: the same weights, never loaded twice.
        self._model_ptr = model._model
        self.n_embd = int(C.llama_model_n_embd_out(self._model_ptr))
        self._encoder_only = bool(C.llama_model_has_encoder(self._model_ptr)) and not bool(
            C.llama_model_has_decoder(self._model_ptr)
        )
        self._lock = threading.Lock()
        self._ctx: ctypes.c_void_p | None = None
        self._batch: Any = None  # a llama_batch; typed Any as its ctypes stubs misread seq_id
        self._closed = False

    @property
    def pooling_name(self) -> str:
        return _POOLING_NAMES[self.pooling]

    def tokenize(self, text: str) -> list[int]:
        """Tokens of one input, with the special tokens the vocab adds (BOS, or CLS/SEP)."""
        return self.model.tokenize(text, add_special=True, parse_special=False)

    def embed(self, inputs: Sequence[str | Sequence[int]], truncate: bool = True,
              normalize: bool = True) -> EmbedResult:
        """Embed texts (tokenized here) or token id lists, one llama_decode each (see the module's
        docstring). Too long: cut to ``n_ctx`` tokens, or InputTooLong.
        Raises ValueError for an input with no tokens or an unknown token id."""
        with self._lock:  # tokenizing reads the model's vocab too: not once close() has run
            if self._closed:
                raise RuntimeError("the model was unloaded")
            token_lists = [self._tokens(i, item, truncate) for i, item in enumerate(inputs)]
            if not token_lists:
                return EmbedResult([], 0)
            self._ensure_context()
            done: dict[tuple[int, ...], list[float]] = {}  # an input repeated in one request is computed once
            vectors = []
            for tokens in token_lists:
                key = tuple(tokens)
                if key not in done:
                    done[key] = self._run(tokens)
                vectors.append(list(done[key]))
        if normalize:
            vectors = [l2_normalize(v) for v in vectors]
        return EmbedResult(vectors, sum(len(t) for t in token_lists))

    def close(self) -> None:
        """Free the embedding context (waits for an embed in progress). Call before the model
        is freed; later embeds raise."""
        with self._lock:
            self._closed = True
            if self._batch is not None:
                C.llama_batch_free(self._batch)
                self._batch = None
            if self._ctx:
                C.llama_free(self._ctx)
                self._ctx = None

    # ---- internals -------------------------------------------------------------------------
    def _tokens(self, index: int, item: str | Sequence[int], truncate: bool) -> list[int]:
        if isinstance(item, str):
            tokens = self.tokenize(item)
        else:
            tokens = [int(t) for t in item]
            bad = next((t for t in tokens if not self.model.valid_token(t)), None)
            if bad is not None:
                raise ValueError(
                    f"input {index} has token id {bad}, outside the vocabulary (0..{self.model.n_vocab - 1})"
                )
        if not tokens:
            raise ValueError(f"input {index} is empty")
        if len(tokens) > self.n_ctx:
            if not truncate:
                raise InputTooLong(index, len(tokens), self.n_ctx)
            tokens = tokens[: self.n_ctx]
        return tokens

    def _ensure_context(self) -> None:
        if self._ctx:
            return
        params = C.llama_context_default_params()
        params.n_ctx = self.n_ctx
        params.n_batch = self.n_ctx
        params.n_ubatch = self.n_ctx  # a pooled sequence must fit in one ubatch
        params.n_seq_max = 1  # one input per decode: its cells start at 0, as when it is alone
        params.n_threads = self.n_threads
        params.n_threads_batch = self.n_threads
        params.embeddings = True
        params.pooling_type = self.pooling
        params.flash_attn_type = 0  # same rounding whatever the batch holds (see docs/engine.md)
        params.no_perf = True
        ctx = C.llama_init_from_model(self._model_ptr, params)
        if not ctx:
            raise ModelLoadError(f"llama.cpp could not create an embedding context of {self.n_ctx} tokens")
        self._ctx = ctx
        self._batch = C.llama_batch_init(self.n_ctx, 0, 1)

    def _run(self, tokens: list[int]) -> list[float]:
        """One llama_decode (or llama_encode) over one input, from empty KV cells."""
        ctx, b = self._ctx, self._batch
        assert ctx is not None and b is not None
        mem = C.llama_get_memory(ctx)
        if mem:
            C.llama_memory_clear(mem, True)
        token, pos, n_seq, seq, logits = b.token, b.pos, b.n_seq_id, b.seq_id, b.logits
        for p, t in enumerate(tokens):
            token[p] = t
            pos[p] = p
            n_seq[p] = 1
            seq[p][0] = 0
            logits[p] = 1  # pooling reads every token's hidden state
        b.n_tokens = len(tokens)
        set_mode = kernel_modes()
        if set_mode is not None:  # an input is a prompt: the fast kernels, as invariant as the others
            set_mode(True)
        rc = C.llama_encode(ctx, b) if self._encoder_only else C.llama_decode(ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama.cpp failed to compute embeddings (code {rc})")
        ptr = C.llama_get_embeddings_seq(ctx, 0)
        if not ptr:
            raise RuntimeError("llama.cpp returned no pooled embedding")
        return ptr[: self.n_embd]  # type: ignore[no-any-return]
