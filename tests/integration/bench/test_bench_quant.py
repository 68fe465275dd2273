"""`lokal bench quant` on the real smollm2:135m: the variants are built into the store, and each
row holds its size, bits per weight, memory, pp512/tg128 speeds and perplexity."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lokal.store.model_store import ModelStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def home(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("bench-quant")
    src = ModelStore(model_home).get("smollm2:135m")
    ModelStore(home).import_file(ModelStore(model_home).blob_path(src.digest), "smollm2:135m")
    return home


def _bench(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LOKAL_HOME": str(home), "LOKAL_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "lokal.cli.main", "bench", "quant", "smollm2:135m", *args],
                          env=env, capture_output=True, text=True, timeout=900)


def test_one_row_per_type_with_size_memory_speed_and_perplexity(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "quant.json"
    result = _bench(home, "--types", "Q8_0", "--allow-requantize", "--reps", "2", "--ctx", "128", "--chunks", "4",
                    "--json", str(out), "--markdown")
    assert result.returncode == 0, result.stderr
    assert "| type | bits/weight | size (MiB) | memory @ 4k ctx (MiB) | prompt processing t/s @ 512" in result.stdout
    assert "warning: smollm2:135m is Q4_1" in result.stderr
    doc = json.loads(out.read_text())
    assert doc["model"] == "smollm2:135m" and doc["tests"] == {"prompt": "pp512", "generation": "tg128"}
    rows = {r["type"]: r for r in doc["rows"]}
    assert list(rows) == ["Q8_0", "Q4_1"]  # widest first
    q8, q4 = rows["Q8_0"], rows["Q4_1"]
    assert q4["source"] and not q8["source"] and q8["model"] == "smollm2:135m-q8_0"
    assert 8.0 < q8["bits_per_weight"] < 9.0 and 5.0 < q4["bits_per_weight"] < 6.5
    store = ModelStore(home)
    assert q8["size_bytes"] == store.get("smollm2:135m-q8_0").size > q4["size_bytes"] == store.get("smollm2:135m").size
    for row in rows.values():
        assert row["memory_bytes"] > row["size_bytes"]  # weights plus KV cache, compute, overhead
        assert row["prompt"]["mean"] > 0 and row["generation"]["mean"] > 0
        assert math.isfinite(row["ppl"]) and 2 < row["ppl"] < 200 and row["ppl_stderr"] > 0
        assert row["extra"]["ppl_chunks"] == 4 and row["extra"]["ppl_ctx"] == 128
    assert abs(q8["ppl"] - q4["ppl"]) < 0.05 * q4["ppl"]  # Q8_0 of the Q4_1 weights: nearly the same model
    # the variant is kept: a second run builds nothing (no quantizing bar) and measures again
    again = _bench(home, "--types", "q8_0", "--allow-requantize", "--reps", "1", "--ctx", "128", "--chunks", "2")
    assert again.returncode == 0, again.stderr
    assert "quantizing" not in again.stderr


def test_an_unknown_type_builds_nothing(home: Path) -> None:
    before = sorted(p.name for p in (home / "blobs").iterdir())
    result = _bench(home, "--types", "Q8_0,Q9_X")
    assert result.returncode == 1
    assert 'unknown quantization type "Q9_X"' in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in (home / "blobs").iterdir()) == before
