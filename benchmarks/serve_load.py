"""Concurrent streaming load against OpenAI-compatible servers: lokal vs llama.cpp's and llama-cpp-python's servers.

A thin wrapper over `lokal.bench` (the same machinery as `lokal bench run`) that keeps this script's command line
and table. For each concurrency c, c clients each stream `--rounds` chat completions back to back (closed loop)
with `--max-tokens` tokens each (EOS ignored where the server supports `ignore_eos`; completion tokens are the
server's usage count, else the streamed chunks). Every target gets the same prompts in the same order. Prints TTFT
p50/p95, aggregate completion tok/s, req/s, mean latency and per-stream decode tok/s, then each peer's ratio to
lokal.

A warm-prefix check follows: TTFT of a request whose ~1,500-token system prompt an earlier request already
read, against the TTFT of the first (cold) one. RSS is the peak of each server's process tree during the run.

    python benchmarks/serve_load.py --threads 2 --slots 8 \\
        --llama-cpp-python --llama-server /path/to/llama-server

Other servers: `--url NAME=http://host:port[/v1]@model` (started by you).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from lokal.bench.metrics import paired_tok_s_ratio
from lokal.bench.run import PrintEvents, RunConfig, run_bench
from lokal.bench.scenarios import Scenario
from lokal.bench.targets import LocalOptions, Target, llama_cpp_python, llama_server, lokal_server, parse_target
from lokal.config import Settings
from lokal.store.model_store import ModelStore
from lokal.store.pull import pull_model


def legacy_table(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """This script's JSON layout: {target: {"c<N>": {...}, "prefix": {...}, "rss_mib": peak}}."""
    table: dict[str, dict[str, Any]] = {}
    for row in doc["targets"]:
        if row["status"] == "failed":
            continue
        entry: dict[str, Any] = {}
        for lv in row["levels"]:
            tt = lv["ttft_ms"] or {}
            entry[f"c{lv['concurrency']}"] = {
                "ttft_p50_ms": tt.get("p50"), "ttft_p95_ms": tt.get("p95"), "tok_s": lv["tok_s"],
                "req_s": lv["req_s"], "latency_s": (lv["latency_s"] or {}).get("mean"),
                "stream_tok_s": lv["stream_tok_s"] or 0.0, "tokens_per_req": lv["tokens_per_req"],
                "errors": lv["errors"], "tok_s_reps": lv.get("tok_s_reps", []),
            }
        if row.get("prefix"):
            entry["prefix"] = row["prefix"]
        if row.get("peak_rss_mib") is not None:
            entry["rss_mib"] = row["peak_rss_mib"]
        table[row["name"]] = entry
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2:135m")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--slots", type=int, default=8, help="lokal --parallel and llama-server -np")
    ap.add_argument("--ctx", type=int, default=4096, help="context per slot")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 32])
    ap.add_argument("--rounds", type=int, default=2, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--prefix-tokens", type=int, default=1500)
    ap.add_argument("--prefix-trials", type=int, default=3)
    ap.add_argument("--llama-cpp-python", action="store_true", help="also run `python -m llama_cpp.server`")
    ap.add_argument("--llama-server", default=None, help="path to llama.cpp's llama-server binary")
    ap.add_argument("--url", action="append", default=[], help="NAME=URL@MODEL of a server you started")
    ap.add_argument("--reps", type=int, default=3, help="measurements per target and concurrency (median kept)")
    ap.add_argument("--logs", default=tempfile.gettempdir(), help="folder for the servers' logs")
    ap.add_argument("--json", default=None, help="write all numbers to this file")
    ap.add_argument("--bench-json", default=None, help="also write the full `lokal bench` document")
    args = ap.parse_args()

    settings = Settings()
    store = ModelStore(settings.home)
    pull_model(store, args.model)
    gguf = store.gguf_path(args.model)

    srv = lokal_server(args.model, settings.home, args.threads, args.slots, args.ctx)
    targets = [Target("lokal", srv.url, srv.model, kind="lokal", server=srv)]
    if args.llama_server:
        srv = llama_server(args.llama_server, gguf, args.threads, args.slots, args.ctx)
        targets.append(Target("llama-server", srv.url, srv.model, kind="llama-server", server=srv))
    if args.llama_cpp_python:
        srv = llama_cpp_python(gguf, args.threads, args.ctx)
        targets.append(Target("llama-cpp-python server", srv.url, srv.model, kind="llama-cpp-python", server=srv))
    local = LocalOptions(args.model, settings.home, args.threads, args.slots, args.ctx, gguf)
    targets += [parse_target(spec, local) for spec in args.url]

    scenario = Scenario("serve-load", args.concurrency, args.rounds, prefix_check=args.prefix_trials > 0)
    cfg = RunConfig(scenario, max_tokens=args.max_tokens, reps=args.reps, prefix_trials=args.prefix_trials,
                    prefix_tokens=args.prefix_tokens, baseline="lokal", logs=Path(args.logs),
                    meta={"model": args.model, "threads": args.threads, "slots": args.slots, "ctx": args.ctx})
    doc = run_bench(targets, cfg, PrintEvents())
    table = legacy_table(doc)
    report(table, args)
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))
    if args.bench_json:
        Path(args.bench_json).write_text(json.dumps(doc, indent=2))


def report(table: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\nmodel={args.model} threads={args.threads} slots={args.slots} ctx/slot={args.ctx} "
          f"max_tokens={args.max_tokens} rounds={args.rounds}")
    head = f"{'target':<26} {'c':>3} {'TTFT p50':>9} {'TTFT p95':>9} {'tok/s':>8} {'req/s':>6} " \
           f"{'latency':>8} {'stream tok/s':>12} {'tok/req':>7} {'vs lokal':>9}"
    print(head)
    base = table.get("lokal", {})
    for c in args.concurrency:
        for name, row in table.items():
            s = row.get(f"c{c}")
            if s is None or s["ttft_p50_ms"] is None:
                print(f"{name:<26} {c:>3} (no successful requests)")
                continue
            b = base.get(f"c{c}")
            r = paired_tok_s_ratio(s, b) if b else None
            ratio = f"{r:>8.2f}x" if r is not None else f"{'—':>9}"
            errs = f"  ({s['errors']} errors)" if s["errors"] else ""
            print(f"{name:<26} {c:>3} {s['ttft_p50_ms']:>7.0f}ms {s['ttft_p95_ms']:>7.0f}ms {s['tok_s']:>8.1f} "
                  f"{s['req_s']:>6.2f} {s['latency_s']:>7.2f}s {s['stream_tok_s']:>12.1f} "
                  f"{s['tokens_per_req']:>7.1f} {ratio}{errs}")
    print("vs lokal: median over reps of the tok/s ratio within the rep")
    print(f"\n{'target':<26} {'cold TTFT':>10} {'warm TTFT':>10} {'warm/cold':>10} {'RSS MiB':>8}")
    for name, row in table.items():
        p = row.get("prefix")
        rss = row.get("rss_mib")
        rss_text = "—" if rss is None else f"{rss:.0f}"
        if p is None:
            print(f"{name:<26} {'—':>10} {'—':>10} {'—':>10} {rss_text:>8}")
            continue
        print(f"{name:<26} {p['cold_ms']:>8.0f}ms {p['warm_ms']:>8.0f}ms {p['ratio']:>10.2f} {rss_text:>8}")


if __name__ == "__main__":
    main()
