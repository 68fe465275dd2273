"""Loading with GPU layers on this CPU machine, with the real model: a simulated GPU whose loads
fail (out of memory) falls back to the CPU and serves; a load that fails even on the CPU is the
API's error and the runtime goes on; GPU layers that llama.cpp's CPU build ignores still serve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lokal.advise.hardware import Gpu
from lokal.config import Settings
from lokal.engine.llama_model import ModelLoadError
from lokal.runtime.errors import ModelLoadFailed
from lokal.runtime.events import Finished
from lokal.runtime.loaded_model import LoadedModel
from lokal.runtime.request import GenerateRequest
from lokal.runtime.runtime import Runtime

pytestmark = pytest.mark.slow
MODEL = "smollm2:135m"
GIB = 1024**3
GPUS = (Gpu("Simulated 24 GB", 24 * GIB, 20 * GIB),)


def gpu_out_of_memory(tried: list[int], cpu_fails: bool = False) -> Any:
    """LoadedModel.load as it goes on a GPU without room: any GPU layer fails like a cudaMalloc."""

    def load(*args: Any, offload: Any = None, **kw: Any) -> LoadedModel:
        tried.append(offload.gpu_layers)
        if offload.gpu_layers or cpu_fails:
            raise ModelLoadError("llama.cpp could not load the model: out of memory")
        return LoadedModel.load(*args, offload=offload, **kw)

    return load


async def answer(rt: Runtime) -> str:
    stream = await rt.generate(GenerateRequest(model=MODEL, prompt="The sea is",
                                               options={"temperature": 0, "max_tokens": 5}))
    events = [e async for e in stream]
    done = events[-1]
    assert isinstance(done, Finished)
    return done.text


async def test_a_gpu_that_runs_out_of_memory_falls_back_to_the_cpu_and_serves(model_home: Path) -> None:
    tried: list[int] = []
    settings = Settings(home=model_home, parallel=1, ctx_size=512, threads=2, keep_alive="-1")
    rt = Runtime(settings, load_model=gpu_out_of_memory(tried), devices=lambda: GPUS)
    cpu = Runtime(settings)
    try:
        text = await answer(rt)
        assert tried == [31, 15, 0]
        (status,) = rt.status()
        assert status.offload is not None and status.offload.description == "CPU only: loading on the GPU failed"
        assert status.vram_bytes == 0 and status.memory_bytes == cpu.planned_memory_bytes(status.manifest)
        assert text == await answer(cpu)
    finally:
        await rt.close()
        await cpu.close()


async def test_a_load_that_fails_even_on_the_cpu_is_the_apis_error(model_home: Path) -> None:
    tried: list[int] = []
    rt = Runtime(Settings(home=model_home, parallel=1, ctx_size=512, threads=2),
                 load_model=gpu_out_of_memory(tried, cpu_fails=True), devices=lambda: GPUS)
    try:
        with pytest.raises(ModelLoadFailed, match="out of memory"):
            await answer(rt)
        assert tried == [31, 15, 0] and rt.status() == []
    finally:
        await rt.close()


async def test_gpu_layers_on_a_cpu_build_still_serve(model_home: Path) -> None:
    rt = Runtime(Settings(home=model_home, parallel=1, ctx_size=512, threads=2, keep_alive="-1"),
                 devices=lambda: GPUS)
    try:
        assert await answer(rt)
        (status,) = rt.status()
        loaded = rt.loaded()[0]
        assert loaded.model.offload.gpu_layers == 31  # passed to llama.cpp, which has no GPU backend here
        assert status.offload is not None and status.offload.verdict == "gpu"
        assert 0 < status.vram_bytes < status.memory_bytes
    finally:
        await rt.close()
