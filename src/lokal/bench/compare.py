"""`lokal bench compare a.json b.json`: two earlier runs side by side, per system and concurrency."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from lokal.bench import SCHEMA_VERSION


def load(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"{path}: not a lokal bench result (schema {SCHEMA_VERSION!r})")
    return doc


def change(a: float | None, b: float | None) -> float | None:
    """Relative change from a to b (0.10 = +10 %); None when either is missing or a is 0."""
    if a is None or b is None or a == 0:
        return None
    return b / a - 1


def rows(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (system, concurrency) found in either run: the numbers of both and the change."""
    out = []
    names = list(dict.fromkeys([t["name"] for t in a["targets"]] + [t["name"] for t in b["targets"]]))
    by_a = {t["name"]: t for t in a["targets"]}
    by_b = {t["name"]: t for t in b["targets"]}
    for name in names:
        la = {lv["concurrency"]: lv for lv in (by_a.get(name) or {}).get("levels", [])}
        lb = {lv["concurrency"]: lv for lv in (by_b.get(name) or {}).get("levels", [])}
        for c in sorted(set(la) | set(lb)):
            va, vb = la.get(c), lb.get(c)
            row: dict[str, Any] = {"system": name, "concurrency": c}
            for key, get in (("tok_s", lambda lv: lv["tok_s"]),
                             ("ttft_p50_ms", lambda lv: lv["ttft_ms"]["p50"] if lv["ttft_ms"] else None),
                             ("errors", lambda lv: lv["errors"])):
                x = get(va) if va else None
                y = get(vb) if vb else None
                row[key] = (x, y, change(x, y) if key != "errors" else None)
            out.append(row)
    return out


def _pct(v: float | None, higher_is_better: bool) -> str:
    if v is None:
        return "—"
    good = v >= 0 if higher_is_better else v <= 0
    return f"[{'green' if good else 'red'}]{v * 100:+.1f}%[/]"


def _num(v: float | None, spec: str) -> str:
    return "—" if v is None else f"{v:{spec}}"


def compare_table(a: dict[str, Any], b: dict[str, Any], name_a: str = "A", name_b: str = "B") -> Table:
    t = Table(title=f"A = {escape(name_a)} ({escape(str(a['created']))})  ·  "
                    f"B = {escape(name_b)} ({escape(str(b['created']))})", title_justify="left")
    for col in ("system", "c", "tok/s A", "tok/s B", "Δ tok/s", "TTFT p50 A", "TTFT p50 B", "Δ TTFT",
                "errors A", "errors B"):
        t.add_column(col, justify="left" if col == "system" else "right")
    for r in rows(a, b):
        ta, tb, dt = r["tok_s"]
        fa, fb, df = r["ttft_p50_ms"]
        ea, eb, _ = r["errors"]
        t.add_row(escape(r["system"]), str(r["concurrency"]), _num(ta, ".1f"), _num(tb, ".1f"), _pct(dt, True),
                  _num(fa, ".0f"), _num(fb, ".0f"), _pct(df, False), _num(ea, "d"), _num(eb, "d"))
    return t
