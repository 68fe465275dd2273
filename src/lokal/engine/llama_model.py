"""The only module that talks to llama.cpp: model, context, batch, sampler chains, KV memory.

Everything here runs on the engine thread (except tokenization, which only reads the vocab)."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as C
import llguidance
import numpy as np

from lokal.engine.cells import CellLedger
from lokal.engine.gbnf import check_gbnf
from lokal.engine.sampling import SamplingParams
from lokal.engine.sequence import Adapters, TokenLogprob
from lokal.engine.token_mask import GrammarError, TokenMask
from lokal.engine.token_mask import check_grammar as check_compiled_grammar

__all__ = ["GrammarError"]  # re-exported: raised by check_grammar

_backend_lock = threading.Lock()
_backend_ready = False


def _log_errors_only(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    # llama.cpp prints hundreds of load lines; keep only errors (GGML_LOG_LEVEL_ERROR == 4).
    if level == 4 and text:
        import sys

        sys.stderr.write("llama.cpp: " + text.decode("utf-8", "replace"))


# The C callback: kept at module level so it lives as long as llama.cpp may call it.
_quiet_log = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)(_log_errors_only)


def init_backend() -> None:
    """Start llama.cpp's backends once per process, its logging quieted first (errors only)."""
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            # CUDA numbers GPUs fastest first by default, NVML by PCI bus: one order for both, so the
            # offload planner's split (NVML) lands on the GPUs it was planned for.
            os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
            C.llama_log_set(_quiet_log, None)
            C.llama_backend_init()
            _backend_ready = True
            if "LLAMAFILE = 1" in system_info() and kernel_modes() is None:
                logging.getLogger("lokal.engine").warning(
                    "llama.cpp was built with llamafile sgemm: batched and single requests may round "
                    "differently; install with scripts/install.sh for batch-invariant results"
                )


def batch_invariant_flash_attention() -> bool:
    """Whether this llama_cpp is lokal's own build (scripts/install.sh), whose CPU flash attention
    always takes the per-row kernel. Stock builds pick a tiled or split-KV kernel by batch shape,
    which rounds differently, so on them lokal leaves flash attention off."""
    return "+lokal" in getattr(C, "__version__", "")


