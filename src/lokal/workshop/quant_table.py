"""The quantization table (``lokal bench quant``): one row per type of one model, with size on disk,
memory when loaded, prompt and generation speed, and perplexity.

The speeds are llama-bench's two tests, measured through lokal's engine (``LlamaModel``) on one
sequence: ``pp512``, a 512-token prompt in one ``llama_decode``, and ``tg128``, 128 tokens decoded
one at a time, each given as mean ± standard deviation over repetitions that go round the types. Memory is
lokal's one estimate (``model_memory_bytes``: weights, KV cache, compute, overhead) for one slot of
:data:`MEMORY_CTX` tokens; perplexity is :func:`lokal.workshop.perplexity.perplexity` on lokal's
built-in text.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lokal.advise.memory import model_shape
from lokal.engine.llama_model import ContextShape, LlamaModel
from lokal.runtime.sizing import model_memory_bytes
from lokal.store.manifest import Manifest
from lokal.store.model_store import ModelStore
from lokal.store.progress import ProgressCallback
from lokal.workshop.perplexity import DEFAULT_BATCH, DEFAULT_CTX, builtin_text, perplexity
from lokal.workshop.quantize import QuantType, parse_quant_type, quantize_model

DEFAULT_TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K")
PROMPT_TOKENS = 512  # llama-bench's pp512
GENERATED_TOKENS = 128  # llama-bench's tg128
MEMORY_CTX = 4096  # the context the memory column is for (lokal's smallest automatic context)
DEFAULT_REPS = 3

@dataclass(frozen=True)
class Speed:
    """Tokens per second of one llama-bench test: mean and standard deviation over the repetitions."""

    mean: float
    sd: float

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.sd:.2f}"


@dataclass
class QuantRow:
    """One type of the model: what it costs (disk, memory), how fast it runs, how good it is."""

    type: str
    model: str
    source: bool  # the stored model the others were made from
    size_bytes: int
    bits_per_weight: float
    memory_bytes: int
    prompt: Speed
    generation: Speed
    ppl: float
    ppl_stderr: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_speeds(ggufs: list[Path], threads: int, reps: int = DEFAULT_REPS,
                   on_run: Callable[[], None] | None = None) -> list[tuple[Speed, Speed]]:
    """(pp512, tg128) tokens per second of each GGUF on one sequence. Each repetition measures
    every model in turn, so drift on a shared machine hits every row alike (as ``lokal bench run``
    goes round its targets); ``on_run`` is called after each model's run."""
    samples: list[tuple[list[float], list[float]]] = [([], []) for _ in ggufs]
    for _ in range(reps):
        for (prompt, generation), gguf in zip(samples, ggufs, strict=True):
            pp, tg = _run_once(gguf, threads)
            prompt.append(pp)
            generation.append(tg)
            if on_run is not None:
                on_run()
    return [(_speed(pp), _speed(tg)) for pp, tg in samples]


