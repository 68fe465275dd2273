"""`lokal recommend`: the decision matrix as a program: needs in, a lokal configuration and its
reasons out, every number in the reasons measured or estimated on this machine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lokal.advise.advise import Placement, serve_advice
from lokal.advise.cost import Throughput
from lokal.advise.hardware import Hardware
from lokal.advise.memory import EstimateError, ModelShape, classify, estimate_memory, model_shape

FIT_WORDS = {"fits": "fits", "tight": "tight", "wont_fit": "won't fit"}
USE_CASES = ("chat", "code", "agents", "rag", "batch")
APIS = ("openai", "ollama", "both", "none")

# What each use case asks of a model: a chat template, tool calling, a context to plan for.
USE_CASE_NEEDS: dict[str, dict[str, Any]] = {
    "chat": {"ctx": 4096, "prefer": ("qwen2.5-coder:0.5b", "smollm2:135m"),
             "why": "an instruct model with a chat template"},
    "code": {"ctx": 8192, "prefer": ("qwen2.5-coder:0.5b",), "why": "a code model, and room for files in the context"},
    "agents": {"ctx": 8192, "prefer": ("qwen2.5-coder:0.5b",), "why": "native tool calling in the chat template"},
    "rag": {"ctx": 8192, "prefer": ("qwen2.5-coder:0.5b", "smollm2:135m"),
            "why": "room for retrieved passages; /v1/embeddings from the same model"},
    "batch": {"ctx": 2048, "prefer": ("smollm2:135m", "qwen2.5-coder:0.5b"), "why": "throughput over quality"},
}


@dataclass(frozen=True)
class Needs:
    """What the user told us (or the defaults)."""

    use_case: str = "chat"
    users: int = 1
    private: bool = True  # data must not leave the machine
    api: str = "openai"
    lan: bool = False  # reachable from other machines
    model: str | None = None  # a model the user insists on


@dataclass
class Recommendation:
    """The answer: a model and the command that serves it (None when nothing fits), and why."""

    model: str | None
    command: str | None
    settings: dict[str, Any]
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    measured: dict[str, Any] | None = None  # the bench figures the reasons cite

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "command": self.command, "settings": self.settings,
                "reasons": self.reasons, "warnings": self.warnings, "measured": self.measured}


def recommend(needs: Needs, hardware: Hardware, home: Path | None = None,
              throughput: Throughput | None = None, can_offload: bool = True) -> Recommendation:
    """Pick a model and serve settings for ``needs`` on ``hardware`` (with GPUs: judged by what stays
    in RAM once the layers that fit are offloaded; ``can_offload`` False for a CPU-only build), saying why."""
    if needs.use_case not in USE_CASES:
        raise ValueError(f"use case must be one of {', '.join(USE_CASES)}")
    if needs.api not in APIS:
        raise ValueError(f"api must be one of {', '.join(APIS)}")
    if needs.users < 1:
        raise ValueError(f"users must be at least 1 (got {needs.users})")
    wants = USE_CASE_NEEDS[needs.use_case]
    ctx = int(wants["ctx"])
    slots = max(1, min(needs.users, 8))
    reasons = [f"use case {needs.use_case}: {wants['why']}; planning {ctx} tokens per request"]
    warnings: list[str] = []
    candidates = [needs.model] if needs.model else list(wants["prefer"])
    chosen: ModelShape | None = None
    placement = Placement(hardware.gpus, can_offload)
    for name in candidates:
        try:
            shape = model_shape(name, home)
        except EstimateError as e:
            if needs.model:
                raise  # the model the user asked for: an error, not a warning
            warnings.append(str(e))
            continue
        if shape.source == "generic":
            raise EstimateError(f'"{name}" is a size for planning (lokal advise --target), not a model to serve; '
                                "name a model in the store or the catalog, a .gguf file or an hf.co/ name")
        use_ctx = min(ctx, shape.context_length or ctx)
        estimate = estimate_memory(shape, use_ctx, slots)
        plan = placement.plan(shape, estimate)
        total = placement.ram_needed(shape, estimate) or 0
        verdict = classify(total, hardware.ram_available)
        in_ram = (f" in RAM besides {plan.vram_bytes / 1e9:.2f} GB on the GPU ({plan.description})"
                  if plan is not None and plan.verdict != "cpu" else "")
        reasons.append(f"{shape.name} with {slots} slot(s) of {use_ctx} tokens needs {total / 1e9:.2f} GB{in_ram} "
                       f"(estimate: weights, KV cache, compute, overhead) of {hardware.ram_available / 1e9:.2f} GB "
                       f"available: {FIT_WORDS[verdict]}")
        if verdict != "wont_fit":
            chosen = shape
            ctx = use_ctx
            break
    if chosen is None:
        return Recommendation(None, None, {}, reasons, warnings + ["no candidate model fits this machine"])
    advice = serve_advice(chosen, hardware, ctx, slots=needs.users, can_offload=can_offload)
    reasons.extend(advice.reasons)
    if needs.users > advice.parallel:
        reasons.append(f"{needs.users} users share {advice.parallel} slots: the rest wait in the queue "
                       "(LOKAL_MAX_QUEUE, 503 with Retry-After when full)")
    command = advice.command
    if needs.lan:
        command = command.replace("lokal serve", "lokal serve --host 0.0.0.0")
        reasons.append("reachable from the LAN: create an API key first (lokal keys create NAME); "
                       "lokal warns loudly when it serves beyond loopback without one")
    api_line = {
        "openai": "OpenAI clients: base_url http://HOST:11435/v1",
        "ollama": "Ollama clients: host http://HOST:11435 (the /api routes)",
        "both": "OpenAI (/v1) and Ollama (/api) on the same port",
        "none": "the terminal: lokal run MODEL",
    }[needs.api]
    reasons.append(f"API: {api_line}")
    if needs.private:
        reasons.append("private: prompts and answers stay on this machine (lokal makes no outbound calls when serving)")
    else:
        reasons.append("not private-only: a cloud API may be cheaper at low volume; `lokal cost` compares")
    measured = None
    if throughput is not None:
        measured = _measured(throughput, chosen, home, reasons, warnings)
    elif hardware.cores <= 2 and needs.users > 2:
        warnings.append(f"{hardware.cores} cores for {needs.users} users: expect a few tokens/s each; "
                        "run `lokal bench` and pass --bench to check")
    settings = {"model": chosen.name, "ctx": advice.ctx, "parallel": advice.parallel, "threads": advice.threads,
                "host": "0.0.0.0" if needs.lan else "127.0.0.1"}
    return Recommendation(chosen.name, command, settings, reasons, warnings, measured)


def _measured(throughput: Throughput, chosen: ModelShape, home: Path | None,
              reasons: list[str], warnings: list[str]) -> dict[str, Any]:
    """Cite the bench: tok/s per busy slot at the level measured, scaled by the weights when the
    bench ran another model (CPU decoding reads every weight once a step)."""
    level = throughput.concurrency or 1
    per_slot = throughput.tok_s / level
    scale = 1.0
    note = ""
    if throughput.model and throughput.model != chosen.name:
        try:
            benched = model_shape(throughput.model, home)
            scale = benched.weights_bytes / chosen.weights_bytes
            note = (f"; measured on {throughput.model}: {chosen.name} has {1 / scale:.1f}x its weights, so about "
                    f"{per_slot * scale:.1f} tok/s per slot (scaled by the weights, a pessimistic guess: bench "
                    f"{chosen.name} to know)")
        except EstimateError:
            note = f"; measured on {throughput.model}, not {chosen.name}: run lokal bench with it to know"
    expected = per_slot * scale
    reasons.append(f"measured throughput {throughput.tok_s:.1f} tok/s at {level} request(s) in flight "
                   f"({throughput.source}): {per_slot:.1f} tok/s per busy slot{note}")
    if expected < 5:
        warnings.append(f"about {expected:.1f} tok/s per user is slower than reading speed; "
                        "fewer slots or a smaller model")
    return {"tok_s": throughput.tok_s, "source": throughput.source, "model": throughput.model,
            "concurrency": throughput.concurrency, "per_slot_tok_s": per_slot, "expected_per_slot_tok_s": expected}
