"""Soak test: many requests at fixed concurrency against a `lokal serve` this script starts, with the
production features on (an API key, the audit log, metrics). Reports errors, latency, throughput,
the server's RSS growth, and checks /metrics and the audit log against what it sent.

The requests rotate over the four generation routes, streamed and not: OpenAI chat and text
completions (SSE) and Ollama chat and generate (NDJSON), each with a different prompt and a small
max_tokens so that the run takes minutes, not hours.

Memory: every request leaves a prefix in a slot, and a slot's prefix is copied to the host prefix
tier when the slot is reused. That tier grows until it reaches its cap (``--prefix-cache-ram``,
the server's LOKAL_PREFIX_CACHE_RAM_MIB, 512 MiB by default) and stays there; growth before that
is the cache filling, not a leak. So the warm-up goes on until the tier is full (or
``--max-warmup`` requests), and the report gives:

- ``rss_growth_pct``: RSS at the end against RSS after the warm-up;
- ``rss_growth_ex_tier_pct``: the same with the tier's bytes (``lokal_prefix_cache_host_bytes``
  from /metrics) subtracted at both points; ``rss_growth_since_load_ex_tier_pct`` measures it
  from the model's load instead, warm-up included;
- ``trajectory``: RSS and the tier's size ``--samples`` times along the run (flat once settled).

Accounting: the run fails (exit code 1) unless every request succeeded and /metrics' counters
(HTTP requests by route and status, generations, prompt and generated tokens) and the audit log
grew by exactly what the soak sent and was told in each response's usage.

    python benchmarks/soak.py --requests 1000 --concurrency 20 --max-tokens 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from lokal.config import Settings
from lokal.store.model_store import ModelStore
from lokal.store.pull import pull_model

ROUTES = ("/v1/chat/completions", "/v1/completions", "/api/chat", "/api/generate")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def request_for(i: int, model: str, max_tokens: int) -> tuple[str, dict[str, Any], bool]:
    """The i-th request: a route, its body, and whether it streams; each has its own prompt."""
    prompt = f"Request {i}: name a colour and a number."
    stream = i % 2 == 0
    path = ROUTES[i % 4]
    body: dict[str, Any]
    if path == "/v1/chat/completions":
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
    elif path == "/v1/completions":
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens}
    elif path == "/api/chat":
        body = {"model": model, "messages": [{"role": "user", "content": prompt}],
                "options": {"num_predict": max_tokens}}
    else:
        body = {"model": model, "prompt": prompt, "options": {"num_predict": max_tokens}}
    body["stream"] = stream
    if stream and path.startswith("/v1/"):
        body["stream_options"] = {"include_usage": True}  # the last chunk carries the usage
    return path, body, stream


def usage_of(path: str, text: str, stream: bool) -> tuple[int, int] | None:
    """(prompt tokens, generated tokens) as the response reports them; None if it ended without them."""
    if path.startswith("/v1/"):
        docs = ([json.loads(line[5:]) for line in text.splitlines()
                 if line.startswith("data:") and line[5:].strip() != "[DONE]"] if stream else [json.loads(text)])
        finished = any(c.get("finish_reason") for d in docs for c in d.get("choices") or [])
        usage = next((d["usage"] for d in reversed(docs) if d.get("usage")), None)
        if not finished or usage is None:
            return None
        return int(usage["prompt_tokens"]), int(usage["completion_tokens"])
    docs = [json.loads(line) for line in text.splitlines() if line.strip()]
    last = docs[-1] if docs else {}
    if not last.get("done"):
        return None
    return int(last.get("prompt_eval_count", 0)), int(last.get("eval_count", 0))


@dataclass
class Tally:
    """What the soak sent and what the responses said, to compare with the server's counters."""

    outcomes: Counter[str] = field(default_factory=Counter)
    by_route: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.outcomes += other.outcomes
        self.by_route += other.by_route
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.latencies += other.latencies

    @property
    def sent(self) -> int:
        return sum(self.by_route.values())

    @property
    def errors(self) -> int:
        return sum(n for outcome, n in self.outcomes.items() if outcome != "ok")


