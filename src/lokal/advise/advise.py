"""`lokal advise`: what fits on this machine, with which context and slots, and how to serve it."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lokal.advise.hardware import Hardware
from lokal.advise.memory import (
    EstimateError,
    MemoryEstimate,
    ModelShape,
    classify,
    estimate_memory,
    generic_shape,
    model_shape,
)
from lokal.runtime.sizing import MAX_AUTO_SLOTS

CTX_STEP = 256
MAX_PARALLEL = 64
QUALITY_ORDER = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K")  # best first


@dataclass(frozen=True)
class FitRow:
    """One model at the asked context and slots: its estimate, verdict and the limits that fit."""

    model: str
    source: str
    quantization: str | None
    estimate: MemoryEstimate
    fit: str  # fits | tight | wont_fit
    max_ctx: int  # largest context (slot) that fits at the asked slots, 0 if none
    max_parallel: int  # most slots of the asked context that fit, 0 if none

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["estimate"] = self.estimate.to_dict()
        return data


@dataclass(frozen=True)
class ServeAdvice:
    """Settings for ``lokal serve`` with one model."""

    model: str
    threads: int
    parallel: int
    ctx: int
    command: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Target:
    """``7b@8k x4``: parameters (billions), context per user, users."""

    size_b: float
    ctx: int
    users: int
    text: str


@dataclass(frozen=True)
class TargetOption:
    quantization: str
    kv_type: str
    needed_bytes: int
    fit: str


@dataclass(frozen=True)
class TargetAdvice:
    target: Target
    options: tuple[TargetOption, ...]
    best: TargetOption | None
    reason: str


def fit_row(shape: ModelShape, ctx: int, parallel: int, available: int, kv_type: str = "f16") -> FitRow:
    """Estimate one model and find the largest context and slot count that still fit."""
    estimate = estimate_memory(shape, ctx, parallel, kv_type)
    return FitRow(
        model=shape.name,
        source=shape.source,
        quantization=shape.quantization,
        estimate=estimate,
        fit=classify(estimate.total, available),
        max_ctx=largest_ctx(shape, parallel, available, kv_type),
        max_parallel=largest_parallel(shape, ctx, available, kv_type),
    )


def largest_ctx(shape: ModelShape, parallel: int, available: int, kv_type: str = "f16") -> int:
    """The largest slot context (a multiple of 256, at most the trained context) that fits."""
    limit = shape.context_length or 131072
    lo, hi = 0, limit // CTX_STEP
    while lo < hi:  # the estimate grows with the context: bisect on steps of 256 tokens
        mid = (lo + hi + 1) // 2
        if estimate_memory(shape, mid * CTX_STEP, parallel, kv_type).total <= available:
            lo = mid
        else:
            hi = mid - 1
    return lo * CTX_STEP


def largest_parallel(shape: ModelShape, ctx: int, available: int, kv_type: str = "f16") -> int:
    n = 0
    while n < MAX_PARALLEL and estimate_memory(shape, ctx, n + 1, kv_type).total <= available:
        n += 1
    return n


def fit_table(
    shapes: Iterable[ModelShape], hardware: Hardware, ctx: int, parallel: int, kv_type: str = "f16"
) -> list[FitRow]:
    """Every model at ``ctx`` x ``parallel`` against the RAM available now."""
    return [fit_row(s, ctx, parallel, hardware.ram_available, kv_type) for s in shapes]


def candidate_shapes(home: Path | None, models: list[str] | None = None) -> list[ModelShape]:
    """The models to judge: those named, else the store's models and the catalog's (by name)."""
    if models:
        return [model_shape(m, home) for m in models]
    from lokal.store.catalog import CATALOG

    shapes: list[ModelShape] = []
    seen: set[str] = set()
    if home is not None:
        from lokal.store.model_store import ModelStore

        for manifest in ModelStore(home).list():
            try:
                shapes.append(model_shape(manifest.name, home))
                seen.add(manifest.name)
            except EstimateError:
                continue  # a model without layer facts (not a transformer lokal can size)
    for entry in CATALOG:
        if entry.name not in seen:
            shapes.append(model_shape(entry.name, None))
    return shapes


def serve_advice(shape: ModelShape, hardware: Hardware, ctx: int | None = None, kv_type: str = "f16") -> ServeAdvice:
    """Threads, slots and context for ``lokal serve --model``: the physical cores, as many slots
    (up to 8) as fit in the RAM left after the weights, and the asked (or 4096) context."""
    reasons = []
    threads = hardware.physical_cores or hardware.cores
    reasons.append(f"threads {threads}: the {'physical' if hardware.physical_cores else 'logical'} cores "
                   "(llama.cpp gains nothing from hyper-threads)")
    wanted_ctx = ctx or min(4096, shape.context_length or 4096)
    budget = int(hardware.ram_available * 0.7)
    parallel = max(1, min(MAX_AUTO_SLOTS, largest_parallel(shape, wanted_ctx, budget, kv_type)))
    use_ctx = wanted_ctx
    if largest_parallel(shape, wanted_ctx, budget, kv_type) == 0:
        use_ctx = max(CTX_STEP, largest_ctx(shape, 1, budget, kv_type))
        reasons.append(f"ctx {use_ctx}: the largest context that fits in 70 % of the available RAM")
    else:
        trained = f" (the model was trained on {shape.context_length})" if shape.context_length else ""
        reasons.append(f"ctx {use_ctx}: {'as asked' if ctx else 'the default'}{trained}")
    total = estimate_memory(shape, use_ctx, parallel, kv_type).total
    reasons.append(f"parallel {parallel}: slots of {use_ctx} tokens fitting in 70 % of the available RAM "
                   f"({_gb(total)} of {_gb(hardware.ram_available)}), at most {MAX_AUTO_SLOTS}: beyond that a CPU "
                   "decode step grows about linearly")
    command = f"lokal serve --model {shape.name} --ctx-size {use_ctx} --parallel {parallel} --threads {threads}"
    return ServeAdvice(shape.name, threads, parallel, use_ctx, command, tuple(reasons))


_TARGET = re.compile(r"(\d+(?:\.\d+)?)\s*b\s*(?:@\s*(\d+(?:\.\d+)?)\s*(k)?)?\s*(?:[x×*]\s*(\d+))?")


def parse_target(text: str) -> Target:
    """``7b@8k x4`` (7B parameters, 8192 tokens per user, 4 users); ``@`` and ``x`` are optional
    (4096 tokens, 1 user)."""
    m = _TARGET.fullmatch(text.strip().lower())
    if not m:
        raise ValueError(f'target "{text}": expected e.g. "7b@8k x4" (size@context x users)')
    ctx = 4096
    if m.group(2):
        ctx = int(float(m.group(2)) * (1024 if m.group(3) else 1))
    users = int(m.group(4) or 1)
    if ctx < 1 or users < 1:
        raise ValueError(f'target "{text}": context and users must be at least 1')
    return Target(size_b=float(m.group(1)), ctx=ctx, users=users, text=text.strip())


def advise_target(target: Target, available: int) -> TargetAdvice:
    """Which quantization (and KV cache type) of a model that size runs ``users`` slots of ``ctx``
    tokens: the best quality that fits, trying a q8_0 KV cache before a smaller quantization."""
    options = []
    for quant in QUALITY_ORDER:
        shape = generic_shape(f"{target.size_b:g}b:{quant}")
        assert shape is not None
        for kv_type in ("f16", "q8_0"):
            total = estimate_memory(shape, target.ctx, target.users, kv_type).total
            options.append(TargetOption(quant, kv_type, total, classify(total, available)))
    for verdict in ("fits", "tight"):
        for option in options:
            if option.fit == verdict:
                kv = "" if option.kv_type == "f16" else f" with a {option.kv_type} KV cache"
                how = "fits" if verdict == "fits" else "fits, tightly,"
                reason = (f"{option.quantization}{kv} is the best quality that {how}"
                          f" ({_gb(option.needed_bytes)} of {_gb(available)} available)")
                return TargetAdvice(target, tuple(options), option, reason)
    smallest = min(options, key=lambda o: o.needed_bytes)
    return TargetAdvice(target, tuple(options), None,
                        f"nothing fits: even {smallest.quantization} with a {smallest.kv_type} KV cache needs "
                        f"{_gb(smallest.needed_bytes)} of {_gb(available)} available; fewer users or a shorter context")


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"
