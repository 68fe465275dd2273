"""GPU tests (``-m gpu``): they run where llama_cpp can offload (lokal's CUDA build) and NVML sees an
NVIDIA GPU, and skip with the reason everywhere else (CI, CPU builds).

Their model is ``$LOKAL_GPU_MODEL``, a GGUF path: benchmarks/gpu/run.sh sets it to the kit's random
Llama 3.1 8B at Q4_K_M, and ``$LOKAL_GPU_MODEL_NAME`` to its name in ``$LOKAL_HOME``'s store."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lokal.advise.hardware import nvidia_gpus
from lokal.advise.offload import gpu_offload_supported

ALL_LAYERS = 999  # llama.cpp clamps n_gpu_layers to the model's layers + 1 (the output layer)


def why_no_gpu() -> str | None:
    if not gpu_offload_supported():
        return "llama_cpp cannot offload to a GPU (a CPU build; benchmarks/gpu/run.sh builds the CUDA one)"
    if not nvidia_gpus():
        return "no NVIDIA GPU (NVML sees none)"
    return None


@pytest.fixture(scope="session", autouse=True)
def _needs_a_gpu() -> None:
    reason = why_no_gpu()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def gpu_model_path() -> Path:
    value = os.environ.get("LOKAL_GPU_MODEL")
    if not value or not Path(value).is_file():
        pytest.skip("set LOKAL_GPU_MODEL to a GGUF file (benchmarks/gpu/run.sh makes one)")
    return Path(value)


class Nvml:
    """GPU 0's memory as NVML reports it."""

    def __enter__(self) -> Nvml:
        import pynvml

        pynvml.nvmlInit()
        self.nvml = pynvml
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        return self

    def __exit__(self, *exc: object) -> None:
        self.nvml.nvmlShutdown()

    def device_used(self) -> int:
        return int(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used)

    def process_used(self, pid: int) -> int | None:
        """What NVML books to ``pid``; None where it cannot tell (a PID namespace hides it)."""
        try:
            procs = self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle)
        except self.nvml.NVMLError:
            return None
        used = [p.usedGpuMemory for p in procs if p.pid == pid and p.usedGpuMemory]
        return int(sum(used)) if used else None


@pytest.fixture
def nvml() -> Iterator[Nvml]:
    with Nvml() as n:
        yield n
