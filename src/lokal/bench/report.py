"""Rich tables in the layout of a classic comparison: rows are systems, ratios against a baseline."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lokal.bench.metrics import paired_tok_s_ratio


def fmt(value: float | None, spec: str = ".1f", unit: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{unit}"


def ratio(value: float | None, base: float | None, lower_is_better: bool = False) -> str:
    if value is None or not base:
        return "—"
    r = value / base
    good = r <= 1 if lower_is_better else r >= 1
    return f"[{'green' if good else 'red'}]{r:.2f}×[/]"


def _paired(level: dict[str, Any], base: dict[str, Any] | None) -> str:
    r = paired_tok_s_ratio(level, base) if base else None
    return "—" if r is None else f"[{'green' if r >= 1 else 'red'}]{r:.2f}×[/]"


def _level(row: dict[str, Any], c: int) -> dict[str, Any] | None:
    return next((lv for lv in row["levels"] if lv["concurrency"] == c), None)


def _p(dist: dict[str, float] | None, key: str) -> float | None:
    return dist[key] if dist else None


def baseline_row(doc: dict[str, Any]) -> dict[str, Any] | None:
    return next((t for t in doc["targets"] if t["name"] == doc.get("baseline")), None)


def _ps(dist: dict[str, float] | None, keys: tuple[str, ...], spec: str) -> str:
    return "—" if dist is None else "/".join(f"{dist[k]:{spec}}" for k in keys)


def summary_table(doc: dict[str, Any]) -> Table:
    """One row per system: first-token latency, decode speed, best throughput, memory, errors."""
    base = baseline_row(doc) or {}
    cfg = doc["config"]
    t = Table(title=f"lokal bench · {escape(cfg['scenario'])} · {escape(cfg.get('model') or '')} · "
                    f"max_tokens={cfg['max_tokens']} · "
                    f"{doc['machine']['cpus']} CPUs", title_justify="left")
    for col in ("system", "TTFT p50 ms", "decode tok/s", "prompt tok/s", "peak tok/s", "at c", "peak RSS MiB",
                "errors", f"vs {escape(str(doc.get('baseline')))}"):
        t.add_column(col, justify="left" if col == "system" else "right")
    for row in doc["targets"]:
        first = min(row["levels"], key=lambda lv: lv["concurrency"]) if row["levels"] else None
        name = escape(row["name"]) + ("" if row["status"] == "ok" else f" [red]({row['status']})[/]")
        rss = fmt(row.get("peak_rss_mib"), ".0f")
        if row.get("peak_gpu_mib"):
            rss += f" + GPU {row['peak_gpu_mib']:.0f}"
        t.add_row(
            name, fmt(row.get("ttft_p50_ms"), ".0f"), fmt(row.get("single_stream_tok_s")),
            fmt(first.get("prompt_tok_s") if first else None, ".0f"), fmt(row.get("peak_tok_s")),
            fmt(row.get("peak_tok_s_concurrency"), "d"), rss,
            f"[red]{row['errors']}[/]" if row["errors"] else "0",
            ratio(row.get("peak_tok_s"), base.get("peak_tok_s")),
        )
    return t


def concurrency_table(doc: dict[str, Any]) -> Table:
    """Throughput and latency under load: one row per system and concurrency level."""
    base = baseline_row(doc)
    t = Table(title="throughput and latency under concurrency (percentiles p50/p95/p99)", title_justify="left")
    for col in ("system", "c", "req/s", "tok/s", "vs base", "TTFT ms", "latency s", "ITL ms p50/p95",
                "stream tok/s", "errors"):
        t.add_column(col, justify="left" if col == "system" else "right")
    levels = sorted({lv["concurrency"] for row in doc["targets"] for lv in row["levels"]})
    for c in levels:
        blv = _level(base, c) if base else None
        for row in doc["targets"]:
            lv = _level(row, c)
            if lv is None:
                continue
            t.add_row(
                escape(row["name"]), str(c), fmt(lv["req_s"], ".2f"), fmt(lv["tok_s"]),
                _paired(lv, blv),
                _ps(lv["ttft_ms"], ("p50", "p95", "p99"), ".0f"), _ps(lv["latency_s"], ("p50", "p95", "p99"), ".2f"),
                _ps(lv["itl_ms"], ("p50", "p95"), ".1f"), fmt(lv.get("stream_tok_s")),
                f"[red]{lv['errors']}[/]" if lv["errors"] else "0",
            )
        if c != levels[-1]:
            t.add_section()
    return t


def prefix_table(doc: dict[str, Any]) -> Table | None:
    rows = [r for r in doc["targets"] if r.get("prefix")]
    if not rows:
        return None
    title = "shared system prompt: TTFT of the first request (cold) and of the next (warm)"
    t = Table(title=title, title_justify="left")
    for col in ("system", "cold TTFT", "warm TTFT", "warm/cold"):
        t.add_column(col, justify="left" if col == "system" else "right")
    for r in rows:
        p = r["prefix"]
        t.add_row(escape(r["name"]), fmt(p["cold_ms"], ".0f", " ms"), fmt(p["warm_ms"], ".0f", " ms"),
                  fmt(p["ratio"], ".2f"))
    return t


def workload_table(doc: dict[str, Any]) -> Table | None:
    """A workload scenario (code-edit, summarize, chat): what one user waits for, per system."""
    workload = doc["config"].get("workload")
    if not workload:
        return None
    base = baseline_row(doc) or {}
    t = Table(title=f"{escape(workload)}: one user, median of {doc['config']['reps']} rep(s) "
                    "(end-to-end ratio: baseline seconds / these seconds, > 1 is faster)", title_justify="left")
    for col in ("system", "TTFT p50 ms", "decode tok/s", "end-to-end s p50", "tokens/req", "spec. acceptance",
                f"e2e vs {escape(str(doc.get('baseline')))}"):
        t.add_column(col, justify="left" if col == "system" else "right")
    for row in doc["targets"]:
        first = min(row["levels"], key=lambda lv: lv["concurrency"]) if row["levels"] else None
        spec = (first or {}).get("speculative")
        acc = "—" if not spec else (f"{spec['accepted']}/{spec['drafted']}" +
                                    (f" ({spec['acceptance']:.0%})" if spec["acceptance"] is not None else ""))
        e2e, base_e2e = row.get("e2e_p50_s"), base.get("e2e_p50_s")
        t.add_row(escape(row["name"]), fmt(row.get("ttft_p50_ms"), ".0f"), fmt(row.get("single_stream_tok_s")),
                  fmt(e2e, ".2f"), fmt(first["tokens_per_req"] if first else None, ".0f"), acc,
                  ratio(base_e2e, e2e) if e2e else "—")
    return t


def render(doc: dict[str, Any], console: Console) -> None:
    """Print every table of a bench document, then its failures."""
    console.print(summary_table(doc))
    wt = workload_table(doc)
    if wt is not None:
        console.print(wt)
    if any(row["levels"] for row in doc["targets"]):
        console.print(concurrency_table(doc))
    pt = prefix_table(doc)
    if pt is not None:
        console.print(pt)
    for line in doc.get("failures", []):
        console.print(f"[red]✗[/] {escape(line)}", highlight=False, soft_wrap=True)
    if doc.get("interrupted"):
        console.print("[yellow]interrupted: the tables show what finished[/]")
