"""Concurrent streaming load against OpenAI-compatible servers: lokal vs llama.cpp's and llama-cpp-python's servers.

For each concurrency c, c clients each stream `--rounds` chat completions back to back (closed loop) with
`--max-tokens` tokens each (EOS ignored where the server supports `ignore_eos`; completion tokens are counted
from what came back). Every target gets the same prompts in the same order. Prints TTFT p50/p95, aggregate
completion tok/s, req/s, mean latency and per-stream decode tok/s, then each peer's ratio to lokal.

A warm-prefix check follows: TTFT of a request whose ~1,500-token system prompt an earlier request already
read, against the TTFT of the first (cold) one.

    python benchmarks/serve_load.py --threads 2 --slots 8 \\
        --llama-cpp-python --llama-server /path/to/llama-server

Other servers: `--url NAME=http://host:port[/v1]@model` (started by you).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import servers

from lokal.config import Settings
from lokal.store.model_store import ModelStore
from lokal.store.pull import pull_model

TOPICS = [
    "a lighthouse keeper", "the history of tea", "how bridges stay up", "a robot learning to paint",
    "the water cycle", "a city under the sea", "why the sky is blue", "a chess tournament",
    "volcanoes", "a long train journey", "how bees make honey", "the first day at a new school",
    "a lost dog finding home", "the invention of paper", "life on Mars", "a baker at dawn",
    "the northern lights", "an old clock shop", "how rainbows form", "a mountain rescue",
    "the silk road", "a storm at sea", "how computers add numbers", "a garden in winter",
    "the moon landing", "a market in Marrakesh", "how vaccines work", "a library at midnight",
    "the migration of whales", "a violin maker", "how glaciers move", "a desert caravan",
]


def prompt(i: int) -> str:
    return f"Write a detailed essay about {TOPICS[i % len(TOPICS)]}. Request {i}."


@dataclass
class Result:
    ttft: float
    latency: float
    tokens: int
    decode_tps: float | None


async def stream_one(client: httpx.AsyncClient, url: str, model: str, messages: list[dict[str, str]],
                     max_tokens: int) -> Result:
    body = {"model": model, "messages": messages, "stream": True, "temperature": 0, "max_tokens": max_tokens,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = last = 0.0
    chunks = usage = 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line.strip() == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"].get("completion_tokens") or 0
            choices = chunk.get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
                chunks += 1
    end = time.perf_counter()
    if not first:
        raise RuntimeError(f"{url}: no content streamed")
    tokens = usage or chunks
    decode = (tokens - 1) / (last - first) if tokens > 1 and last > first else None
    return Result(first - start, end - start, tokens, decode)


async def run_load(url: str, model: str, c: int, rounds: int, max_tokens: int) -> tuple[list[Result], float]:
    # No connection reuse: llama-server closes idle keep-alive connections without notice, and a request
    # sent on one fails with 'Server disconnected'. A fresh loopback connection per request costs every
    # target the same ~1 ms.
    limits = httpx.Limits(max_connections=c + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600), limits=limits) as client:
        async def worker(w: int) -> list[Result]:
            out = []
            for r in range(rounds):
                msg = [{"role": "user", "content": prompt(w * rounds + r)}]
                out.append(await stream_one(client, url, model, msg, max_tokens))
            return out

        start = time.perf_counter()
        per_worker = await asyncio.gather(*(worker(w) for w in range(c)))
        wall = time.perf_counter() - start
    return [r for rs in per_worker for r in rs], wall


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def summarize(results: list[Result], wall: float) -> dict[str, float]:
    ttfts = [r.ttft for r in results]
    decodes = [r.decode_tps for r in results if r.decode_tps]
    tokens = sum(r.tokens for r in results)
    return {
        "ttft_p50_ms": 1000 * pct(ttfts, 0.5), "ttft_p95_ms": 1000 * pct(ttfts, 0.95),
        "tok_s": tokens / wall, "req_s": len(results) / wall,
        "latency_s": statistics.mean(r.latency for r in results),
        "stream_tok_s": statistics.median(decodes) if decodes else 0.0,
        "tokens_per_req": tokens / len(results),
    }


def system_prompt(n: int, salt: int) -> str:
    """About n tokens of varied, non-repeating text; `salt` at the front makes each trial's prefix new."""
    words = []
    i = 0
    while len(words) < int(n * 0.75):
        t = TOPICS[i % len(TOPICS)]
        words += f"Rule {i}: when asked about {t}, answer with care and cite section {i * 7 % 101}.".split()
        i += 1
    return f"Session {salt}. You are a helpful assistant. " + " ".join(words)