@functools.cache
def kernel_modes() -> Callable[[bool], None] | None:
    """lokal's build (scripts/llama_cpp_patch.py) lets the calling thread choose ggml's CPU kernels
    for its next llama_decode: prompt mode (fast tiled/sgemm kernels) or decode mode (per-row
    kernels), each independent of how many rows the call holds. None for any other build."""
    no_load = getattr(os, "RTLD_NOLOAD", None)
    if no_load is None:
        return None
    # The wheel holds copies (not links) of libggml-cpu.so, .so.0, ...: only the one llama.cpp loaded
    # counts, so each is opened with RTLD_NOLOAD, which fails for a copy that is not loaded.
    for path in sorted((Path(C.__file__).parent / "lib").glob("*ggml-cpu*")):
        try:
            lib = ctypes.CDLL(str(path), mode=no_load | ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        setter = getattr(lib, "lokal_ggml_set_prompt_mode", None)
        if setter is None:
            return None
        setter.argtypes = [ctypes.c_bool]
        setter.restype = None
        return setter  # type: ignore[no-any-return]
    return None


def system_info() -> str:
    """llama.cpp's build and CPU feature line (SIMD flags, LLAMAFILE, threads support)."""
    raw = C.llama_print_system_info()
    return raw.decode("utf-8", "replace") if raw else ""


class ModelLoadError(RuntimeError):
    """llama.cpp refused the model file or could not create a context for it."""


@dataclass(eq=False)
class LoraAdapter:
    """A LoRA adapter loaded on a model (``LlamaModel.load_adapter``), compared by identity: a
    sequence's adapters, and its cached prefixes, name the very adapter they were computed with."""

    path: Path
    ptr: object | None  # llama_adapter_lora *; None once freed


class KvPoolFull(RuntimeError):
    """llama_decode found no free KV cells for the batch (shared pool); nothing was computed."""


KV_POOLS = ("per-slot", "shared")


@dataclass(frozen=True)
class ContextShape:
    """How the KV cache is laid out: ``n_slots`` sequences of up to ``slot_ctx`` tokens each.

    ``kv_pool`` "per-slot": each slot reserves its whole context (one KV stream per slot: results
    never depend on load). "shared": one pool of ``pool_cells`` cells that sequences take as they
    grow (0: slot_ctx × n_slots), so many sequences of mixed lengths fit (docs/engine.md)."""

    slot_ctx: int
    n_slots: int
    n_batch: int
    n_threads: int
    kv_pool: str = "per-slot"
    pool_cells: int = 0

    def __post_init__(self) -> None:
        if self.kv_pool not in KV_POOLS:
            raise ValueError(f"kv_pool must be one of {', '.join(KV_POOLS)}, not {self.kv_pool!r}")

    @property
    def shared(self) -> bool:
        return self.kv_pool == "shared"

    @property
    def n_ctx(self) -> int:
        if self.shared and self.pool_cells > 0:
            return self.pool_cells
        return self.slot_ctx * self.n_slots


@dataclass(frozen=True)
class Offload:
    """Where llama.cpp puts a model: ``gpu_layers`` of its layers (and their KV cache) on GPUs, the
    rest on the CPU; ``tensor_split``: each GPU's share of those layers (empty: by free memory);
    ``main_gpu``: the GPU for the output and scratch buffers."""

    gpu_layers: int = 0
    tensor_split: tuple[float, ...] = ()
    main_gpu: int = 0

    @property
    def on_gpu(self) -> bool:
        return self.gpu_layers != 0


class LlamaModel:
    """A loaded GGUF with one context whose unified KV cache holds every slot's sequence."""

    def __init__(self, path: Path, shape: ContextShape, offload: Offload | None = None) -> None:
        init_backend()
        self.path = path
        self.shape = shape
        self.offload = offload or Offload()
        mparams = C.llama_model_default_params()
        mparams.n_gpu_layers = self.offload.gpu_layers
        mparams.main_gpu = self.offload.main_gpu
        if self.offload.tensor_split:
            # llama.cpp reads llama_max_devices() floats; the array must outlive the load call.
            self._tensor_split = (ctypes.c_float * max(C.llama_max_devices(), len(self.offload.tensor_split)))(
                *self.offload.tensor_split)
            mparams.tensor_split = ctypes.cast(self._tensor_split, ctypes.POINTER(ctypes.c_float))
        # No repacked weights: their 4-row kernel rounds unlike their 1-row one, so lokal's build takes
        # the 1-row kernel for every row, which is slower for prompts than the tiled matmul it gets
        # without repacking (docs/engine.md); decoding is level either way.
        mparams.use_extra_bufts = False
        model = C.llama_model_load_from_file(str(path).encode(), mparams)
        if not model:
            raise ModelLoadError(f"llama.cpp could not load {path}")
        self._model = model
        self._vocab = C.llama_model_get_vocab(model)
        self.n_vocab: int = C.llama_vocab_n_tokens(self._vocab)
        self.n_ctx_train: int = C.llama_model_n_ctx_train(model)
        self.n_layer: int = C.llama_model_n_layer(model)

        cparams = C.llama_context_default_params()
        cparams.n_ctx = shape.n_ctx
        cparams.n_batch = shape.n_batch
        cparams.n_ubatch = shape.n_batch
        cparams.n_seq_max = shape.n_slots
        cparams.n_threads = shape.n_threads
        cparams.n_threads_batch = shape.n_threads
        # Per-slot: one KV stream per slot, so a sequence's cells sit at the same indices whether it
        # runs alone or batched and batching never changes results. Shared: one unified stream whose
        # free cells any sequence takes (where they land depends on the other sequences).
        cparams.kv_unified = shape.shared
        cparams.offload_kqv = True  # the KV cache lives with its layer (GPU or CPU)
        cparams.swa_full = True  # keep all positions in SWA layers, so cached prefixes stay valid
        cparams.no_perf = True
        # Flash attention is faster (it skips masked cells and never materialises the scores), but
        # stock ggml picks its kernel by batch shape; lokal's build always takes the per-row one.
        self.flash_attention = batch_invariant_flash_attention()
        # Prompt rows and generated rows need separate llama_decode calls (engine.Engine.step).
        self._set_mode = kernel_modes()
        self.has_kernel_modes = self._set_mode is not None
        cparams.flash_attn_type = 1 if self.flash_attention else 0
        ctx = C.llama_init_from_model(model, cparams)
        if not ctx:
            C.llama_model_free(model)
            raise ModelLoadError(f"llama.cpp could not create a context of {shape.n_ctx} tokens")
        self._ctx = ctx
        self._mem = C.llama_get_memory(ctx)
        self.cells = CellLedger(shape.n_ctx, shared=shape.shared)  # follows every KV memory operation below
        self._batch = C.llama_batch_init(shape.n_batch, 0, 1)
        self._embd_batch: C.llama_batch | None = None  # image rows (decode_embeddings)
        self._adapters: list[LoraAdapter] = []  # loaded on this model, freed with it at the latest
        self._applied: Adapters = ()  # the adapters the context applies now
        self.n_embd_inp: int = C.llama_model_n_embd_inp(model)
        self._max_token_bytes = 0
        self._lltokenizer: llguidance.LLTokenizer | None = None  # built on the first grammar
        self._lltokenizer_lock = threading.Lock()
        self._grammars_ok: dict[bytes, None] = {}  # digests of grammars checked, the latest last
        self._pieces: dict[int, bytes] = {}
        self._texts: dict[int, bytes] = {}
        self.add_bos = bool(C.llama_vocab_get_add_bos(self._vocab))
        self.bos_text = self._special_text(C.llama_vocab_bos(self._vocab))
        self.eos_text = self._special_text(C.llama_vocab_eos(self._vocab))

    # ---- metadata -------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(4096)
        n = C.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            C.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace")

    def chat_template(self) -> str | None:
        raw = C.llama_model_chat_template(self._model, None)
        return raw.decode("utf-8", "replace") if raw else None

    @property
    def architecture(self) -> str | None:
        return self.meta("general.architecture")

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._piece(token, special=True).decode("utf-8", "replace")

    # ---- tokens ---------------------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8", "replace")
        cap = len(data) + 8
        buf = (C.llama_token * cap)()
        n = C.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (C.llama_token * cap)()
            n = C.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, parse_special)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes a generated token stands for (special tokens render as nothing)."""
        cached = self._pieces.get(token)
        if cached is None:
            cached = self._pieces[token] = self._piece(token, special=False)
        return cached

    def fim_tokens(self) -> tuple[int, int, int] | None:
        """The vocabulary's fill-in-the-middle tokens (prefix, suffix, middle); None if it lacks one."""
        ids = (C.llama_vocab_fim_pre(self._vocab), C.llama_vocab_fim_suf(self._vocab),
               C.llama_vocab_fim_mid(self._vocab))
        return None if any(t < 0 for t in ids) else (int(ids[0]), int(ids[1]), int(ids[2]))

    def token_text(self, token: int) -> bytes:
        """The bytes of a token as it is shown (logprobs, /tokenize's pieces), a special token's own
        text (``<|im_end|>``) included."""
        cached = self._texts.get(token)
        if cached is None:
            cached = self._texts[token] = self._piece(token, special=True)
        return cached

    def max_token_bytes(self) -> int:
        """The longest text one token stands for, special tokens' included (read once)."""
        if not self._max_token_bytes:
            self._max_token_bytes = max(1, max(len(self._piece(t, special=True)) for t in range(self.n_vocab)))
        return self._max_token_bytes

    def _piece(self, token: int, special: bool) -> bytes:
        # A buffer of its own: the runtime tokenizes and measures prompts on other threads while
        # the engine thread detokenizes (a shared buffer garbled generated text).
        buf = ctypes.create_string_buffer(64)
        n = C.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = C.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def is_eog(self, token: int) -> bool:
        return bool(C.llama_vocab_is_eog(self._vocab, token))

    @property
    def can_rewind(self) -> bool:
        """Whether a sequence's last cells can be removed (not for recurrent or hybrid models)."""
        return not (C.llama_model_is_recurrent(self._model) or C.llama_model_is_hybrid(self._model))

    def valid_token(self, token: int) -> bool:
        return 0 <= token < self.n_vocab

    # ---- decoding -------------------------------------------------------------------------
    def decode(self, rows: list[tuple[int, int, int, bool]], prompt: bool = False) -> None:
        """One llama_decode over rows of (token, position, seq_id, wants_logits), with prompt-mode
        or decode-mode kernels (``kernel_modes``; the engine never mixes the two in one call)."""
        if self._set_mode is not None:
            self._set_mode(prompt)
        b = self._batch
        token, pos, n_seq, seq, logits = b.token, b.pos, b.n_seq_id, b.seq_id, b.logits
        for i, (t, p, s, out) in enumerate(rows):
            token[i] = t
            pos[i] = p
            n_seq[i] = 1
            seq[i][0] = s
            logits[i] = out
        b.n_tokens = len(rows)
        rc = C.llama_decode(self._ctx, b)
        if rc == 1:  # no KV slot: llama.cpp checks every ubatch fits before it computes any
            raise KvPoolFull(f"no free KV cells for {len(rows)} tokens")
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc}")
        for _, p, s, _ in rows:
            self.cells.append(s, p)

    def decode_embeddings(self, rows: list[tuple[np.ndarray, int, int, bool]]) -> None:
        """One llama_decode of input embeddings instead of tokens (an image's rows from its vision
        projector), in prompt mode: rows of (embeddings of k consecutive positions, k × n_embd_inp;
        the first position; seq_id; whether the last of them wants logits). llama.cpp takes a batch
        of tokens or of embeddings, never both, so these never share a call with token rows."""
        if self._set_mode is not None:
            self._set_mode(True)
        n = sum(len(block) for block, _, _, _ in rows)
        if self._embd_batch is None:  # made on a vision model's first image
            self._embd_batch = C.llama_batch_init(self.shape.n_batch, self.n_embd_inp, 1)
        if n > self.shape.n_batch:
            raise ValueError(f"{n} embedding rows do not fit in a batch of {self.shape.n_batch}")
        b = self._embd_batch
        flat = np.ctypeslib.as_array(b.embd, shape=(self.shape.n_batch * self.n_embd_inp,))
        pos, n_seq, seq, logits = b.pos, b.n_seq_id, b.seq_id, b.logits
        i = 0
        for block, first, s, out in rows:
            k = len(block)
            flat[i * self.n_embd_inp:(i + k) * self.n_embd_inp] = np.asarray(block, dtype=np.float32).reshape(-1)
            for j in range(k):
                pos[i + j] = first + j
                n_seq[i + j] = 1
                seq[i + j][0] = s
                logits[i + j] = out and j == k - 1
            i += k
        b.n_tokens = n
        rc = C.llama_decode(self._ctx, b)
        if rc == 1:
            raise KvPoolFull(f"no free KV cells for {n} image rows")
        if rc != 0:
            raise RuntimeError(f"llama_decode of image embeddings failed with code {rc}")
        for block, first, s, _ in rows:
            for j in range(len(block)):
                self.cells.append(s, first + j)

    # ---- LoRA adapters ----------------------------------------------------------------------
    def load_adapter(self, path: Path) -> LoraAdapter:
        """Load a GGUF LoRA adapter onto this model's weights (ModelLoadError if llama.cpp refuses it).
        Safe beside decoding on the engine thread: it only adds the adapter's own tensors to the model."""
        ptr = C.llama_adapter_lora_init(self._model, str(path).encode())
        if not ptr:
            raise ModelLoadError(f"llama.cpp could not load the LoRA adapter {path} for {self.path.name}")
        adapter = LoraAdapter(path, ptr)
        self._adapters.append(adapter)
        return adapter

    def free_adapter(self, adapter: LoraAdapter) -> None:
        """Free an adapter's tensors (engine thread: no decode may use it any more)."""
        if any(a is adapter for a, _ in self._applied):
            self.use_adapters(())
        if adapter in self._adapters:
            self._adapters.remove(adapter)
            C.llama_adapter_lora_free(adapter.ptr)
        adapter.ptr = None

    def use_adapters(self, adapters: Adapters) -> None:
        """Apply these adapters (and scales) to the context's next decodes; () for the weights alone.
        llama.cpp applies them to every sequence of a decode (Scheduler.schedule groups sequences
        by their adapters), and re-plans its compute graph when the set changes."""
        if adapters == self._applied:
            return
        if any(a.ptr is None for a, _ in adapters):
            raise RuntimeError("a LoRA adapter of this sequence has been freed")
        n = len(adapters)
        handles = (C.llama_adapter_lora_p_ctypes * n)(*(a.ptr for a, _ in adapters))  # type: ignore[misc]
        scales = (ctypes.c_float * n)(*(scale for _, scale in adapters))
        C.llama_set_adapters_lora(self._ctx, handles if n else None, n, scales if n else None)
        self._applied = adapters

    def sample(self, sampler: SamplerChain, batch_index: int) -> int:
        if sampler.greedy_in_numpy:  # the greedy chain's own pick, without a candidate array in C
            logits = C.llama_get_logits_ith(self._ctx, batch_index)
            return sampler.pick_greedy(np.ctypeslib.as_array(logits, shape=(self.n_vocab,)))
        if sampler.grammar is None:
            return int(C.llama_sampler_sample(sampler.ptr, self._ctx, batch_index))
        return sampler.sample_constrained(C.llama_get_logits_ith(self._ctx, batch_index))

    def logprobs(self, batch_index: int, token: int, top: int) -> TokenLogprob:
        """``token``'s log-probability in this row's raw distribution (log-softmax of the logits,
        in float64), and the ``top`` most likely tokens (ties: lower id first)."""
        row = np.ctypeslib.as_array(C.llama_get_logits_ith(self._ctx, batch_index), shape=(self.n_vocab,))
        logits = row.astype(np.float64)
        peak = logits.max()
        log_z = peak + np.log(np.exp(logits - peak).sum())
        best: tuple[tuple[int, float], ...] = ()
        if top > 0:
            k = min(top, self.n_vocab)
            ids = np.argpartition(-logits, k - 1)[:k]
            ids = ids[np.lexsort((ids, -logits[ids]))]
            best = tuple((int(i), float(logits[i] - log_z)) for i in ids)
        return TokenLogprob(token, float(logits[token] - log_z), best)

    # ---- KV memory ------------------------------------------------------------------------
    def forget(self, seq_id: int, from_pos: int = 0) -> bool:
        """Drop a sequence's cells from ``from_pos`` on; False if llama.cpp cannot cut there."""
        if not C.llama_memory_seq_rm(self._mem, seq_id, from_pos, -1):
            return False
        self.cells.truncate(seq_id, from_pos)
        return True

    def cached_tokens(self, seq_id: int) -> int:
        """How many leading positions of a sequence are in the KV cache (0 when empty)."""
        return int(C.llama_memory_seq_pos_max(self._mem, seq_id)) + 1

    def share_prefix(self, src: int, dst: int, n_tokens: int) -> bool:
        """Give dst the first n_tokens cells of src. Per-slot streams: llama.cpp copies the whole
        stream (at the next decode) and the tail is cut off again. Shared pool: dst joins src's
        cells, no copy."""
        C.llama_memory_seq_cp(self._mem, src, dst, -1, -1)
        self.cells.copy_prefix(src, dst, self.cells.held(src))
        return self.forget(dst, n_tokens)

    def save_sequence(self, seq_id: int) -> ctypes.Array[ctypes.c_uint8]:
        """A sequence's KV cells as llama.cpp's state bytes (for restore_sequence), in one copy."""
        size: int = C.llama_state_seq_get_size(self._ctx, seq_id)
        buf = (ctypes.c_uint8 * size)()
        n = C.llama_state_seq_get_data(self._ctx, buf, size, seq_id)
        if n != size:
            raise RuntimeError(f"llama.cpp wrote {n} of {size} bytes of sequence {seq_id}'s state")
        return buf

    def restore_sequence(self, seq_id: int, state: ctypes.Array[ctypes.c_uint8]) -> bool:
        """Put saved cells back into a sequence (its own cells go first); False if llama.cpp refuses.
        The cells land at the same indices of the slot's stream, so answers do not change."""
        if not C.llama_state_seq_set_data(self._ctx, state, len(state), seq_id):
            self.cells.truncate(seq_id, 0)
            return False
        self.cells.fill(seq_id, self.cached_tokens(seq_id))
        return True

    def grammar_sampler(self, grammar: str) -> ctypes.c_void_p:
        """A compiled grammar sampler (caller owns it); GrammarError if llama.cpp refuses the text."""
        ptr = C.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")
        if not ptr:
            raise GrammarError("the grammar could not be compiled by llama.cpp")
        return ptr  # type: ignore[no-any-return]

    def check_grammar(self, grammar: str) -> None:
        """Check and compile a grammar, so a bad one is refused (GbnfError or GrammarError, both
        ValueErrors) before its request is queued. The first grammar of a model also builds the
        vocabulary llguidance masks (about a second per 50k tokens), here rather than on the
        engine thread."""
        digest = hashlib.sha256(grammar.encode("utf-8", "surrogatepass")).digest()
        if digest in self._grammars_ok:
            return
        check_gbnf(grammar)
        check_compiled_grammar(self.grammar_tokenizer(), grammar)
        self._grammars_ok[digest] = None
        if len(self._grammars_ok) > 256:
            self._grammars_ok.pop(next(iter(self._grammars_ok)), None)

    def grammar_mask(self, grammar: str) -> TokenMask:
        """A sequence's grammar state (``check_grammar`` first)."""
        return TokenMask(self.grammar_tokenizer(), self.n_vocab, grammar)

    def grammar_tokenizer(self) -> llguidance.LLTokenizer:
        """The vocabulary as llguidance reads it: every token's bytes (control tokens marked, as
        llguidance's own llama.cpp adapter marks them) and every end-of-generation token as EOS."""
        with self._lltokenizer_lock:
            if self._lltokenizer is None:
                tokens = []
                for t in range(self.n_vocab):
                    piece = self._piece(t, special=True)
                    attr = C.llama_vocab_get_attr(self._vocab, t)
                    if attr & C.LLAMA_TOKEN_ATTR_CONTROL or (attr & C.LLAMA_TOKEN_ATTR_USER_DEFINED
                                                             and piece.startswith(b"<") and piece.endswith(b">")):
                        piece = b"\xff" + piece
                    tokens.append(piece)
                eog = [t for t in range(self.n_vocab) if self.is_eog(t)] or [int(C.llama_vocab_eos(self._vocab))]
                tokenize = ctypes.cast(C.llama_cpp._lib.llama_tokenize, ctypes.c_void_p).value
                self._lltokenizer = llguidance.LLTokenizer.from_llamacpp(  # type: ignore[attr-defined]
                    tokens=tokens, vocab_ptr=self._vocab, tokenize_fptr=tokenize, eos_token=eog, slices=None)
            return self._lltokenizer

    def new_sampler(self, params: SamplingParams, recent: list[int]) -> SamplerChain:
        return SamplerChain(self, params, recent)

    @property
    def closed(self) -> bool:
        return self._ctx is None

    def close(self) -> None:
        if self._ctx:
            C.llama_batch_free(self._batch)
            if self._embd_batch is not None:
                C.llama_batch_free(self._embd_batch)
            C.llama_free(self._ctx)
            C.llama_model_free(self._model)
            self._ctx = None
            self._model = None
            for adapter in self._adapters:  # llama_model_free freed them
                adapter.ptr = None
            self._adapters.clear()


