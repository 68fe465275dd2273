"""One bench run: start the local targets, check each answers, then measure them in turn and build the document.

All targets are up at once and idle between turns; each measurement goes round the targets, `reps` times, so
drift on a shared machine hits every target alike. A target that fails to start or to answer is reported in one
line and left out; the rest of the run goes on. Ctrl-C stops the run and keeps what finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from lokal.bench import SCHEMA_VERSION, speculative
from lokal.bench.loadgen import RequestOptions, RequestRecord, run_closed_loop, stream_request
from lokal.bench.memory import MemorySampler, pid_for_url
from lokal.bench.metrics import merge_reps, summarize
from lokal.bench.scenarios import Prompt, Scenario, builtin_prompts, cycle, system_prompt, workload_prompts
from lokal.bench.targets import Target


@dataclass
class RunConfig:
    scenario: Scenario
    max_tokens: int = 64
    reps: int = 1
    seed: int = 0
    user_prompts: list[Prompt] | None = None
    prompts_source: str = "builtin"
    prefix_trials: int = 3
    prefix_tokens: int = 1500
    warmup: bool = True
    baseline: str | None = None
    logs: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # model, threads, slots, ctx: recorded as given


class BenchEvents:
    """What a run tells its display. The default prints nothing; the CLI draws a Rich progress bar."""

    def failure(self, line: str) -> None: ...
    def note(self, line: str) -> None: ...
    def measuring(self, target: str, concurrency: int, rep: int, requests: int) -> None: ...
    def record(self, rec: RequestRecord) -> None: ...
    def measured(self, target: str, concurrency: int, summary: dict[str, Any]) -> None: ...


class PrintEvents(BenchEvents):
    """Plain lines on stdout, for scripts (benchmarks/*.py): failures, notes, each measurement's tok/s."""

    def failure(self, line: str) -> None:
        print(f"  FAILED {line}", flush=True)

    def note(self, line: str) -> None:
        print(line, flush=True)

    def measured(self, target: str, concurrency: int, summary: dict[str, Any]) -> None:
        print(f"  {target} c={concurrency}: {summary['tok_s']:.1f} tok/s", flush=True)


def level_prompts(cfg: RunConfig, concurrency: int, salt: int, rep: int = 0) -> list[Prompt]:
    """The prompts of one measurement: the same for every target; each rep gets its own (the next ones of a
    user's set, or built-in ones worded apart), so a repeat is not served from a cache of the earlier rep."""
    n = concurrency * cfg.scenario.rounds_at(concurrency)
    if cfg.user_prompts:
        return cycle(cfg.user_prompts, n, offset=cfg.seed + rep * n)
    if cfg.scenario.workload:
        return workload_prompts(cfg.scenario.workload, n, cfg.seed, round_no=rep)
    system = system_prompt(cfg.scenario.shared_prefix_tokens, salt) if cfg.scenario.shared_prefix_tokens else None
    return builtin_prompts(n, cfg.seed + concurrency, cfg.scenario.prompt_tokens, system, round_no=rep)


async def _preflight(target: Target, opts: RequestOptions) -> str | None:
    """One tiny request; None if it streamed, else why not. Drops `ignore_eos` for servers that refuse it."""
    import httpx

    prompt = Prompt([{"role": "user", "content": "Say hello."}])
    tiny = RequestOptions(max_tokens=4, seed=opts.seed, ignore_eos=opts.ignore_eos)
    async with httpx.AsyncClient(timeout=httpx.Timeout(120, connect=5)) as client:
        rec = await stream_request(client, target, prompt, tiny)
        if rec.error and rec.error.startswith(("HTTP 400", "HTTP 422")) and target.api == "openai":
            tiny.ignore_eos = False
            retry = await stream_request(client, target, prompt, tiny)
            if retry.ok:
                opts.ignore_eos = False
                return None
        return rec.error


async def prefix_check(target: Target, opts: RequestOptions, trials: int, prefix_tokens: int) -> dict[str, float]:
    """TTFT of a request whose long system prompt an earlier request already read (warm) against the first (cold)."""
    import httpx

    short = RequestOptions(max_tokens=8, seed=opts.seed, ignore_eos=opts.ignore_eos)
    cold, warm = [], []
    async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=5)) as client:
        for t in range(trials):
            system = {"role": "system", "content": system_prompt(prefix_tokens, int(time.time() * 1000) + t)}
            a = await stream_request(client, target, Prompt([system, {"role": "user", "content": "Name a colour."}]),
                                     short)
            b = await stream_request(client, target, Prompt([system, {"role": "user", "content": "Name a fruit."}]),
                                     short)
            if a.error or b.error or a.ttft is None or b.ttft is None:
                raise RuntimeError(a.error or b.error or "no content")
            cold.append(a.ttft)
            warm.append(b.ttft)
    return {"cold_ms": 1000 * statistics.median(cold), "warm_ms": 1000 * statistics.median(warm),
            "ratio": statistics.median(w / c for w, c in zip(warm, cold, strict=True))}


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(), "processor": platform.machine(), "python": platform.python_version()}


def run_bench(targets: list[Target], cfg: RunConfig, events: BenchEvents | None = None) -> dict[str, Any]:
    """Measure every target under cfg's scenario; returns the bench document (see schema.json)."""
    ev = events or BenchEvents()
    sc = cfg.scenario
    rows: dict[str, dict[str, Any]] = {
        t.name: {"name": t.name, "kind": t.kind, "api": t.api, "url": t.url, "model": t.model, "status": "ok",
                 "error": None, "errors": 0, "requests": 0, "levels": [], "prefix": None}
        for t in targets}
    failures: list[str] = []

    def fail(name: str, message: str, *, fatal: bool) -> None:
        line = f"{name}: {message}"
        failures.append(line)
        ev.failure(line)
        if fatal:
            rows[name]["status"] = "failed"
            rows[name]["error"] = message

    doc: dict[str, Any] = {
        "schema": SCHEMA_VERSION, "created": datetime.now(UTC).isoformat(timespec="seconds"), "interrupted": False,
        "machine": machine(),
        "config": {"scenario": sc.name, "workload": sc.workload or None, "ignore_eos": sc.ignore_eos,
                   "concurrency": sc.concurrency, "rounds": sc.rounds,
                   "max_tokens": cfg.max_tokens, "reps": cfg.reps, "seed": cfg.seed, "prompts": cfg.prompts_source,
                   "prompt_tokens": sc.prompt_tokens, "shared_prefix_tokens": sc.shared_prefix_tokens, **cfg.meta},
        "baseline": cfg.baseline or (targets[0].name if targets else None),
        "targets": list(rows.values()), "failures": failures,
    }
    opts = {t.name: RequestOptions(max_tokens=cfg.max_tokens, seed=cfg.seed, ignore_eos=sc.ignore_eos)
            for t in targets}
    live: list[Target] = []
    with contextlib.ExitStack() as stack:
        try:
            for t in targets:
                if t.server is not None:
                    if cfg.logs:
                        t.server.log = cfg.logs / f"bench-{t.name}.log"
                    ev.note(f"starting {t.name} …")
                    try:
                        stack.enter_context(t.server)
                    except (RuntimeError, TimeoutError, OSError) as exc:
                        fail(t.name, f"did not start: {exc}", fatal=True)
                        rows[t.name]["errors"] += 1
                        continue
                    ev.note(f"started {t.name} on {t.url}" + (f" (log: {t.server.log})" if t.server.log else ""))
                error = asyncio.run(_preflight(t, opts[t.name]))
                if error:
                    fail(t.name, f"{t.url} ({t.api}, model {t.model!r}): {error}", fatal=True)
                    rows[t.name]["errors"] += 1
                    rows[t.name]["requests"] += 1
                    continue
                live.append(t)
            pids = {t.name: pid for t in live if (pid := t.pid or pid_for_url(t.url))}
            sampler = stack.enter_context(MemorySampler(pids))
            _measure(live, cfg, opts, rows, ev, fail)
        except KeyboardInterrupt:
            doc["interrupted"] = True
            ev.note("interrupted: stopping; keeping what finished")
        finally:
            with contextlib.suppress(NameError):
                for t in live:
                    rows[t.name]["memory"] = sampler.result(t.name)
    for row in rows.values():
        _headline(row)
    return doc


def _measure(live: list[Target], cfg: RunConfig, opts: dict[str, RequestOptions], rows: dict[str, dict[str, Any]],
             ev: BenchEvents, fail: Any) -> None:
    sc = cfg.scenario
    if cfg.warmup:
        for t in live:  # page in weights, first allocations
            asyncio.run(run_closed_loop(t, level_prompts(cfg, 1, 0, rep=-1)[:1], 1, RequestOptions(8, cfg.seed,
                                                                                         opts[t.name].ignore_eos)))
    salt = int(time.time())
    for c in sc.concurrency:
        reps: dict[str, list[dict[str, Any]]] = {t.name: [] for t in live}
        records: dict[str, list[RequestRecord]] = {t.name: [] for t in live}
        spec: dict[str, list[dict[str, Any] | None]] = {t.name: [] for t in live}
        for rep in range(cfg.reps):
            prompts = level_prompts(cfg, c, salt + c, rep)
            for t in live:
                ev.measuring(t.name, c, rep, len(prompts))
                before = speculative.scrape(t.url) if t.api == "openai" else None
                recs, wall = asyncio.run(run_closed_loop(t, prompts, c, opts[t.name], ev.record))
                after = speculative.scrape(t.url) if before is not None else None
                spec[t.name].append(speculative.summary(before, after, recs))
                errors = [r.error for r in recs if r.error]
                if errors:
                    fail(t.name, f"c={c}: {len(errors)}/{len(recs)} requests failed, first: {errors[0]}", fatal=False)
                reps[t.name].append(summarize(recs, wall))
                records[t.name].extend(recs)
        for t in live:
            level = {"concurrency": c, **merge_reps(reps[t.name], records[t.name]),
                     "speculative": speculative.merge(spec[t.name])}
            rows[t.name]["levels"].append(level)
            rows[t.name]["errors"] += level["errors"]
            rows[t.name]["requests"] += level["requests"]
            ev.measured(t.name, c, level)
    if sc.prefix_check:
        for t in live:
            ev.measuring(t.name, 0, 0, 2 * cfg.prefix_trials)
            try:
                rows[t.name]["prefix"] = asyncio.run(prefix_check(t, opts[t.name], cfg.prefix_trials,
                                                                  cfg.prefix_tokens))
            except RuntimeError as exc:
                fail(t.name, f"prefix check: {exc}", fatal=False)


def _headline(row: dict[str, Any]) -> None:
    """The top-level per-target numbers other tools read (`lokal cost`): see schema.json."""
    levels = [lv for lv in row["levels"] if lv["requests"] > lv["errors"]]
    first = min(levels, key=lambda lv: lv["concurrency"]) if levels else None
    best = max(levels, key=lambda lv: lv["tok_s"]) if levels else None
    mem = row.get("memory") or {}
    row["single_stream_tok_s"] = first["stream_tok_s"] if first else None
    row["ttft_p50_ms"] = first["ttft_ms"]["p50"] if first and first["ttft_ms"] else None
    row["e2e_p50_s"] = first["latency_s"]["p50"] if first and first["latency_s"] else None
    spec = first.get("speculative") if first else None
    row["speculative_acceptance"] = spec["acceptance"] if spec else None
    row["peak_tok_s"] = best["tok_s"] if best else None
    row["peak_tok_s_concurrency"] = best["concurrency"] if best else None
    row["peak_req_s"] = max((lv["req_s"] for lv in levels), default=None)
    row["peak_rss_mib"] = mem.get("peak_rss_mib")
    row["peak_gpu_mib"] = mem.get("peak_gpu_mib")
    if row["status"] == "ok" and row["errors"]:
        row["status"] = "partial"
    if row["status"] == "ok" and not levels and row["levels"]:
        row["status"] = "failed"
