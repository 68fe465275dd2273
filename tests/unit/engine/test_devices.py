"""lokal.engine.devices reads the backend and devices from the llama.cpp that is loaded."""

from __future__ import annotations

import os
from pathlib import Path

import llama_cpp
import pytest

from lokal.engine.devices import Backend, Device, backend

GIB = 1024**3
H100 = Device("CUDA0", "NVIDIA H100 80GB HBM3", "gpu", 80 * GIB, 79 * GIB)
CPU = Device("CPU", "AMD EPYC", "cpu", 64 * GIB, 64 * GIB)


def loaded_ggml_copies() -> set[str]:
    return {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
            if Path(line.split()[-1]).name.startswith("libggml.so")}


@pytest.mark.skipif(llama_cpp.llama_supports_gpu_offload(), reason="a GPU build")
def test_a_cpu_build_reports_the_cpu_backend_and_its_one_device() -> None:
    found = backend()
    assert found.name == "cpu" and not found.gpu_offload
    assert [(d.name, d.kind) for d in found.devices] == [("CPU", "cpu")]
    cpu = found.devices[0]
    assert cpu.description  # the CPU's model name
    assert cpu.memory_total == os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert found.summary() == f"cpu (CPU: {cpu.description})"


def test_the_registry_read_is_the_one_llama_cpp_loaded() -> None:
    backend()
    assert len(loaded_ggml_copies()) == 1, loaded_ggml_copies()  # no second libggml with its own registry


def test_the_summary_names_the_devices_the_backend_computes_on() -> None:
    assert Backend("cuda", True, (H100, CPU)).summary() == "cuda (CUDA0: NVIDIA H100 80GB HBM3)"
    second = Device("CUDA1", "NVIDIA L4", "gpu", 24 * GIB, 23 * GIB)
    assert Backend("cuda", True, (H100, second, CPU)).summary() == (
        "cuda (CUDA0: NVIDIA H100 80GB HBM3, CUDA1: NVIDIA L4)")
    assert Backend("cpu", False, (CPU,)).summary() == "cpu (CPU: AMD EPYC)"
    assert Backend("cpu", False, ()).summary() == "cpu (no devices)"


def test_the_note_says_when_the_build_and_the_gpus_disagree() -> None:
    assert Backend("cuda", True, (H100, CPU)).note(("NVIDIA H100 80GB HBM3",)) == ""
    assert Backend("cpu", False, (CPU,)).note(()) == ""
    cpu_only = Backend("cpu", False, (CPU,)).note(("NVIDIA L4", "NVIDIA H100 80GB HBM3", "NVIDIA L4"))
    assert cpu_only == ("NVIDIA H100 80GB HBM3, NVIDIA L4 found, but this llama.cpp build is CPU-only: the GPUs "
                        "are not used; reinstall with LOKAL_GPU=cuda scripts/install.sh (docs/gpu.md)")
    # a CUDA build whose runtime finds no GPU (an older driver, CUDA_VISIBLE_DEVICES="") computes on the CPU
    assert Backend("cpu", True, (CPU,)).note(("NVIDIA H100 80GB HBM3",)).startswith(
        "this llama.cpp is built for GPUs but finds none")


def test_to_dict_is_what_health_shows() -> None:
    assert Backend("cuda", True, (H100, CPU)).to_dict() == {
        "backend": "cuda",
        "gpu_offload": True,
        "devices": [
            {"name": "CUDA0", "description": "NVIDIA H100 80GB HBM3", "kind": "gpu",
             "memory_total": 80 * GIB, "memory_free": 79 * GIB},
            {"name": "CPU", "description": "AMD EPYC", "kind": "cpu",
             "memory_total": 64 * GIB, "memory_free": 64 * GIB},
        ],
    }


@pytest.mark.gpu
@pytest.mark.skipif(not llama_cpp.llama_supports_gpu_offload(), reason="needs lokal's CUDA build")
def test_a_cuda_build_reports_each_gpu_as_nvml_sees_it() -> None:
    from lokal.advise.hardware import nvidia_gpus

    found = backend()
    assert found.name == "cuda" and found.gpu_offload
    gpus = [d for d in found.devices if d.kind == "gpu"]
    nvml = nvidia_gpus()
    assert len(gpus) == len(nvml) > 0  # without CUDA_VISIBLE_DEVICES
    assert sorted(d.description for d in gpus) == sorted(g.name for g in nvml)
    # CUDA's total leaves out what the driver reserves: within a few percent of NVML's
    totals = zip(sorted(d.memory_total for d in gpus), sorted(g.memory_total for g in nvml), strict=True)
    for cuda_total, nvml_total in totals:
        assert 0.95 * nvml_total <= cuda_total <= nvml_total
    assert all(0 < d.memory_free <= d.memory_total for d in gpus)
    assert found.summary().startswith("cuda (CUDA0: ")
