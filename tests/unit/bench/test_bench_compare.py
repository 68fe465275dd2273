"""`lokal bench compare`: rows, relative changes and the rendered table."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from lokal.bench import SCHEMA_VERSION
from lokal.bench.compare import change, compare_table, load, rows


def _doc(tok_s: dict[str, list[float]], created: str = "2026-01-01T00:00:00+00:00") -> dict[str, Any]:
    targets = []
    for name, rates in tok_s.items():
        levels = [{"concurrency": c, "tok_s": r, "errors": 0, "ttft_ms": {"p50": 100.0 * c}}
                  for c, r in zip((1, 10), rates, strict=False)]
        targets.append({"name": name, "levels": levels})
    return {"schema": SCHEMA_VERSION, "created": created, "targets": targets}


def test_change_is_relative_and_none_when_missing() -> None:
    assert change(100, 110) == pytest.approx(0.10)
    assert change(100, 50) == pytest.approx(-0.5)
    assert change(None, 1) is None and change(0, 1) is None


def test_rows_pair_systems_and_levels_of_both_runs() -> None:
    a = _doc({"lokal": [50, 200], "llama-server": [55, 180]})
    b = _doc({"lokal": [55, 300], "ollama": [40]})
    out = {(r["system"], r["concurrency"]): r for r in rows(a, b)}
    assert set(out) == {("lokal", 1), ("lokal", 10), ("llama-server", 1), ("llama-server", 10), ("ollama", 1)}
    assert out[("lokal", 10)]["tok_s"] == (200, 300, pytest.approx(0.5))
    assert out[("llama-server", 1)]["tok_s"] == (55, None, None)
    assert out[("ollama", 1)]["tok_s"] == (None, 40, None)
    assert out[("lokal", 1)]["ttft_p50_ms"][2] == pytest.approx(0.0)


def test_compare_table_shows_both_numbers_and_the_change() -> None:
    a = _doc({"lokal": [50, 200]})
    b = copy.deepcopy(a)
    b["targets"][0]["levels"][1]["tok_s"] = 220
    console = Console(width=200, record=True)
    console.print(compare_table(a, b, "a.json", "b.json"))
    text = console.export_text()
    line = next(ln for ln in text.splitlines() if "lokal" in ln and " 10 " in ln)
    assert "200.0" in line and "220.0" in line and "+10.0%" in line


def test_load_refuses_other_json(tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not a lokal bench result"):
        load(p)