async def one(client: httpx.AsyncClient, i: int, model: str, max_tokens: int, tally: Tally) -> None:
    """Run request i to its end and count it."""
    path, body, stream = request_for(i, model, max_tokens)
    tally.by_route[path] += 1
    started = time.perf_counter()
    try:
        async with client.stream("POST", path, json=body) as r:
            text = (await r.aread()).decode()
        if r.status_code != 200:
            outcome = f"HTTP {r.status_code}"
        elif (usage := usage_of(path, text, stream)) is None or '"error"' in text:
            outcome = "unfinished or error body"
        else:
            outcome = "ok"
            tally.prompt_tokens += usage[0]
            tally.completion_tokens += usage[1]
    except (httpx.HTTPError, ValueError) as exc:
        outcome = type(exc).__name__
    tally.outcomes[outcome] += 1
    tally.latencies.append(time.perf_counter() - started)


async def run_load(url: str, key: str, model: str, n: int, concurrency: int, max_tokens: int,
                   offset: int = 0, pid: int = 0, samples: int = 0) -> tuple[Tally, float, list[dict[str, float]]]:
    """Send n requests; with ``samples``, also read the server's RSS and host tier that many times
    along the way (after every n/samples requests)."""
    tally = Tally()
    trajectory: list[dict[str, float]] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(offset, offset + n):
        queue.put_nowait(i)
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                await one(client, queue.get_nowait(), model, max_tokens, tally)

        async def sampler() -> None:
            async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as probe:
                for k in range(1, samples + 1):
                    while len(tally.latencies) < n * k // samples:
                        await asyncio.sleep(0.2)
                    rss = rss_mib(pid)
                    host = parse_scrape((await probe.get("/metrics")).text).host_bytes / 2**20
                    trajectory.append({"requests": len(tally.latencies), "rss_mib": round(rss, 1),
                                       "host_tier_mib": round(host, 1), "rss_ex_tier_mib": round(rss - host, 1)})

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)), *([sampler()] if samples else []))
    return tally, time.perf_counter() - started, trajectory


@dataclass(frozen=True)
class Scrape:
    """The /metrics figures the soak checks, summed over models."""

    http: Counter[tuple[str, str]]  # (route, status) -> requests
    generations: Counter[str]  # outcome -> generations
    prompt_tokens: int
    generation_tokens: int
    host_bytes: int
    host_entries: int

    def minus(self, before: Scrape) -> dict[str, Any]:
        return {
            "http": {f"{route} {status}": n for (route, status), n in (self.http - before.http).items()},
            "generations": dict(self.generations - before.generations),
            "prompt_tokens": self.prompt_tokens - before.prompt_tokens,
            "generation_tokens": self.generation_tokens - before.generation_tokens,
        }


def scrape(url: str, key: str) -> Scrape:
    return parse_scrape(httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=30).text)


def parse_scrape(text: str) -> Scrape:
    http: Counter[tuple[str, str]] = Counter()
    generations: Counter[str] = Counter()
    sums: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "lokal_http_requests_total" and s.labels.get("route") in ROUTES:
                http[(s.labels["route"], s.labels["status"])] += int(s.value)
            elif s.name == "lokal_generation_requests_total":
                generations[s.labels["outcome"]] += int(s.value)
            elif s.name in ("lokal_prompt_tokens_total", "lokal_generation_tokens_total",
                            "lokal_prefix_cache_host_bytes", "lokal_prefix_cache_host_entries"):
                sums[s.name] += int(s.value)
    return Scrape(http, generations, sums["lokal_prompt_tokens_total"], sums["lokal_generation_tokens_total"],
                  sums["lokal_prefix_cache_host_bytes"], sums["lokal_prefix_cache_host_entries"])


def tier_full(s: Scrape, cap_bytes: int) -> bool:
    """Whether the host prefix tier is at its cap: another average entry would evict one."""
    if cap_bytes == 0:
        return True
    if s.host_entries == 0:
        return False
    return s.host_bytes + 2 * s.host_bytes / s.host_entries > cap_bytes


