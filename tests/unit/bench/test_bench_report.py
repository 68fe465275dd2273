"""The terminal tables and the HTML report of a bench document, with a failed and a partial system."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from lokal.bench import SCHEMA_VERSION
from lokal.bench.loadgen import RequestRecord
from lokal.bench.metrics import merge_reps, summarize
from lokal.bench.report import render
from lokal.bench.run import _headline


def _level(c: int, tok_per_s: float, errors: int = 0) -> dict[str, Any]:
    recs = [RequestRecord(ttft=0.05 * c, latency=1.0, itl=[0.02] * 9, tokens=10, chunks=10) for _ in range(c)]
    recs += [RequestRecord(error="HTTP 503: busy") for _ in range(errors)]
    wall = 10 * c / tok_per_s
    return {"concurrency": c, **merge_reps([summarize(recs, wall)], recs)}


def _row(name: str, levels: list[dict[str, Any]], status: str = "ok", error: str | None = None) -> dict[str, Any]:
    row = {"name": name, "kind": "url", "api": "openai", "url": "http://x", "model": "m", "status": status,
           "error": error, "errors": sum(lv["errors"] for lv in levels) + (status == "failed"),
           "requests": sum(lv["requests"] for lv in levels), "levels": levels, "prefix": None,
           "memory": {"peak_rss_mib": 300.0}}
    _headline(row)
    return row


def doc() -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION, "created": "2026-11-24T18:00:00+00:00", "interrupted": False,
        "machine": {"cpus": 2, "ram_gib": 24, "platform": "Linux"},
        "config": {"scenario": "sweep", "concurrency": [1, 4], "rounds": 1, "max_tokens": 10, "reps": 1, "seed": 0,
                   "prompts": "builtin", "model": "m"},
        "baseline": "lokal",
        "targets": [_row("lokal", [_level(1, 50), _level(4, 200)]),
                    _row("peer", [_level(1, 100), _level(4, 100, errors=2)]),
                    _row("gone", [], status="failed", error="ConnectError")],
        "failures": ["gone: http://x: ConnectError", "peer: c=4: 2/6 requests failed, first: HTTP 503: busy"],
    }


def test_headline_numbers_and_status() -> None:
    d = doc()
    lokal, peer, gone = d["targets"]
    assert lokal["peak_tok_s"] == 200 and lokal["peak_tok_s_concurrency"] == 4 and lokal["status"] == "ok"
    assert peer["status"] == "partial" and peer["errors"] == 2
    assert gone["peak_tok_s"] is None and gone["single_stream_tok_s"] is None and gone["status"] == "failed"


def test_tables_show_ratios_errors_and_failures() -> None:
    console = Console(width=220, record=True)
    render(doc(), console)
    text = console.export_text()
    summary = text.split("throughput and latency")[0]
    peer = next(ln for ln in summary.splitlines() if "peer" in ln)
    assert "partial" in peer and "0.50×" in peer  # peak 100 vs lokal's 200
    assert "failed" in next(ln for ln in summary.splitlines() if "gone" in ln)
    c1_peer = next(ln for ln in text.split("throughput and latency")[1].splitlines() if "peer" in ln)
    assert "2.00×" in c1_peer  # at c=1 the peer is twice lokal
    assert "✗ gone: http://x: ConnectError" in text


def test_html_report_embeds_three_charts() -> None:
    from lokal.bench.html import render_html

    page = render_html(doc())
    assert page.count('src="data:image/png;base64,') == 3
    assert "<li>gone: http://x: ConnectError</li>" in page
