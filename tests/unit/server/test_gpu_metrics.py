"""GPUs in /metrics, the monitor and `lokal ps` with simulated devices, and the serve flags'
refusals: per-device gauges, Ollama's processor column, one error line for a bad flag."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from lokal.advise.hardware import Gpu
from lokal.cli.main import app, processor_text
from lokal.config import Settings
from lokal.runtime.runtime import Runtime
from lokal.server.metrics import Metrics
from lokal.ui.monitor import gpus

GIB = 1024**3
SIMULATED = (
    Gpu("Sim A", 24 * GIB, 20 * GIB, index=0, memory_used=4 * GIB, utilization=0.37),
    Gpu("Sim B", 16 * GIB, 16 * GIB, index=1, memory_used=0, utilization=None),
)


def samples(text: str) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels.get("device", "")): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_have_each_gpus_memory_and_utilisation(tmp_path: Path) -> None:
    text = Metrics(Runtime(Settings(home=tmp_path)), read_gpus=lambda: SIMULATED).exposition().decode()
    found = samples(text)
    assert found[("lokal_gpu_memory_used_bytes", "0")] == 4 * GIB
    assert found[("lokal_gpu_memory_total_bytes", "1")] == 16 * GIB
    assert found[("lokal_gpu_utilization_ratio", "0")] == 0.37
    assert ("lokal_gpu_utilization_ratio", "1") not in found  # NVML gave none: no made-up zero
    assert 'lokal_gpu_memory_used_bytes{device="0",name="Sim A"}' in text
    for family in ("lokal_model_vram_bytes gauge", "lokal_kv_pool gauge", "lokal_preemptions_total counter"):
        assert f"# TYPE {family}" in text


def test_no_gpu_means_no_gpu_series(tmp_path: Path) -> None:
    text = Metrics(Runtime(Settings(home=tmp_path)), read_gpus=lambda: ()).exposition().decode()
    assert "lokal_gpu_memory_used_bytes{" not in text


def test_the_monitor_shows_each_gpu() -> None:
    assert gpus(lambda: SIMULATED) == [
        {"index": 0, "name": "Sim A", "util_percent": 37, "memory_total": 24 * GIB, "memory_used": 4 * GIB},
        {"index": 1, "name": "Sim B", "util_percent": None, "memory_total": 16 * GIB, "memory_used": 0},
    ]
    assert gpus(lambda: ()) == []


def test_ps_says_where_a_model_runs_as_ollama_does() -> None:
    assert processor_text(1000, 0) == "100% CPU"
    assert processor_text(1000, 1000) == "100% GPU"
    assert processor_text(1000, 520) == "48%/52% CPU/GPU"
    assert processor_text(1000, 515) == "49%/51% CPU/GPU"  # 48.5 rounds away from zero, as Go's math.Round
    assert processor_text(1000, 2000) == "Unknown"


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--gpu-layers", "many", "gpu_layers must be auto or a number of layers"),
    ("--tensor-split", "0,0", "tensor_split needs shares of at least 0 and one above 0"),
    ("--kv-pool", "paged", "kv_pool"),
    ("--kv-cells", "-5", "kv_cells"),
])
def test_a_bad_serve_flag_is_one_error_line(flag: str, value: str, message: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOKAL_HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["serve", "--no-preload", flag, value])
    assert result.exit_code == 1, result.output
    assert "error:" in result.output and message in result.output and "Traceback" not in result.output
