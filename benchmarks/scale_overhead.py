"""What scale-out on Ray Serve costs, and the prefix-hit rate its router achieves (docs/scale-out.md).

In one run:

1. **Overhead.** A single lokal and `lokal serve --ray local --replicas 1` with the same model and settings
   (`--threads`, `--parallel`, `--ctx-size`), both up at once, measured in turns by `lokal.bench` (the machinery
   of `lokal bench run`): c=1, `--rounds` streamed chat completions of `--max-tokens` tokens, `--reps` times.
   Prints tok/s (the median over reps) and TTFT p50 (over every request) of each, the tok/s ratio (the median of
   the per-rep ratios) and the TTFT difference. Targets: tok/s >= 0.95x, TTFT p50 <= +15 ms.
2. **Prefix hits.** `lokal serve --ray local --replicas 2` alone: `--conversations` two-turn conversations,
   one after another (each with its own system prompt; the second turn sends the first's real answer back). A
   hit is a second turn whose usage reports `cached_tokens > 0`: the router sent it to the replica whose prefix
   cache holds the first turn. With two replicas, routing that ignored prefixes would hit about half the time.

    python benchmarks/scale_overhead.py --threads 1 --slots 1 --reps 3

Each `--ray local` starts its own Ray cluster on this machine (stopped with its ingress); the replicas ask Ray
for `--threads` CPUs each, so phase 2 needs 2 x `--threads` CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from lokal.bench.loadgen import RequestOptions, stream_request
from lokal.bench.metrics import paired_tok_s_ratio
from lokal.bench.run import PrintEvents, RunConfig, run_bench
from lokal.bench.scenarios import Prompt, Scenario, builtin_prompts, system_prompt
from lokal.bench.targets import LocalServer, Target, free_port, lokal_server
from lokal.config import Settings
from lokal.store.model_store import ModelStore
from lokal.store.pull import pull_model

TTFT_BUDGET_MS = 15.0
TOK_S_FLOOR = 0.95


def ray_server(single: LocalServer, replicas: int, home: Path) -> LocalServer:
    """The same `lokal serve` as `single` (its flags), as a Ray Serve ingress over `replicas` replicas on a new
    local Ray cluster; ready once the replicas have loaded the model."""
    port = free_port()
    argv = [*single.argv, "--ray", "local", "--replicas", str(replicas)]
    argv[argv.index("--port") + 1] = str(port)
    env = {**single.env, "LOKAL_HOME": str(home), "LOKAL_AUDIT_LOG": "false", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    return LocalServer(f"ray x{replicas}", argv, port, single.model, env, health="/health", startup_timeout=600)


async def prefix_hits(target: Target, conversations: int, max_tokens: int) -> tuple[int, int]:
    """(second turns with cached_tokens > 0, second turns answered) over two-turn conversations."""
    opts = RequestOptions(max_tokens=max_tokens, ignore_eos=False)
    firsts = builtin_prompts(conversations, seed=7)
    hits = answered = 0
    async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=5)) as client:
        for i, first in enumerate(firsts):
            messages = [{"role": "system", "content": system_prompt(200, 1000 + i)}, *first.messages]
            one = await stream_request(client, target, Prompt(messages), opts)
            if one.error:
                print(f"  conversation {i}: first turn failed: {one.error}", flush=True)
                continue
            turn2 = [*messages, {"role": "assistant", "content": one.text},
                     {"role": "user", "content": "Now say it in one sentence."}]
            two = await stream_request(client, target, Prompt(turn2), opts)
            if two.error:
                print(f"  conversation {i}: second turn failed: {two.error}", flush=True)
                continue
            answered += 1
            hits += bool(two.cached_tokens)
    return hits, answered


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2:135m")
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="per lokal / replica")
    ap.add_argument("--slots", type=int, default=1, help="--parallel of each lokal / replica")
    ap.add_argument("--ctx", type=int, default=2048, help="context per slot")
    ap.add_argument("--rounds", type=int, default=16, help="requests per rep at c=1")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3, help="measurements per target (medians kept; at least 3)")
    ap.add_argument("--conversations", type=int, default=20, help="two-turn conversations for the prefix-hit rate")
    ap.add_argument("--logs", default=tempfile.gettempdir(), help="folder for the servers' logs")
    ap.add_argument("--json", default=None, help="write all numbers to this file")
    args = ap.parse_args()
    if args.reps < 3:
        ap.error("--reps must be at least 3")

    settings = Settings()
    pull_model(ModelStore(settings.home), args.model)
    logs = Path(args.logs)

    single = lokal_server(args.model, settings.home, args.threads, args.slots, args.ctx)
    ray1 = ray_server(single, 1, settings.home)
    targets = [Target("single", single.url, single.model, kind="lokal", server=single),
               Target("ray", ray1.url, ray1.model, kind="lokal", server=ray1)]
    cfg = RunConfig(Scenario("scale-overhead", [1], args.rounds), max_tokens=args.max_tokens, reps=args.reps,
                    baseline="single", logs=logs,
                    meta={"model": args.model, "threads": args.threads, "slots": args.slots, "ctx": args.ctx})
    print("phase 1: overhead of the Ray ingress (c=1)", flush=True)
    doc = run_bench(targets, cfg, PrintEvents())
    levels = {row["name"]: row["levels"][0] for row in doc["targets"] if row["levels"]}
    if set(levels) != {"single", "ray"}:
        sys.exit(f"phase 1 failed: {doc['failures']}")

    print("phase 2: prefix hits over 2 replicas", flush=True)
    ray2 = ray_server(single, 2, settings.home)
    ray2.log = logs / "bench-ray-x2.log"
    with ray2:
        hits, answered = asyncio.run(prefix_hits(Target("ray x2", ray2.url, ray2.model), args.conversations, 16))

    result = report(levels, hits, answered, args)
    if args.json:
        Path(args.json).write_text(json.dumps({**result, "bench": doc}, indent=2))


def report(levels: dict[str, dict[str, Any]], hits: int, answered: int, args: argparse.Namespace) -> dict[str, Any]:
    single, ray = levels["single"], levels["ray"]
    ratio = paired_tok_s_ratio(ray, single)
    ttft = {name: (lv["ttft_ms"] or {}).get("p50") for name, lv in levels.items()}
    extra_ms = ttft["ray"] - ttft["single"] if ttft["ray"] is not None and ttft["single"] is not None else None
    print(f"\nmodel={args.model} threads={args.threads} slots={args.slots} ctx/slot={args.ctx} "
          f"max_tokens={args.max_tokens} rounds={args.rounds} reps={args.reps}")
    print(f"{'c=1':<28} {'TTFT p50':>9} {'decode tok/s':>12} {'tok/s':>8} {'errors':>6}")
    for name, label in (("single", "single lokal"), ("ray", "ray ingress + 1 replica")):
        lv = levels[name]
        print(f"{label:<28} {ttft[name] or 0:>7.1f}ms {lv['stream_tok_s'] or 0:>12.1f} {lv['tok_s']:>8.1f} "
              f"{lv['errors']:>6}")
    ok_tok = ratio is not None and ratio >= TOK_S_FLOOR
    ok_ttft = extra_ms is not None and extra_ms <= TTFT_BUDGET_MS
    print(f"tok/s ratio (median of per-rep ratios): {ratio:.3f}x  (target >= {TOK_S_FLOOR}: "
          f"{'met' if ok_tok else 'MISSED'})" if ratio is not None else "tok/s ratio: —")
    print(f"TTFT p50 difference: {extra_ms:+.1f} ms  (target <= {TTFT_BUDGET_MS:g} ms: "
          f"{'met' if ok_ttft else 'MISSED'})" if extra_ms is not None else "TTFT p50 difference: —")
    print(f"prefix hits over 2 replicas: {hits}/{answered} second turns with cached_tokens > 0")
    return {"tok_s_ratio": ratio, "ttft_p50_ms": ttft, "ttft_extra_ms": extra_ms,
            "tok_s": {name: lv["tok_s"] for name, lv in levels.items()},
            "prefix_hits": hits, "second_turns": answered}


if __name__ == "__main__":
    main()
