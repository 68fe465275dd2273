"""`lokal advise`: what fits on this machine, with which context and slots, and how to serve it.

With NVIDIA GPUs (and a llama.cpp build that can use them) each model gets an offload plan
(``lokal.advise.offload``): fits on GPU, partial (N of M layers) or CPU only; the RAM verdict then
judges what stays in RAM."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lokal.advise.hardware import Gpu, Hardware
from lokal.advise.memory import (
    TIGHT_SHARE,
    EstimateError,
    MemoryEstimate,
    ModelShape,
    classify,
    estimate_memory,
    generic_shape,
    model_shape,
)
from lokal.advise.offload import VRAM_MARGIN_BYTES, OffloadPlan, plan_for
from lokal.engine.devices import cpu_build_note
from lokal.runtime.sizing import MAX_AUTO_SLOTS
from lokal.store.kinds import kind_from_facts

CTX_STEP = 256
PLANNING_SIZES = ("1b", "3b", "7b", "14b", "32b", "70b")  # generic rows of the default table, at Q4_K_M
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
    offload: OffloadPlan | None = None  # where its layers go, when the machine has GPUs

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["estimate"] = self.estimate.to_dict()
        data["offload"] = None if self.offload is None else self.offload.to_dict()
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


_RANK = {"cpu": 0, "partial": 1, "gpu": 2}


@dataclass(frozen=True)
class Placement:
    """Where models go on a machine: its GPUs (none: the CPU) and whether llama.cpp can use them."""

    gpus: tuple[Gpu, ...] = ()
    can_offload: bool = True

    def plan(self, shape: ModelShape, estimate: MemoryEstimate) -> OffloadPlan | None:
        if not self.gpus:
            return None
        return plan_for(shape, estimate, self.gpus, can_offload=self.can_offload)

    def ram_needed(self, shape: ModelShape, estimate: MemoryEstimate, at_least: str = "cpu") -> int | None:
        """The RAM a model needs: what stays there once its layers are on the GPUs; None when it
        would land worse than ``at_least`` (a model all on the GPU that no longer fits there)."""
        plan = self.plan(shape, estimate)
        if plan is None or plan.verdict == "cpu":
            return estimate.total if at_least == "cpu" else None
        return plan.host_bytes if _RANK[plan.verdict] >= _RANK[at_least] else None


CPU_ONLY = Placement()


def fit_row(shape: ModelShape, ctx: int, parallel: int, available: int, kv_type: str = "f16",
            placement: Placement = CPU_ONLY) -> FitRow:
    """Estimate one model and find the largest context and slot count that still fit (with GPUs:
    that stay as much on the GPU as at the asked ones, and whose rest fits in RAM)."""
    estimate = estimate_memory(shape, ctx, parallel, kv_type)
    plan = placement.plan(shape, estimate)
    verdict = plan.verdict if plan is not None else "cpu"
    needed = placement.ram_needed(shape, estimate)
    assert needed is not None
    return FitRow(
        model=shape.name,
        source=shape.source,
        quantization=shape.quantization,
        estimate=estimate,
        fit=classify(needed, available),
        max_ctx=largest_ctx(shape, parallel, available, kv_type, placement, verdict),
        max_parallel=largest_parallel(shape, ctx, available, kv_type, placement, verdict),
        offload=plan,
    )


def _fits(shape: ModelShape, ctx: int, parallel: int, available: int, kv_type: str, placement: Placement,
          at_least: str) -> bool:
    needed = placement.ram_needed(shape, estimate_memory(shape, ctx, parallel, kv_type), at_least)
    return needed is not None and needed <= available


def largest_ctx(shape: ModelShape, parallel: int, available: int, kv_type: str = "f16",
                placement: Placement = CPU_ONLY, at_least: str = "cpu") -> int:
    """The largest slot context (a multiple of 256, at most the trained context) that fits."""
    limit = shape.context_length or 131072
    lo, hi = 0, limit // CTX_STEP
    while lo < hi:  # the estimate grows with the context: bisect on steps of 256 tokens
        mid = (lo + hi + 1) // 2
        if _fits(shape, mid * CTX_STEP, parallel, available, kv_type, placement, at_least):
            lo = mid
        else:
            hi = mid - 1
    return lo * CTX_STEP


def largest_parallel(shape: ModelShape, ctx: int, available: int, kv_type: str = "f16",
                     placement: Placement = CPU_ONLY, at_least: str = "cpu") -> int:
    n = 0
    while n < MAX_PARALLEL and _fits(shape, ctx, n + 1, available, kv_type, placement, at_least):
        n += 1
    return n


def fit_table(
    shapes: Iterable[ModelShape], hardware: Hardware, ctx: int, parallel: int, kv_type: str = "f16",
    can_offload: bool = True,
) -> list[FitRow]:
    """Every model at ``ctx`` x ``parallel`` against the RAM available now and the GPUs' free
    memory (``can_offload``: whether this llama.cpp build can use them)."""
    placement = Placement(hardware.gpus, can_offload)
    return [fit_row(s, ctx, parallel, hardware.ram_available, kv_type, placement) for s in shapes]


def gpu_note(hardware: Hardware, can_offload: bool) -> str:
    """What advise says about the machine's GPUs."""
    if not hardware.gpus:
        return "no NVIDIA GPU found (NVML): models run on the CPU"
    if not can_offload:
        return cpu_build_note(tuple(g.name for g in hardware.gpus))
    return (f"GPU: as many layers as fit in each GPU's free memory less {VRAM_MARGIN_BYTES >> 20} MiB, with their "
            "KV cache (lokal serve --gpu-layers auto); FIT, MAX CTX and SLOTS then judge what stays in RAM, and "
            "a model all on the GPU keeps its limits there")


