"""Hardware detection: this machine's facts, and GPUs absent, failing or present (a fake NVML)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from lokal.advise.hardware import SIMD_FLAGS, Gpu, detect_hardware, disk_free, nvidia_gpus

GIB = 1024**3


def test_this_machine_has_cores_ram_and_disk(tmp_path: Path) -> None:
    hw = detect_hardware(tmp_path / "not" / "made" / "yet")
    assert hw.cores >= 1 and hw.ram_total > 0 and 0 < hw.ram_available <= hw.ram_total
    assert hw.disk_free is not None and hw.disk_free > 0  # of the nearest existing parent
    assert hw.cpu_model and set(hw.simd) <= set(SIMD_FLAGS)
    doc = hw.to_dict()
    assert isinstance(doc["simd"], list) and isinstance(doc["gpus"], list)


def test_disk_free_of_a_path_that_does_not_exist_yet(tmp_path: Path) -> None:
    assert disk_free(tmp_path / "a" / "b") == disk_free(tmp_path)


def test_no_nvidia_library_means_no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    assert nvidia_gpus() == ()


def _fake_nvml(init_error: bool = False) -> types.ModuleType:
    nvml = types.ModuleType("pynvml")

    def init() -> None:
        if init_error:
            raise RuntimeError("NVML Shared Library Not Found")

    nvml.nvmlInit = init  # type: ignore[attr-defined]
    nvml.nvmlShutdown = lambda: None  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetCount = lambda: 1  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetName = lambda h: b"NVIDIA Fake 24GB"  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=24 * 1024**3, free=20 * 1024**3)  # type: ignore[attr-defined]
    return nvml


def test_a_driver_that_does_not_load_means_no_gpus_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(init_error=True))
    assert nvidia_gpus() == ()


def test_nvidia_gpus_with_their_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml())
    assert nvidia_gpus() == (Gpu(name="NVIDIA Fake 24GB", memory_total=24 * 1024**3, memory_free=20 * 1024**3,
                                 memory_used=4 * 1024**3),)  # this fake NVML has no utilisation: None


def test_nvidia_gpus_with_their_utilisation(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = _fake_nvml()
    nvml.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=37, memory=5)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    (gpu,) = nvidia_gpus()
    assert gpu.utilization == 0.37 and gpu.index == 0


def test_cuda_visible_devices_picks_and_orders_the_gpus_llama_cpp_sees() -> None:
    from lokal.advise.hardware import cuda_visible

    gpus = tuple(Gpu(f"GPU {i}", GIB, GIB, index=i) for i in range(3))
    assert cuda_visible(gpus, "2,0") == (gpus[2], gpus[0])
    assert cuda_visible(gpus, "1,7,0") == (gpus[1],)  # CUDA stops at the first index that is not there
    assert cuda_visible(gpus, "") == ()
    assert cuda_visible(gpus, "GPU-8a1b") == gpus  # UUIDs are not matched: all of them
