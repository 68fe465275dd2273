"""A self-contained HTML report: the tables plus matplotlib charts embedded as base64 PNGs (needs `lokal[bench]`)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("--html needs matplotlib: pip install 'lokal[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _matplotlib().close(fig)
    return buf.getvalue()


def charts(doc: dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes by chart name: throughput vs concurrency, TTFT distribution, tok/s per system."""
    plt = _matplotlib()
    rows = [t for t in doc["targets"] if t["levels"]]
    out: dict[str, bytes] = {}

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for row in rows:
        lv = sorted(row["levels"], key=lambda x: x["concurrency"])
        ax.plot([x["concurrency"] for x in lv], [x["tok_s"] for x in lv], marker="o", label=row["name"])
    if any(len(r["levels"]) > 2 for r in rows) and max((x["concurrency"] for r in rows for x in r["levels"]),
                                                       default=1) >= 20:
        ax.set_xscale("log")
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("aggregate completion tok/s")
    ax.set_title("Throughput vs concurrency")
    ax.grid(alpha=0.3)
    ax.legend()
    out["throughput"] = _png(fig)

    from matplotlib.ticker import ScalarFormatter

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    data, labels, colors = [], [], []
    for i, row in enumerate(rows):
        for lv in sorted(row["levels"], key=lambda x: x["concurrency"]):
            if lv.get("ttft_samples_ms"):
                data.append(lv["ttft_samples_ms"])
                labels.append(f"{row['name']}\nc={lv['concurrency']}")
                colors.append(f"C{i}")
    if data:
        boxes = ax.boxplot(data, tick_labels=labels, showfliers=True, patch_artist=True)
        for patch, color in zip(boxes["boxes"], colors, strict=True):
            patch.set_facecolor(color)
            patch.set_alpha(0.5)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.set_ylabel("time to first token (ms)")
    ax.set_title("TTFT distribution")
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(alpha=0.3, axis="y")
    out["ttft"] = _png(fig)

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    names = [r["name"] for r in rows]
    single = [r.get("single_stream_tok_s") or 0 for r in rows]
    peak = [r.get("peak_tok_s") or 0 for r in rows]
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], single, width=0.4, label="one stream (decode)")
    ax.bar([x + 0.2 for x in xs], peak, width=0.4, label="best aggregate")
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("tok/s")
    ax.set_title("Tokens per second per system")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    out["tok_s"] = _png(fig)
    return out


def _table(headers: list[str], body: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _f(v: float | None, spec: str = ".1f") -> str:
    return "—" if v is None else f"{v:{spec}}"


def render_html(doc: dict[str, Any]) -> str:
    pngs = charts(doc)
    cfg, mach = doc["config"], doc["machine"]
    summary = _table(
        ["system", "status", "TTFT p50 ms", "decode tok/s", "peak tok/s", "at c", "peak RSS MiB", "errors"],
        [[r["name"], r["status"], _f(r.get("ttft_p50_ms"), ".0f"), _f(r.get("single_stream_tok_s")),
          _f(r.get("peak_tok_s")), _f(r.get("peak_tok_s_concurrency"), "d"), _f(r.get("peak_rss_mib"), ".0f"),
          str(r["errors"])] for r in doc["targets"]])
    levels = _table(
        ["system", "c", "req/s", "tok/s", "TTFT p50", "TTFT p95", "TTFT p99", "latency p50 s", "latency p95 s",
         "ITL p50 ms", "errors"],
        [[r["name"], str(lv["concurrency"]), _f(lv["req_s"], ".2f"), _f(lv["tok_s"]),
          *(_f(lv["ttft_ms"][k], ".0f") if lv["ttft_ms"] else "—" for k in ("p50", "p95", "p99")),
          *(_f(lv["latency_s"][k], ".2f") if lv["latency_s"] else "—" for k in ("p50", "p95")),
          _f(lv["itl_ms"]["p50"]) if lv["itl_ms"] else "—", str(lv["errors"])]
         for r in doc["targets"] for lv in r["levels"]])
    with_prefix = [r for r in doc["targets"] if r.get("prefix")]
    prefix = ("<h2>Shared system prompt (cold vs warm TTFT)</h2>" + _table(
        ["system", "cold TTFT ms", "warm TTFT ms", "warm/cold"],
        [[r["name"], _f(r["prefix"]["cold_ms"], ".0f"), _f(r["prefix"]["warm_ms"], ".0f"),
          _f(r["prefix"]["ratio"], ".2f")] for r in with_prefix])) if with_prefix else ""
    imgs = "".join(f'<figure><img alt="{name}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
                   f"</figure>" for name, png in pngs.items())
    failures = "".join(f"<li>{html.escape(line)}</li>" for line in doc.get("failures", []))
    title = f"lokal bench — {cfg['scenario']} — {doc['created']}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:72rem}}
table{{border-collapse:collapse;margin:1rem 0}}
td,th{{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}}td:first-child,th:first-child{{text-align:left}}
figure{{display:inline-block;margin:.5rem}}img{{max-width:100%}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>{html.escape(f"model {cfg.get('model')} · max_tokens {cfg['max_tokens']} · concurrency {cfg['concurrency']} · "
                  f"reps {cfg['reps']} · seed {cfg['seed']} · {mach['cpus']} CPUs, {mach['ram_gib']} GiB · "
                  f"{mach['platform']}")}</p>
<h2>Systems</h2>{summary}<h2>Under concurrency</h2>{levels}{prefix}<h2>Charts</h2>{imgs}
{f"<h2>Failures</h2><ul>{failures}</ul>" if failures else ""}
</body></html>
"""


def write_html(doc: dict[str, Any], path: Path) -> None:
    path.write_text(render_html(doc))


def write_pngs(doc: dict[str, Any], folder: Path, prefix: str = "bench-") -> list[Path]:
    """The charts as PNG files (`bench-throughput.png`, `bench-ttft.png`, `bench-tok_s.png`), e.g. for a README."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, png in charts(doc).items():
        path = folder / f"{prefix}{name}.png"
        path.write_bytes(png)
        paths.append(path)
    return paths