def candidate_shapes(home: Path | None, models: list[str] | None = None) -> list[ModelShape]:
    """The models to judge: those named, else the store's models, the catalog's (by name) and
    common sizes at Q4_K_M for planning (``PLANNING_SIZES``)."""
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
        if entry.name not in seen and entry.kind == "chat":  # the others serve beside a chat model
            shapes.append(model_shape(entry.name, None))
    shapes.extend(model_shape(size, None) for size in PLANNING_SIZES)
    return shapes


def serve_model(rows: list[FitRow], shapes: list[ModelShape]) -> ModelShape | None:
    """The model to suggest serving: the largest that fits (or is tight), preferring models already
    in the store over ones that would be pulled; never a generic size."""
    fitting = [(r, s) for r, s in zip(rows, shapes, strict=True)
               if r.fit != "wont_fit" and s.source != "generic" and kind_from_facts(s.facts) == "chat"]
    if not fitting:
        return None
    return max(fitting, key=lambda rs: (rs[1].source == "store", rs[1].weights_bytes))[1]


def serve_advice(
    shape: ModelShape, hardware: Hardware, ctx: int | None = None, kv_type: str = "f16", slots: int | None = None,
    can_offload: bool = True,
) -> ServeAdvice:
    """Threads, slots and context for ``lokal serve --model``: the physical cores, as many slots
    (up to 8, or ``slots`` when the users are known) as fit in 70 % of the RAM available (with
    GPUs: what stays in RAM, and for a model all on the GPU as many as keep it there), and the
    asked (or 4096) context."""
    if slots is not None and slots < 1:
        raise ValueError(f"slots must be at least 1 (got {slots})")
    reasons = []
    threads = hardware.physical_cores or hardware.cores
    reasons.append(f"threads {threads}: the {'physical' if hardware.physical_cores else 'logical'} cores "
                   "(llama.cpp gains nothing from hyper-threads)")
    wanted_ctx = ctx or min(4096, shape.context_length or 4096)
    budget = int(hardware.ram_available * TIGHT_SHARE)
    cap = MAX_AUTO_SLOTS if slots is None else max(1, min(slots, MAX_AUTO_SLOTS))
    placement = Placement(hardware.gpus, can_offload)
    first = placement.plan(shape, estimate_memory(shape, wanted_ctx, 1, kv_type))
    at_least = "gpu" if first is not None and first.verdict == "gpu" else "cpu"
    fitting = largest_parallel(shape, wanted_ctx, budget, kv_type, placement, at_least)
    parallel = max(1, min(cap, fitting))
    use_ctx = wanted_ctx
    if fitting == 0:
        use_ctx = max(CTX_STEP, largest_ctx(shape, 1, budget, kv_type, placement))
        reasons.append(f"ctx {use_ctx}: the largest context that fits in {TIGHT_SHARE:.0%} of the available RAM")
    else:
        trained = f" (the model was trained on {shape.context_length})" if shape.context_length else ""
        reasons.append(f"ctx {use_ctx}: {'as planned' if ctx else 'the default'}{trained}")
    estimate = estimate_memory(shape, use_ctx, parallel, kv_type)
    total = placement.ram_needed(shape, estimate) or 0
    if slots is None:
        why = f"as many as fit, at most {MAX_AUTO_SLOTS}"
    elif parallel == slots:
        why = f"the {slots} wanted"
    elif fitting < min(slots, MAX_AUTO_SLOTS):
        why = f"as many of the {slots} wanted as fit"
    else:
        why = f"{slots} wanted, at most {MAX_AUTO_SLOTS}"
    in_ram = " in RAM" if first is not None and first.verdict != "cpu" else ""
    reasons.append(f"parallel {parallel}: {why}; {parallel} slot(s) of {use_ctx} tokens need {_gb(total)}{in_ram} "
                   f"of the {_gb(budget)} that is {TIGHT_SHARE:.0%} of the available RAM; beyond {MAX_AUTO_SLOTS} a "
                   "CPU decode step grows about linearly")
    plan = placement.plan(shape, estimate)
    if plan is not None:
        kept = "; slots counted to keep every layer there" if at_least == "gpu" else ""
        reasons.append(f"GPU: {plan.description}: {_gb(plan.vram_bytes)} in VRAM, {_gb(plan.host_bytes)} in RAM"
                       f"{kept}")
    command = f"lokal serve --model {shape.name} --ctx-size {use_ctx} --parallel {parallel} --threads {threads}"
    return ServeAdvice(shape.name, threads, parallel, use_ctx, command, tuple(reasons))