def audit_figures(path: Path) -> dict[str, Any]:
    lines = [json.loads(line) for line in path.open()] if path.exists() else []
    gen = [a for a in lines if a.get("route") in ROUTES]
    return {"lines": len(lines), "generation_lines": len(gen),
            "ok": sum(1 for a in gen if a.get("status") == 200),
            "prompt_tokens": sum(a.get("prompt_tokens") or 0 for a in gen),
            "completion_tokens": sum(a.get("completion_tokens") or 0 for a in gen)}


def mismatches(sent: Tally, delta: dict[str, Any], audit: dict[str, Any]) -> list[str]:
    """Every way the server's counters or audit log disagree with what the soak sent and was told."""
    out = []
    expected_http = {f"{route} 200": n for route, n in sent.by_route.items()}
    if delta["http"] != expected_http:
        out.append(f"/metrics lokal_http_requests_total grew by {delta['http']}, sent {expected_http}")
    if sum(delta["generations"].values()) != sent.sent or set(delta["generations"]) - {"stop", "length"}:
        out.append(f"/metrics lokal_generation_requests_total grew by {delta['generations']}, sent {sent.sent}")
    if delta["prompt_tokens"] != sent.prompt_tokens:
        out.append(f"/metrics lokal_prompt_tokens_total grew by {delta['prompt_tokens']}, "
                   f"the responses' usage adds up to {sent.prompt_tokens}")
    if delta["generation_tokens"] != sent.completion_tokens:
        out.append(f"/metrics lokal_generation_tokens_total grew by {delta['generation_tokens']}, "
                   f"the responses' usage adds up to {sent.completion_tokens}")
    want_audit = {"lines": sent.sent, "generation_lines": sent.sent, "ok": sent.sent,
                  "prompt_tokens": sent.prompt_tokens, "completion_tokens": sent.completion_tokens}
    if audit != want_audit:
        out.append(f"audit log has {audit}, expected {want_audit}")
    return out


def soak_home(store_home: Path, model: str) -> tuple[Path, str]:
    """A fresh LOKAL_HOME sharing the store's blobs and manifests, with one API key."""
    pull_model(ModelStore(store_home), model)
    home = Path(tempfile.mkdtemp(prefix="lokal-soak-"))
    for part in ("blobs", "manifests"):
        (home / part).symlink_to((store_home / part).resolve())
    done = subprocess.run([sys.executable, "-m", "lokal.cli.main", "keys", "create", "soak"],
                          env={**os.environ, "LOKAL_HOME": str(home)}, capture_output=True, text=True, check=True)
    return home, done.stdout.strip()