class SamplerChain:
    """llama.cpp's native sampler chain for one request: bias, penalties, top-k/p, min-p,
    temperature, then dist or greedy; plus, for structured output, a grammar (llguidance's
    ``TokenMask``) kept beside the chain and applied as llama.cpp's common sampler does: sample,
    check the one token against the grammar, and only if it is refused mask the whole vocabulary
    and sample again."""

    def __init__(self, model: LlamaModel, params: SamplingParams, recent: list[int]) -> None:
        chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        self.ptr = chain
        add = C.llama_sampler_chain_add
        p = params
        if p.logit_bias:
            arr = (C.llama_logit_bias * len(p.logit_bias))()
            for i, (tok, bias) in enumerate(p.logit_bias.items()):
                arr[i].token = tok  # type: ignore[assignment]  # ctypes converts
                arr[i].bias = bias
            add(chain, C.llama_sampler_init_logit_bias(model.n_vocab, len(p.logit_bias), arr))
        has_penalties = p.repeat_penalty != 1.0 or bool(p.presence_penalty) or bool(p.frequency_penalty)
        last_n = model.shape.slot_ctx if p.repeat_last_n == -1 else p.repeat_last_n
        if has_penalties:
            penalties = C.llama_sampler_init_penalties(
                model.n_vocab, last_n, p.repeat_penalty, p.frequency_penalty, p.presence_penalty
            )
            # Penalties look at the prompt's tail too, as llama.cpp's server does. Only this sampler
            # hears it: a grammar must see nothing but the generated tokens.
            for tok in recent:
                C.llama_sampler_accept(penalties, tok)
            add(chain, penalties)
        self.grammar = model.grammar_mask(p.grammar) if p.grammar is not None else None
        self._candidates = np.zeros(0, dtype=_TOKEN_DATA)
        self.n_vocab = model.n_vocab
        # Greedy without a grammar is picked in numpy (LlamaModel.sample): the same float32
        # arithmetic as llama.cpp's bias and penalties samplers on the few tokens they touch, then
        # the first maximum, as its greedy sampler takes. That skips copying the whole vocabulary
        # into a candidate array in C for every row (~0.25 ms a row, 5 % of a step at 8 rows).
        # Not when both frequency and presence penalties are set: C may fuse their sum into one
        # FMA, so numpy could round differently.
        self.greedy_in_numpy = (
            p.greedy and self.grammar is None and not (p.frequency_penalty and p.presence_penalty)
        )
        self.argmax_only = self.greedy_in_numpy and not p.logit_bias and not has_penalties
        self._bias = (
            (np.fromiter(p.logit_bias, dtype=np.int64), np.array(list(p.logit_bias.values()), dtype=np.float32))
            if p.logit_bias
            else None
        )
        self._penalties = _PenaltyWindow(p, last_n, recent) if has_penalties and last_n > 0 else None
        if p.greedy:
            add(chain, C.llama_sampler_init_greedy())
        else:
            if p.top_k > 0:
                add(chain, C.llama_sampler_init_top_k(p.top_k))
            if p.top_p < 1.0:
                add(chain, C.llama_sampler_init_top_p(p.top_p, 1))
            if p.min_p > 0.0:
                add(chain, C.llama_sampler_init_min_p(p.min_p, 1))
            add(chain, C.llama_sampler_init_temp(p.temperature))
            seed = p.seed if p.seed is not None else C.LLAMA_DEFAULT_SEED
            add(chain, C.llama_sampler_init_dist(seed))

    def pick_greedy(self, logits: np.ndarray) -> int:
        """The token llama.cpp's bias → penalties → greedy chain picks from this row; it is
        remembered for the penalties, as the chain's accept would."""
        if self.argmax_only:
            return int(logits.argmax())
        row = logits.copy()
        if self._bias is not None:
            ids, bias = self._bias
            row[ids] += bias
        if self._penalties is not None:
            self._penalties.apply(row)
        token = int(row.argmax())
        if self._penalties is not None:
            self._penalties.accept(token)
        return token

    def sample_constrained(self, logits: ctypes._Pointer) -> int:  # type: ignore[type-arg]
        """One token the grammar allows, from this row's logits; both samplers accept it."""
        assert self.grammar is not None
        token = self._pick(logits, None)
        if not self.grammar.consume(token):  # refused: mask everything the grammar forbids, then pick
            token = self._pick(logits, self.grammar.allowed())
            if not self.grammar.consume(token):
                raise RuntimeError("the grammar refused the token its own mask allowed")
        C.llama_sampler_accept(self.ptr, token)
        return token

    def _pick(self, logits: ctypes._Pointer, allowed: np.ndarray | None) -> int:  # type: ignore[type-arg]
        if len(self._candidates) != self.n_vocab:
            self._candidates = np.zeros(self.n_vocab, dtype=_TOKEN_DATA)
        cand = self._candidates
        cand["id"] = np.arange(self.n_vocab, dtype=np.int32)
        cand["logit"] = np.ctypeslib.as_array(logits, shape=(self.n_vocab,))
        cand["p"] = 0.0
        if allowed is not None:
            if not allowed.any():
                raise RuntimeError("the grammar allows no token")
            cand["logit"][~allowed] = -np.inf
        arr = _token_array(cand)
        C.llama_sampler_apply(self.ptr, ctypes.byref(arr))
        if not 0 <= arr.selected < arr.size:
            raise RuntimeError("the sampler chain selected no token")
        return int(arr.data[arr.selected].id)

    def free(self) -> None:
        self.grammar = None
        if self.ptr:
            C.llama_sampler_free(self.ptr)
            self.ptr = None


