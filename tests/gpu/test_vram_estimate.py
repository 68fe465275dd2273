"""lokal's VRAM figure (the offload plan advise and the runtime use) against NVML's reading of a
process that loads the model with every layer on the GPU: within ±10 % (issue 17's target).

The figure is what the model takes (weights, KV cache, compute buffers), so the reading starts once
the CUDA context exists (its few hundred MiB are what the planner's 1 GiB margin leaves room for);
the process's whole use is printed beside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lokal.advise.hardware import nvidia_gpus
from lokal.advise.memory import estimate_memory, shape_from_file
from lokal.advise.offload import plan_for

pytestmark = pytest.mark.gpu

SLOT_CTX, SLOTS, BATCH = 4096, 4, 512
# A fresh process: NVML's device reading once llama.cpp's CUDA backend has made its context (a memory
# query makes it), then after the load and one decode (which allocates what the first graph needs),
# and what NVML books to the process itself.
MEASURE = """
import json, os, sys
from pathlib import Path
import pynvml
pynvml.nvmlInit()
gpu = pynvml.nvmlDeviceGetHandleByIndex(0)
from lokal.engine.devices import backend
backend()
before = pynvml.nvmlDeviceGetMemoryInfo(gpu).used
from lokal.engine.llama_model import ContextShape, LlamaModel, Offload
path, layers, ctx, slots, batch = Path(sys.argv[1]), *map(int, sys.argv[2:])
model = LlamaModel(path, ContextShape(slot_ctx=ctx, n_slots=slots, n_batch=batch, n_threads=os.cpu_count() or 1),
                   Offload(gpu_layers=layers))
model.decode([(1, i, 0, i == batch - 1) for i in range(batch)], prompt=True)
after = pynvml.nvmlDeviceGetMemoryInfo(gpu).used
try:  # a PID namespace can hide the process from NVML
    mine = [p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses(gpu)
            if p.pid == os.getpid() and p.usedGpuMemory]
except pynvml.NVMLError:
    mine = []
print(json.dumps({"device_delta": after - before, "process": sum(mine) if mine else None}))
"""


def test_the_vram_estimate_is_within_ten_percent_of_nvml(gpu_model_path: Path) -> None:
    shape = shape_from_file(gpu_model_path, gpu_model_path.name)
    estimate = estimate_memory(shape, SLOT_CTX, SLOTS, batch=BATCH)
    plan = plan_for(shape, estimate, nvidia_gpus(), gpu_layers=(shape.facts.block_count or 0) + 1)
    assert plan.verdict == "gpu", plan.description
    run = subprocess.run(
        [sys.executable, "-c", MEASURE, str(gpu_model_path), str(plan.gpu_layers), str(SLOT_CTX), str(SLOTS),
         str(BATCH)], capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    measured = seen["device_delta"]
    report = (f"estimate {plan.vram_bytes / 2**20:.0f} MiB (weights {estimate.weights / 2**20:.0f}, KV "
              f"{estimate.kv_cache / 2**20:.0f}, compute {estimate.compute / 2**20:.0f}), NVML: process "
              f"{(seen['process'] or 0) / 2**20:.0f} MiB, device grew {seen['device_delta'] / 2**20:.0f} MiB")
    print(report)
    assert abs(plan.vram_bytes - measured) <= 0.10 * measured, report