def pct(end: float, start: float) -> float:
    return round(100 * (end - start) / start, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="requests after the warm-up")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=100, help="warm-up requests at least")
    parser.add_argument("--max-warmup", type=int, default=2000,
                        help="warm-up requests at most, while the host prefix tier is not yet full")
    parser.add_argument("--prefix-cache-ram", type=int, default=512, help="the server's host prefix tier, MiB")
    parser.add_argument("--samples", type=int, default=10, help="RSS readings during the run after the warm-up")
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("--parallel", type=int, default=8, help="server slots")
    parser.add_argument("--ctx-size", type=int, default=2048)
    parser.add_argument("--home", type=Path, default=None, help="store to take the model from (LOKAL_HOME)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    home, key = soak_home(args.home or Settings().home, args.model)
    cap_bytes = args.prefix_cache_ram * 2**20
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (home / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lokal.cli.main", "serve", "--port", str(port), "--model", args.model,
         "--parallel", str(args.parallel), "--ctx-size", str(args.ctx_size), "--keep-alive", "-1",
         "--prefix-cache-ram", str(args.prefix_cache_ram)],
        env={**os.environ, "LOKAL_HOME": str(home), "LOKAL_LOG_LEVEL": "warning"}, stdout=log, stderr=subprocess.STDOUT,
    )
    signal.signal(signal.SIGTERM, lambda *_: (proc.terminate(), sys.exit(143)))  # never leave the server behind
    sent = Tally()
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        loaded = scrape(url, key)
        rss_loaded = rss_mib(proc.pid)

        # Warm-up: at least --warmup requests, then rounds until the host prefix tier is full.
        warmup, step = 0, max(args.concurrency * 5, 50)
        after_warmup = loaded
        while warmup < args.max_warmup:
            n = min(args.warmup - warmup if warmup < args.warmup else step, args.max_warmup - warmup)
            tally, seconds, _ = asyncio.run(
                run_load(url, key, args.model, n, args.concurrency, args.max_tokens, offset=warmup))
            sent.add(tally)
            warmup += n
            after_warmup = scrape(url, key)
            print(f"warm-up: {warmup} requests ({n / seconds:.2f} req/s), host prefix tier "
                  f"{after_warmup.host_bytes / 2**20:.0f}/{args.prefix_cache_ram} MiB "
                  f"({after_warmup.host_entries} entries), RSS {rss_mib(proc.pid):.0f} MiB", file=sys.stderr)
            if warmup >= args.warmup and tier_full(after_warmup, cap_bytes):
                break
        rss_start = rss_mib(proc.pid)

        main_run, elapsed, trajectory = asyncio.run(
            run_load(url, key, args.model, args.requests, args.concurrency, args.max_tokens, offset=warmup,
                     pid=proc.pid, samples=args.samples))
        sent.add(main_run)
        rss_end = rss_mib(proc.pid)
        # A stream's HTTP request is counted when its response has been sent: give the last ones a moment.
        for _ in range(50):
            end = scrape(url, key)
            if sum((end.http - loaded.http).values()) >= sent.sent:
                break
            time.sleep(0.1)
    finally:
        proc.terminate()
        code = proc.wait(60)
    audit = audit_figures(home / "logs" / "audit.log")
    delta = end.minus(loaded)
    problems = mismatches(sent, delta, audit) if not sent.errors else []
    lat = sorted(main_run.latencies)
    tier = {"cap_mib": args.prefix_cache_ram, "after_warmup_mib": round(after_warmup.host_bytes / 2**20, 1),
            "end_mib": round(end.host_bytes / 2**20, 1), "entries_end": end.host_entries,
            "full_after_warmup": tier_full(after_warmup, cap_bytes)}
    ex_loaded = rss_loaded - loaded.host_bytes / 2**20
    ex_start = rss_start - after_warmup.host_bytes / 2**20
    ex_end = rss_end - end.host_bytes / 2**20
    result = {
        "requests": args.requests, "concurrency": args.concurrency, "max_tokens": args.max_tokens,
        "warmup": warmup, "errors": sent.errors, "outcomes": dict(sent.outcomes),
        "seconds": round(elapsed, 1), "req_s": round(args.requests / elapsed, 2),
        "latency_p50_s": round(statistics.median(lat), 3), "latency_p95_s": round(lat[int(len(lat) * 0.95)], 3),
        "rss_loaded_mib": round(rss_loaded, 1), "rss_start_mib": round(rss_start, 1),
        "rss_end_mib": round(rss_end, 1), "host_tier": tier,
        "rss_growth_pct": pct(rss_end, rss_start),
        "rss_growth_ex_tier_pct": pct(ex_end, ex_start),
        "rss_growth_since_load_pct": pct(rss_end, rss_loaded),
        "rss_growth_since_load_ex_tier_pct": pct(ex_end, ex_loaded),
        "trajectory": trajectory,
        "sent": {"requests": sent.sent, "prompt_tokens": sent.prompt_tokens,
                 "completion_tokens": sent.completion_tokens},
        "metrics_delta": delta, "audit": audit, "mismatches": problems, "server_exit_code": code,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    failed = bool(sent.errors or problems or code != 0)
    if failed:
        for p in problems:
            print(f"MISMATCH: {p}", file=sys.stderr)
        print(f"FAILED: {sent.errors} errors, {len(problems)} mismatches, server exit code {code}; "
              f"server log and audit log kept in {home}", file=sys.stderr)
        sys.exit(1)
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
