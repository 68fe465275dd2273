"""The GPU run's results as the Markdown table docs/performance.md publishes:

    python benchmarks/gpu/table.py bench.json [summary.txt]

One row per system and concurrency level from `lokal bench run --json` (aggregate and per-stream
tok/s, TTFT and inter-token latency percentiles, errors, the ratio to the baseline system), then each
system's peak memory (RSS and GPU), and the GPU and driver line from run.sh's summary.txt when given.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any


def ms(dist: dict[str, float] | None, key: str) -> str:
    return f"{dist[key]:.0f}" if dist and dist.get(key) is not None else "–"


def markdown(doc: dict[str, Any]) -> str:
    """The table rows, level by level in the run's order of systems; ratios: aggregate tok/s over the baseline's."""
    targets = [t for t in doc["targets"] if t.get("levels")]
    base_name = doc.get("baseline") or (targets[0]["name"] if targets else None)
    base = next((t for t in targets if t["name"] == base_name), None)
    lines = ["| system | c | tok/s | req/s | stream tok/s | TTFT p50 / p95 ms | ITL p50 / p95 ms | errors | "
             f"vs {base_name} |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in doc["config"]["concurrency"]:
        base_level = next((lv for lv in base["levels"] if lv["concurrency"] == c), None) if base else None
        for t in targets:
            lv = next((lv for lv in t["levels"] if lv["concurrency"] == c), None)
            if lv is None:
                continue
            vs = f"{lv['tok_s'] / base_level['tok_s']:.2f} ×" if base_level and base_level["tok_s"] else "–"
            lines.append(
                f"| {t['name']} | {c} | {lv['tok_s']:.1f} | {lv['req_s']:.2f} | {lv['stream_tok_s']:.1f} | "
                f"{ms(lv['ttft_ms'], 'p50')} / {ms(lv['ttft_ms'], 'p95')} | "
                f"{ms(lv['itl_ms'], 'p50')} / {ms(lv['itl_ms'], 'p95')} | {lv['errors']} | {vs} |")
    for t in doc["targets"]:
        gpu = f", GPU {t['peak_gpu_mib']:.0f} MiB" if t.get("peak_gpu_mib") else ""
        rss = f"RSS {t['peak_rss_mib']:.0f} MiB" if t.get("peak_rss_mib") else "RSS –"
        status = "" if t["status"] == "ok" else f" ({t['status']}: {t.get('error')})"
        lines.append(f"\n{t['name']}: peak {rss}{gpu}{status}")
    return "\n".join(lines)


def gpu_line(summary: str) -> str | None:
    """`name, driver_version, memory.total, compute_cap` as nvidia-smi's CSV query printed it."""
    m = re.search(r"^\s*(NVIDIA[^,\n]*), ([\d.]+), (\d+ MiB), ([\d.]+)\s*$", summary, re.MULTILINE)
    return f"{m[1]}, driver {m[2]}, {m[3]}, compute capability {m[4]}" if m else None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    doc = json.loads(Path(args[0]).read_text())
    cfg = doc["config"]
    print(f"{cfg['model']}, `{cfg['scenario']}`, {cfg['max_tokens']} tokens per request, {cfg['slots']} slots of "
          f"{cfg['ctx']} tokens, {cfg['reps']} rep(s)")
    if len(args) > 1:
        print(gpu_line(Path(args[1]).read_text()) or "(no GPU line in the summary)")
    print()
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
