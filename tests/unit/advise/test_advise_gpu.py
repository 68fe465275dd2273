"""`lokal advise` in VRAM terms on simulated GPUs: fits on GPU, partial (N of M layers), CPU only,
the RAM verdict of what stays in RAM, serve advice, and the CLI's table and JSON."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from typer.testing import CliRunner

from lokal.advise import json_schema
from lokal.advise.advise import fit_table, gpu_note, serve_advice
from lokal.advise.hardware import Gpu, Hardware
from lokal.advise.memory import estimate_memory, model_shape
from lokal.advise.offload import VRAM_MARGIN_BYTES, layer_bytes
from tests.unit.advise.conftest import GIB, machine


def with_gpus(ram_gib: float, *free_gib: float) -> Hardware:
    return replace(machine(ram_gib), gpus=tuple(Gpu(f"Simulated {i}", int(f * GIB) + GIB, int(f * GIB), index=i)
                                                for i, f in enumerate(free_gib)))


def test_a_24_gib_gpu_takes_a_7b_whole_and_part_of_a_70b() -> None:
    shapes = [model_shape("7b"), model_shape("70b:q8_0")]
    seven, seventy = fit_table(shapes, with_gpus(64, 24), 4096, 1)
    assert seven.offload is not None and seven.offload.description == "fits on GPU"
    assert seven.fit == "fits" and seven.offload.host_bytes < seven.estimate.total / 10  # RAM holds the embeddings
    assert seventy.offload is not None and seventy.offload.verdict == "partial"
    # each of its 80 layers holds 1/80 of the non-embedding weights and of the KV cache
    weights = layer_bytes(shapes[1])
    per_layer = weights.layers[0] + seventy.estimate.kv_cache // 80
    on_gpu = (24 * GIB - VRAM_MARGIN_BYTES - seventy.estimate.compute) // per_layer
    assert seventy.offload.description == f"partial: {on_gpu} of 80 layers on GPU"
    assert seventy.fit == "tight"  # judged on what stays in RAM; on the CPU alone it would not fit
    (cpu_only,) = fit_table(shapes[1:], machine(64), 4096, 1)
    assert cpu_only.fit == "wont_fit" and cpu_only.offload is None


def test_a_model_all_on_the_gpu_keeps_its_limits_there() -> None:
    (row,) = fit_table([model_shape("7b")], with_gpus(64, 8), 4096, 1)
    assert row.offload is not None and row.offload.verdict == "gpu"
    # the slots counted are those that keep every layer on the 8 GiB GPU, not those 64 GiB of RAM would hold
    on_gpu = estimate_memory(model_shape("7b"), 4096, row.max_parallel)
    assert 1 <= row.max_parallel < 64 and on_gpu.total < 8 * GIB
    (ram_only,) = fit_table([model_shape("7b")], machine(64), 4096, 1)
    assert ram_only.max_parallel > row.max_parallel


def test_a_cpu_only_build_says_so_and_plans_the_cpu() -> None:
    hw = with_gpus(64, 24)
    (row,) = fit_table([model_shape("7b")], hw, 4096, 1, can_offload=False)
    assert row.offload is not None and row.offload.description == "CPU only: this llama.cpp build cannot offload"
    assert "reinstall with LOKAL_GPU=cuda scripts/install.sh" in gpu_note(hw, can_offload=False)
    assert gpu_note(machine(64), True) == "no NVIDIA GPU found (NVML): models run on the CPU"


def test_serve_advice_says_where_the_layers_go() -> None:
    advice = serve_advice(model_shape("7b"), with_gpus(64, 24), 4096)
    (gpu_line,) = [r for r in advice.reasons if r.startswith("GPU:")]
    assert gpu_line.startswith("GPU: fits on GPU: ") and "slots counted to keep every layer" in gpu_line


@pytest.fixture
def lokal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    import lokal.advise.hardware
    import lokal.advise.offload
    from lokal.cli.main import app

    monkeypatch.setenv("LOKAL_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(lokal.advise.offload, "gpu_offload_supported", lambda: True)

    def run(args: list[str], hw: Hardware) -> Any:
        monkeypatch.setattr(lokal.advise.hardware, "detect_hardware", lambda home=None: hw)
        return CliRunner().invoke(app, args)

    return run


def test_advise_answers_in_vram_terms(lokal: Any) -> None:
    result = lokal(["advise", "-m", "7b", "-m", "70b:q8_0"], with_gpus(64, 24))
    assert result.exit_code == 0, result.output
    assert "GPU" in result.stdout and "fits on GPU" in result.stdout and "partial: " in result.stdout
    assert "listed, not used" not in result.stdout
    doc = json.loads(lokal(["advise", "--json", "-m", "7b", "-m", "70b:q8_0"], with_gpus(64, 24)).stdout)
    jsonschema.Draft202012Validator(json_schema("advise")).validate(doc)
    assert [m["offload"]["verdict"] for m in doc["models"]] == ["gpu", "partial"]
    plain = json.loads(lokal(["advise", "--json", "-m", "7b"], machine(64)).stdout)
    assert plain["models"][0]["offload"] is None and "no NVIDIA GPU" in plain["notes"][-1]


def test_pull_warns_in_vram_terms_a_model_on_the_gpu_needs_little_ram() -> None:
    from lokal.advise.advise import pull_warnings

    # qwen2.5-coder:0.5b does not fit in 0.5 GiB of RAM on the CPU, but on a 4 GiB GPU only the
    # embeddings stay in RAM
    assert pull_warnings("qwen2.5-coder:0.5b", 4096, 1, machine(0.5))
    assert pull_warnings("qwen2.5-coder:0.5b", 4096, 1, with_gpus(0.5, 4)) == []
    # a CPU-only llama.cpp build cannot use the GPU: judged on RAM as before
    assert pull_warnings("qwen2.5-coder:0.5b", 4096, 1, with_gpus(0.5, 4), can_offload=False)


def test_pull_warning_on_a_partial_offload_names_the_part_on_the_gpu() -> None:
    from lokal.advise.advise import pull_warnings

    (warning,) = pull_warnings("70b:q8_0", 4096, 1, with_gpus(8, 24))
    assert "will not fit" in warning and "on the GPU (partial:" in warning


def test_recommend_counts_the_gpu_a_model_that_only_fits_with_it() -> None:
    from lokal.advise.recommend import Needs, recommend

    needs = Needs(model="qwen2.5-coder:0.5b")
    assert recommend(needs, machine(0.5)).model is None  # RAM alone: nothing fits
    rec = recommend(needs, with_gpus(0.5, 4))
    assert rec.model == "qwen2.5-coder:0.5b"
    assert any("on the GPU (fits on GPU)" in r for r in rec.reasons)
    assert recommend(needs, with_gpus(0.5, 4), can_offload=False).model is None