def _run_once(gguf: Path, threads: int) -> tuple[float, float]:
    """Load the model, warm it up (page faults, thread start-up), then time pp512 and tg128 once."""
    model = LlamaModel(gguf, ContextShape(slot_ctx=PROMPT_TOKENS + GENERATED_TOKENS, n_slots=1,
                                          n_batch=PROMPT_TOKENS, n_threads=threads))
    try:
        text = model.tokenize(builtin_text(), add_special=False, parse_special=False)
        tokens = (text * (1 + PROMPT_TOKENS // max(1, len(text))))[:PROMPT_TOKENS]
        model.decode([(t, i, 0, i == 63) for i, t in enumerate(tokens[:64])], prompt=True)
        for i in range(8):
            model.decode([(tokens[64 + i], 64 + i, 0, True)])
        model.forget(0)
        started = time.perf_counter()
        model.decode([(t, i, 0, i == PROMPT_TOKENS - 1) for i, t in enumerate(tokens)], prompt=True)
        pp = PROMPT_TOKENS / (time.perf_counter() - started)
        model.forget(0)
        started = time.perf_counter()
        for i in range(GENERATED_TOKENS):
            model.decode([(tokens[i], i, 0, True)])
        tg = GENERATED_TOKENS / (time.perf_counter() - started)
    finally:
        model.close()
    return pp, tg


def _speed(values: list[float]) -> Speed:
    return Speed(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


def measure_row(store: ModelStore, manifest: Manifest, speeds: tuple[Speed, Speed], *, source: bool, threads: int,
                ctx: int = DEFAULT_CTX, chunks: int | None = None,
                on_chunk: Callable[[int, int], None] | None = None) -> QuantRow:
    """The table's row of a stored model, its speeds measured already (:func:`measure_speeds`)."""
    gguf = store.gguf_path(manifest.name)
    shape = model_shape(manifest, store.home)
    params = manifest.facts.parameter_count or 0
    memory = model_memory_bytes(manifest, ContextShape(slot_ctx=MEMORY_CTX, n_slots=1, n_batch=512, n_threads=threads),
                                store.home)
    ppl = perplexity(gguf, ctx=ctx, batch=max(DEFAULT_BATCH, ctx), threads=threads, max_chunks=chunks,
                     progress=on_chunk)
    return QuantRow(
        type=(manifest.facts.quantization or "?").upper(), model=manifest.name, source=source,
        size_bytes=manifest.size, bits_per_weight=8 * shape.weights_bytes / params if params else 0.0,
        memory_bytes=memory, prompt=speeds[0], generation=speeds[1], ppl=ppl.ppl, ppl_stderr=ppl.stderr,
        extra={"ppl_tokens": ppl.tokens, "ppl_chunks": ppl.chunks, "ppl_ctx": ppl.ctx, "ppl_text": ppl.text},
    )


def build_variants(store: ModelStore, source: str, types: list[QuantType], *, allow_requantize: bool, threads: int,
                   progress: ProgressCallback | None = None) -> list[tuple[Manifest, bool]]:
    """The source model, then its variants in ``types`` (made unless the store has them), each with
    whether it is the source. A type the source already is stands for itself."""
    src = store.get(source)
    current = (src.facts.quantization or "").upper()
    found: list[tuple[Manifest, bool]] = [(src, True)]
    for qt in types:
        if qt.name != current:
            variant = quantize_model(store, src.name, qt, allow_requantize=allow_requantize, threads=threads,
                                     progress=progress)
            found.append((variant, False))
    return found


def parse_types(text: str | None) -> list[QuantType]:
    """``Q8_0,q4_k_m`` → their QuantTypes (``QuantizeError`` for an unknown one); None: the defaults."""
    names = [t for t in (text.split(",") if text else DEFAULT_TYPES) if t.strip()]
    types = [parse_quant_type(t) for t in names]
    return sorted(dict.fromkeys(types), key=lambda t: -t.bits_per_weight)


def table_document(model: str, rows: list[QuantRow], meta: dict[str, Any]) -> dict[str, Any]:
    """What ``lokal bench quant --json`` writes."""
    return {"model": model, "tests": {"prompt": f"pp{PROMPT_TOKENS}", "generation": f"tg{GENERATED_TOKENS}"},
            "memory_ctx": MEMORY_CTX, **meta, "rows": [r.to_dict() for r in rows]}


def markdown_table(rows: list[QuantRow]) -> str:
    """The rows as a Markdown table in llama.cpp's quantize README's terms."""
    head = ("| type | bits/weight | size (MiB) | memory @ 4k ctx (MiB) | prompt processing t/s @ 512 "
            "| text generation t/s @ 128 | perplexity |")
    lines = [head, "| :-- | --: | --: | --: | --: | --: | --: |"]
    for r in rows:
        name = f"{r.type} (source)" if r.source else r.type
        lines.append(f"| {name} | {r.bits_per_weight:.2f} | {r.size_bytes / 2**20:.1f} | {r.memory_bytes / 2**20:.0f} "
                     f"| {r.prompt} | {r.generation} | {r.ppl:.4f} ± {r.ppl_stderr:.4f} |")
    return "\n".join(lines)