_TARGET = re.compile(
    r"(?P<size>\d+(?:\.\d+)?)\s*b"
    r"(?:\s*(?:@|at)\s*(?P<ctx>\d+(?:\.\d+)?)\s*(?P<k>k)?\s*(?:tokens?|ctx|context)?)?"
    r"(?:\s*,?\s*(?:[x×*]\s*(?P<users>\d+)(?:\s*users?)?|(?P<users_words>\d+)\s*users?))?"
)


def parse_target(text: str) -> Target:
    """``7b@8k x4`` or ``7B at 8k, 4 users``: 7B parameters, 8192 tokens per user, 4 users.
    Context and users are optional (4096 tokens, 1 user)."""
    m = _TARGET.fullmatch(text.strip().lower())
    if not m:
        raise ValueError(f'target "{text}": expected e.g. "7b@8k x4" or "7b at 8k, 4 users"')
    ctx = 4096
    if m.group("ctx"):
        ctx = int(float(m.group("ctx")) * (1024 if m.group("k") else 1))
    users = int(m.group("users") or m.group("users_words") or 1)
    if float(m.group("size")) <= 0 or ctx < 1 or users < 1:
        raise ValueError(f'target "{text}": size, context and users must be more than 0')
    return Target(size_b=float(m.group("size")), ctx=ctx, users=users, text=text.strip())


def advise_target(target: Target, available: int) -> TargetAdvice:
    """Which quantization of a model that size runs ``users`` slots of ``ctx`` tokens: the best
    quality that fits with the f16 KV cache lokal runs; a q8_0 KV cache (llama.cpp's, not exposed
    by lokal yet) is only suggested when no quantization fits without it."""
    options = []
    for quant in QUALITY_ORDER:
        shape = generic_shape(f"{target.size_b:g}b:{quant}")
        assert shape is not None
        for kv_type in ("f16", "q8_0"):
            total = estimate_memory(shape, target.ctx, target.users, kv_type).total
            options.append(TargetOption(quant, kv_type, total, classify(total, available)))
    for kv_type in ("f16", "q8_0"):
        for verdict in ("fits", "tight"):
            for option in options:
                if option.kv_type == kv_type and option.fit == verdict:
                    kv = "" if kv_type == "f16" else f" with a {kv_type} KV cache (llama.cpp's; not in lokal yet)"
                    how = "fits" if verdict == "fits" else "fits, tightly,"
                    reason = (f"{option.quantization}{kv} is the best quality that {how}"
                              f" ({_gb(option.needed_bytes)} of {_gb(available)} available)")
                    return TargetAdvice(target, tuple(options), option, reason)
    smallest = min(options, key=lambda o: o.needed_bytes)
    return TargetAdvice(target, tuple(options), None,
                        f"nothing fits: even {smallest.quantization} with a {smallest.kv_type} KV cache needs "
                        f"{_gb(smallest.needed_bytes)} of {_gb(available)} available; fewer users or a shorter context")


def pull_warnings(name: str, ctx: int, parallel: int, hardware: Hardware, home: Path | None = None,
                  can_offload: bool = True) -> list[str]:
    """What to say before pulling ``name``: it will not fit (or is tight) in the RAM available at
    ``ctx`` x ``parallel`` (with GPUs: the part that stays in RAM once its layers are offloaded), or
    its file is larger than the free disk under the store. Empty when all is well or the model cannot
    be sized (a pull is never stopped by a guess)."""
    try:
        shape = model_shape(name, None)  # not ``home``: the store copy is what a pull would replace
        estimate = estimate_memory(shape, ctx, parallel)
    except (EstimateError, OSError):
        return []
    warnings = []
    placement = Placement(hardware.gpus, can_offload)
    plan = placement.plan(shape, estimate)
    needed = placement.ram_needed(shape, estimate) or 0
    verdict = classify(needed, hardware.ram_available)
    if verdict != "fits":
        word = "will not fit" if verdict == "wont_fit" else "will be tight"
        on_gpu = (f" in RAM besides the {_gb(plan.vram_bytes)} on the GPU ({plan.description})"
                  if plan is not None and plan.verdict != "cpu" else "")
        warnings.append(f"{name} {word}: it needs about {_gb(needed)}{on_gpu} at ctx {ctx} x {parallel} slot(s) "
                        f"and {_gb(hardware.ram_available)} of RAM is available now (see lokal advise)")
    size = download_size(name, shape)
    if hardware.disk_free is not None and size > hardware.disk_free:
        where = f" under {home}" if home is not None else ""
        warnings.append(f"{name} will not fit on disk: the file is about {_gb(size)} and {_gb(hardware.disk_free)} "
                        f"is free{where}")
    return warnings


def download_size(name: str, shape: ModelShape) -> int:
    """The file a pull writes: the catalog's exact size, else the tensors' bytes."""
    from lokal.store.catalog import find_catalog_entry

    entry = find_catalog_entry(name)
    return entry.size if entry is not None else shape.weights_bytes


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"