class _PenaltyWindow:
    """llama.cpp's penalties sampler in numpy: the last ``last_n`` tokens and their counts; a
    counted token's logit is divided by the repeat penalty (multiplied when ≤ 0), then lowered
    by count × frequency + presence penalty, all in float32."""

    def __init__(self, p: SamplingParams, last_n: int, recent: list[int]) -> None:
        self.window: deque[int] = deque(maxlen=last_n)
        self.counts: Counter[int] = Counter()
        self.repeat = np.float32(p.repeat_penalty)
        self.frequency = np.float32(p.frequency_penalty)
        self.presence = np.float32(p.presence_penalty)
        for tok in recent:
            self.accept(tok)

    def accept(self, token: int) -> None:
        if len(self.window) == self.window.maxlen:
            old = self.window[0]
            self.counts[old] -= 1
            if not self.counts[old]:
                del self.counts[old]
        self.window.append(token)
        self.counts[token] += 1

    def apply(self, row: np.ndarray) -> None:
        ids = np.fromiter(self.counts.keys(), dtype=np.int64, count=len(self.counts))
        ids = ids[ids < len(row)]
        v = row[ids]
        v = np.where(v <= 0, v * self.repeat, v / self.repeat).astype(np.float32, copy=False)
        if self.frequency:
            count = np.array([self.counts[int(t)] for t in ids], dtype=np.float32)
            v = v - count * self.frequency
        elif self.presence:
            v = v - self.presence
        row[ids] = v


# llama_token_data as numpy sees it: the candidate array is filled from the logits in one copy.
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


def _token_array(cand: np.ndarray) -> C.llama_token_data_array:
    return C.llama_token_data_array(
        data=cand.ctypes.data_as(ctypes.POINTER(C.llama_token_data)), size=len(cand), selected=-1, sorted=False
    )
