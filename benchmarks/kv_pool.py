"""Per-slot KV cache against the shared pool, at the same KV budget (issue 17, item 3).

A burst of requests of mixed lengths (most short, some long, as chat traffic is) goes to the engine at
once, offline (no HTTP), once with fixed slots of ``--ctx`` tokens (budget / ctx slots) and once with one
shared pool of the same cells (``--seqs`` sequences at most). Reports, per mode, the median over
``--reps`` of: wall time until the last request finishes, aggregate generated tok/s, TTFT p50/p95,
preemptions; then shared ÷ per-slot. ``--agreement`` also runs every request alone and counts the
greedy answers under load that equal the lone ones (per-slot: all, by design; shared: measured).

    python benchmarks/kv_pool.py --model smollm2:135m --budget 8192 --ctx 1024 --requests 64 --reps 3
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import dataclass

from lokal.config import Settings
from lokal.engine.engine import Engine
from lokal.engine.llama_model import ContextShape, LlamaModel
from lokal.engine.sampling import SamplingParams
from lokal.engine.sequence import Sequence
from lokal.store.model_store import ModelStore
from lokal.store.pull import pull_model

WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches "
         "near an old river under a grey sky").split()


@dataclass
class Run:
    wall_s: float
    tok_s: float
    ttft_p50: float
    ttft_p95: float
    preemptions: int
    texts: list[str]


def workload(n: int, seed: int) -> list[tuple[int, int]]:
    """(prompt tokens, generated tokens) per request: 70 % short chats, 30 % long documents."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < 0.7:
            out.append((rng.randint(30, 120), rng.randint(16, 128)))
        else:
            out.append((rng.randint(400, 800), rng.randint(16, 128)))
    return out


def prompt_tokens(model: LlamaModel, n_tokens: int, i: int) -> list[int]:
    rng = random.Random(i)
    text = f"Request {i}: " + " ".join(rng.choice(WORDS) for _ in range(n_tokens * 2))
    return model.tokenize(text, add_special=True, parse_special=False)[:n_tokens]


def run(engine: Engine, jobs: list[tuple[list[int], int]]) -> Run:
    start = time.perf_counter()
    seqs: list[Sequence] = [engine.add(p, SamplingParams(temperature=0, max_tokens=m, ignore_eos=True))
                            for p, m in jobs]
    texts: dict[int, list[str]] = {s.id: [] for s in seqs}
    preempted = engine.n_preempted
    while engine.has_work():
        for seq, delta in engine.step():
            if delta.error:
                raise RuntimeError(delta.error)
            texts[seq.id].append(delta.text)
    wall = time.perf_counter() - start
    ttfts = sorted((s.first_token_at or start) - s.arrived_at for s in seqs)
    return Run(wall, sum(s.n_generated for s in seqs) / wall, statistics.median(ttfts),
               ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))], engine.n_preempted - preempted,
               ["".join(texts[s.id]) for s in seqs])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2:135m")
    ap.add_argument("--budget", type=int, default=8192, help="KV cells in either mode")
    ap.add_argument("--ctx", type=int, default=1024, help="a sequence's context (per-slot: one slot's)")
    ap.add_argument("--seqs", type=int, default=64, help="shared pool: sequences at most")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--agreement", action="store_true", help="also compare each answer with its lone run")
    args = ap.parse_args()

    store = ModelStore(Settings().home)
    pull_model(store, args.model)
    path = store.gguf_path(args.model)
    shapes = {
        "per-slot": ContextShape(slot_ctx=args.ctx, n_slots=args.budget // args.ctx, n_batch=512,
                                 n_threads=args.threads),
        "shared": ContextShape(slot_ctx=args.ctx, n_slots=args.seqs, n_batch=512, n_threads=args.threads,
                               kv_pool="shared", pool_cells=args.budget),
    }
    results: dict[str, list[Run]] = {}
    agreement: dict[str, str] = {}
    for mode, shape in shapes.items():
        model = LlamaModel(path, shape)
        try:
            jobs = [(prompt_tokens(model, p, i), m) for i, (p, m) in enumerate(workload(args.requests, args.seed))]
            results[mode] = []
            for _ in range(args.reps):
                results[mode].append(run(Engine(model, prefix_cache=False), jobs))
            if args.agreement:
                alone = [run(Engine(model, prefix_cache=False), [job]).texts[0] for job in jobs]
                same = sum(a == b for a, b in zip(results[mode][0].texts, alone, strict=True))
                agreement[mode] = f"{same}/{len(jobs)}"
        finally:
            model.close()

    def med(mode: str, field: str) -> float:
        return statistics.median(getattr(r, field) for r in results[mode])

    print(f"{args.model}, {args.requests} requests, {args.budget} KV cells, ctx {args.ctx}, "
          f"{args.threads} threads, median of {args.reps}")
    print(f"{'mode':10} {'wall s':>8} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p95':>9} {'preempt':>8} "
          f"{'same as alone':>14}")
    for mode in shapes:
        print(f"{mode:10} {med(mode, 'wall_s'):8.2f} {med(mode, 'tok_s'):8.1f} {med(mode, 'ttft_p50'):9.2f} "
              f"{med(mode, 'ttft_p95'):9.2f} {med(mode, 'preemptions'):8.0f} {agreement.get(mode, '-'):>14}")
    print(f"shared ÷ per-slot: tok/s {med('shared', 'tok_s') / med('per-slot', 'tok_s'):.2f}x, "
          f"TTFT p50 {med('shared', 'ttft_p50') / med('per-slot', 'ttft_p50'):.2f}x, "
          f"TTFT p95 {med('shared', 'ttft_p95') / med('per-slot', 'ttft_p95'):.2f}x")


if __name__ == "__main__":
    main()
