"""Soak test: many requests at fixed concurrency against a `lokal serve` this script starts, with the
production features on (an API key, the audit log, metrics). Reports errors, latency, throughput and
the server's RSS after a warm-up and at the end (the growth is what a leak would show).

The requests rotate over the four generation routes, streamed and not: OpenAI chat and text
completions (SSE) and Ollama chat and generate (NDJSON), each with a different prompt and a small
max_tokens so that the run takes minutes, not hours.

    python benchmarks/soak.py --requests 1000 --concurrency 20 --max-tokens 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil

from lokal.config import Settings
from lokal.store.model_store import ModelStore
from lokal.store.pull import pull_model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def request_for(i: int, model: str, max_tokens: int) -> tuple[str, dict[str, Any]]:
    """The i-th request: a route, streamed or not, with its own prompt."""
    prompt = f"Request {i}: name a colour and a number."
    stream = i % 2 == 0
    route = i % 4
    if route == 0:
        return "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": prompt}],
                                        "max_tokens": max_tokens, "stream": stream}
    if route == 1:
        return "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": stream}
    if route == 2:
        return "/api/chat", {"model": model, "messages": [{"role": "user", "content": prompt}],
                             "options": {"num_predict": max_tokens}, "stream": stream}
    return "/api/generate", {"model": model, "prompt": prompt, "options": {"num_predict": max_tokens},
                             "stream": stream}


async def one(client: httpx.AsyncClient, i: int, model: str, max_tokens: int) -> tuple[str, float]:
    """Run request i to its end; the outcome ("ok" or what went wrong) and its latency."""
    path, body = request_for(i, model, max_tokens)
    started = time.perf_counter()
    try:
        async with client.stream("POST", path, json=body) as r:
            text = (await r.aread()).decode()
        if r.status_code != 200:
            return f"HTTP {r.status_code}", time.perf_counter() - started
        finished = ('"finish_reason":"' in text.replace(" ", "") or '"done":true' in text.replace(" ", ""))
        if not finished or '"error"' in text:
            return "unfinished or error body", time.perf_counter() - started
        return "ok", time.perf_counter() - started
    except httpx.HTTPError as exc:
        return type(exc).__name__, time.perf_counter() - started


async def run_load(url: str, key: str, model: str, n: int, concurrency: int, max_tokens: int,
                   offset: int = 0) -> tuple[Counter[str], list[float], float]:
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(offset, offset + n):
        queue.put_nowait(i)
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                outcome, latency = await one(client, i, model, max_tokens)
                outcomes[outcome] += 1
                latencies.append(latency)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes, latencies, time.perf_counter() - started


def soak_home(store_home: Path, model: str) -> tuple[Path, str]:
    """A fresh LOKAL_HOME sharing the store's blobs and manifests, with one API key."""
    pull_model(ModelStore(store_home), model)
    home = Path(tempfile.mkdtemp(prefix="lokal-soak-"))
    for part in ("blobs", "manifests"):
        (home / part).symlink_to((store_home / part).resolve())
    done = subprocess.run([sys.executable, "-m", "lokal.cli.main", "keys", "create", "soak"],
                          env={**os.environ, "LOKAL_HOME": str(home)}, capture_output=True, text=True, check=True)
    return home, done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=100, help="requests before the first RSS reading")
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("--parallel", type=int, default=8, help="server slots")
    parser.add_argument("--ctx-size", type=int, default=2048)
    parser.add_argument("--home", type=Path, default=None, help="store to take the model from (LOKAL_HOME)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    home, key = soak_home(args.home or Settings().home, args.model)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (home / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lokal.cli.main", "serve", "--port", str(port), "--model", args.model,
         "--parallel", str(args.parallel), "--ctx-size", str(args.ctx_size), "--keep-alive", "-1"],
        env={**os.environ, "LOKAL_HOME": str(home), "LOKAL_LOG_LEVEL": "warning"}, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        rss_loaded = rss_mib(proc.pid)
        warm, _, _ = asyncio.run(run_load(url, key, args.model, args.warmup, args.concurrency, args.max_tokens))
        rss_start = rss_mib(proc.pid)
        outcomes, latencies, elapsed = asyncio.run(
            run_load(url, key, args.model, args.requests, args.concurrency, args.max_tokens, offset=args.warmup))
        rss_end = rss_mib(proc.pid)
        metrics = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"}).text
        audit_lines = sum(1 for _ in (home / "logs" / "audit.log").open())
    finally:
        proc.terminate()
        code = proc.wait(60)
    errors = sum(n for outcome, n in outcomes.items() if outcome != "ok") + sum(
        n for outcome, n in warm.items() if outcome != "ok")
    lat = sorted(latencies)
    result = {
        "requests": args.requests, "concurrency": args.concurrency, "max_tokens": args.max_tokens,
        "warmup": args.warmup, "errors": errors, "outcomes": dict(outcomes + warm),
        "seconds": round(elapsed, 1), "req_s": round(args.requests / elapsed, 2),
        "latency_p50_s": round(statistics.median(lat), 3), "latency_p95_s": round(lat[int(len(lat) * 0.95)], 3),
        "rss_loaded_mib": round(rss_loaded, 1), "rss_start_mib": round(rss_start, 1),
        "rss_end_mib": round(rss_end, 1), "rss_growth_pct": round(100 * (rss_end - rss_start) / rss_start, 2),
        "audit_lines": audit_lines, "server_exit_code": code,
        "metrics_lines": len(metrics.splitlines()),
    }
    print(json.dumps(result, indent=2))
    if errors:
        print(f"server log and audit log kept in {home}", file=sys.stderr)
    else:
        shutil.rmtree(home, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
