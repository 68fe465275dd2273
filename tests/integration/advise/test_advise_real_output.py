"""`lokal advise | cost | recommend --json` as a user runs them, on this machine and its store,
validated against the documented schemas; the cost inputs are a real `lokal bench run --json`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from lokal.advise import json_schema

# `lokal bench run -t lokal:smollm2:135m --scenario single --concurrency 1,4 --rounds 3 --max-tokens 64
#  --slots 4 --ctx 1024 --json ...` on lokal's 2-core development machine
BENCH = Path(__file__).parent / "data" / "bench-smollm2-single.json"


def lokal(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LOKAL_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "lokal.cli.main", *args], capture_output=True, text=True, env=env,
                          timeout=120, stdin=subprocess.DEVNULL)


def valid(kind: str, out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert out.returncode == 0, out.stderr
    doc: dict[str, Any] = json.loads(out.stdout)
    jsonschema.Draft202012Validator(json_schema(kind)).validate(doc)
    return doc


def test_advise_json_on_this_machine_validates(bundled_home: Path) -> None:
    doc = valid("advise", lokal(bundled_home, "advise", "--json", "--target", "7B at 8k, 4 users"))
    rows = {m["model"]: m for m in doc["models"]}
    assert rows["smollm2:135m"]["source"] == "store" and rows["gemma3:270m"]["source"] == "store"
    assert doc["hardware"]["cores"] >= 1 and doc["target"]["users"] == 4
    stored = [m for m in doc["models"] if m["source"] == "store" and m["fit"] != "wont_fit"]
    largest = max(stored, key=lambda m: m["estimate"]["weights"])
    assert doc["serve"]["model"] == largest["model"]  # the largest stored model that fits


def test_cost_json_from_a_real_bench_validates(bundled_home: Path) -> None:
    doc = valid("cost", lokal(bundled_home, "cost", "--bench", str(BENCH), "--watts", "35", "--json"))
    bench = json.loads(BENCH.read_text())
    best = max(bench["targets"][0]["levels"], key=lambda level: level["tok_s"])
    assert doc["throughput"]["tok_s"] == best["tok_s"] and doc["throughput"]["concurrency"] == best["concurrency"]
    assert doc["throughput"]["model"] == "smollm2:135m"
    assert doc["result"]["tokens_per_month"] == pytest.approx(best["tok_s"] * 0.25 * 2_629_800)


def test_cost_measures_or_states_its_power(bundled_home: Path) -> None:
    doc = valid("cost", lokal(bundled_home, "cost", "--tok-s", "100", "--json"))
    assert doc["power"]["method"] in ("assumed", "rapl", "nvml", "rapl+nvml")
    if doc["power"]["method"] == "assumed":
        assert "assumed" in doc["power"]["detail"]


def test_recommend_json_with_a_real_bench_validates(bundled_home: Path) -> None:
    doc = valid("recommend", lokal(bundled_home, "recommend", "--use-case", "batch", "--users", "4", "--api", "both",
                                   "--lan", "--cloud-ok", "--bench", str(BENCH), "--json"))
    rec = doc["recommendation"]
    assert rec["model"] == "smollm2:135m" and rec["settings"]["host"] == "0.0.0.0"
    assert rec["measured"]["model"] == "smollm2:135m" and rec["measured"]["concurrency"] == 4
    assert any(f"{rec['measured']['tok_s']:.1f} tok/s at 4 request(s)" in r for r in rec["reasons"])


def test_bad_input_exits_non_zero_with_one_line(bundled_home: Path, tmp_path: Path) -> None:
    garbled = tmp_path / "bench.json"
    garbled.write_text('{"targets": [')
    for args in (("cost", "--bench", str(garbled)), ("cost", "--tok-s", "5", "--kwh-price", "-1"),
                 ("advise", "-m", "no-such:model"), ("recommend", "-m", "no-such:model")):
        out = lokal(bundled_home, *args)
        assert out.returncode == 1, args
        assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