async def warm_prefix(url: str, model: str, trials: int, prefix_tokens: int) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(600)) as client:
        cold, warm = [], []
        for t in range(trials):
            system = {"role": "system", "content": system_prompt(prefix_tokens, int(time.time() * 1000) + t)}
            a = await stream_one(client, url, model, [system, {"role": "user", "content": "Name a colour."}], 8)
            b = await stream_one(client, url, model, [system, {"role": "user", "content": "Name a fruit."}], 8)
            cold.append(a.ttft)
            warm.append(b.ttft)
    return {"cold_ms": 1000 * statistics.median(cold), "warm_ms": 1000 * statistics.median(warm),
            "ratio": statistics.median(w / c for w, c in zip(warm, cold, strict=True))}


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
    args = ap.parse_args()

    settings = Settings()
    store = ModelStore(settings.home)
    pull_model(store, args.model)
    gguf = store.gguf_path(args.model)

    targets: list[servers.Server | tuple[str, str, str]] = [
        servers.lokal(args.model, settings.home, args.threads, args.slots, args.ctx)]
    if args.llama_server:
        targets.append(servers.llama_server(args.llama_server, gguf, args.threads, args.slots, args.ctx))
    if args.llama_cpp_python:
        targets.append(servers.llama_cpp_python(gguf, args.threads, args.ctx))
    for spec in args.url:
        name, rest = spec.split("=", 1)
        url, _, model = rest.partition("@")
        targets.append((name, url.removesuffix("/").removesuffix("/v1"), model or args.model))

    reps = args.reps
    table: dict[str, dict[str, object]] = {}
    with contextlib.ExitStack() as stack:
        # All servers are up at once and idle between turns; each measurement goes round the targets in
        # turn, `--reps` times, and keeps the median, so drift on a shared machine hits every target alike.
        live: list[tuple[str, str, str, servers.Server | None]] = []
        for target in targets:
            if isinstance(target, tuple):
                live.append((*target, None))
            else:
                target.log = Path(args.logs) / f"{target.name.replace(' ', '-')}.log"
                srv = stack.enter_context(target)
                live.append((srv.name, srv.url, srv.model, srv))
                print(f"started {srv.name} on {srv.url} (log: {srv.log})", flush=True)
        for name, url, model, _ in live:
            asyncio.run(run_load(url, model, 1, 1, 8))  # warm-up: page in weights, first allocations
            table[name] = {}
        for c in args.concurrency:
            rounds = args.rounds if c > 1 else max(args.rounds, 3)
            runs: dict[str, list[dict[str, float]]] = {name: [] for name, *_ in live}
            for _ in range(reps):
                for name, url, model, _srv in live:
                    results, wall = asyncio.run(run_load(url, model, c, rounds, args.max_tokens))
                    runs[name].append(summarize(results, wall))
                    print(f"  {name} c={c}: {runs[name][-1]['tok_s']:.1f} tok/s", flush=True)
            for name, rs in runs.items():
                table[name][f"c{c}"] = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        for name, url, model, srv in live:
            table[name]["prefix"] = asyncio.run(warm_prefix(url, model, args.prefix_trials, args.prefix_tokens))
            print(f"  {name} prefix: {table[name]['prefix']}", flush=True)
            if srv is not None:
                table[name]["rss_mib"] = srv.rss_mib()

    report(table, args)
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))


def report(table: dict[str, dict[str, object]], args: argparse.Namespace) -> None:
    print(f"\nmodel={args.model} threads={args.threads} slots={args.slots} ctx/slot={args.ctx} "
          f"max_tokens={args.max_tokens} rounds={args.rounds}")
    head = f"{'target':<26} {'c':>3} {'TTFT p50':>9} {'TTFT p95':>9} {'tok/s':>8} {'req/s':>6} " \
           f"{'latency':>8} {'stream tok/s':>12} {'tok/req':>7} {'vs lokal':>9}"
    print(head)
    base = table["lokal"]
    for c in args.concurrency:
        for name, row in table.items():
            s = row[f"c{c}"]
            assert isinstance(s, dict)
            ratio = s["tok_s"] / base[f"c{c}"]["tok_s"]  # type: ignore[index]
            print(f"{name:<26} {c:>3} {s['ttft_p50_ms']:>7.0f}ms {s['ttft_p95_ms']:>7.0f}ms {s['tok_s']:>8.1f} "
                  f"{s['req_s']:>6.2f} {s['latency_s']:>7.2f}s {s['stream_tok_s']:>12.1f} "
                  f"{s['tokens_per_req']:>7.1f} {ratio:>8.2f}x")
    print(f"\n{'target':<26} {'cold TTFT':>10} {'warm TTFT':>10} {'warm/cold':>10} {'RSS MiB':>8}")
    for name, row in table.items():
        p = row["prefix"]
        assert isinstance(p, dict)
        rss = row.get("rss_mib")
        print(f"{name:<26} {p['cold_ms']:>8.0f}ms {p['warm_ms']:>8.0f}ms {p['ratio']:>10.2f} "
              f"{rss if rss is None else f'{rss:.0f}':>8}")


if __name__ == "__main__":
    main()
