"""The runtime's side of GPU offload without a GPU: the load fallback (fewer layers, then the CPU)
with an injected loader, the plan with simulated GPUs and a Modelfile's num_gpu, the shared KV
pool's shape, and the one log line of a CPU-only build on a machine with GPUs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from lokal.advise.hardware import Gpu
from lokal.advise.offload import OffloadPlan
from lokal.config import Settings
from lokal.engine.llama_model import ModelLoadError, Offload
from lokal.runtime.runtime import Runtime, load_with_fallback
from lokal.runtime.sizing import KV_SHARE_OF_FREE_RAM, auto_parallel, kv_bytes_per_token, model_memory_bytes

GIB = 1024**3
MODEL = "smollm2:135m"


def gpu_plan(layers: int, n: int = 32) -> OffloadPlan:
    verdict = "gpu" if layers > n else "partial" if layers else "cpu"
    return OffloadPlan(layers, n, (layers,), 1, (1.0,), 0, verdict, f"{layers} layers")


def fallback(fails_above: int, caplog: pytest.LogCaptureFixture) -> tuple[list[int], OffloadPlan]:
    tried: list[int] = []

    def load(offload: Offload) -> str:
        tried.append(offload.gpu_layers)
        if offload.gpu_layers > fails_above:
            raise ModelLoadError("cudaMalloc failed: out of memory")
        return "loaded"

    with caplog.at_level(logging.WARNING, logger="lokal.runtime.runtime"):
        result, plan = load_with_fallback("m", gpu_plan(33), load, gpu_plan)
    assert result == "loaded"
    return tried, plan


def test_a_load_that_fits_is_tried_once(caplog: pytest.LogCaptureFixture) -> None:
    tried, plan = fallback(99, caplog)
    assert tried == [33] and plan.gpu_layers == 33 and not caplog.records


def test_out_of_memory_retries_with_half_the_layers(caplog: pytest.LogCaptureFixture) -> None:
    tried, plan = fallback(20, caplog)
    assert tried == [33, 16] and plan.gpu_layers == 16
    assert [r.getMessage() for r in caplog.records] == [
        "loading m with 33 layers on the GPU failed (cudaMalloc failed: out of memory): trying 16 layers on the GPU"]


def test_then_the_cpu_with_one_line_each(caplog: pytest.LogCaptureFixture) -> None:
    tried, plan = fallback(0, caplog)
    assert tried == [33, 16, 0]
    assert (plan.verdict, plan.description) == ("cpu", "CPU only: loading on the GPU failed")
    assert len(caplog.records) == 2 and caplog.records[-1].getMessage().endswith("trying the CPU only")


def test_a_cpu_load_that_fails_is_not_retried() -> None:
    tried: list[int] = []

    def load(offload: Offload) -> str:
        tried.append(offload.gpu_layers)
        raise ModelLoadError("llama.cpp could not load it")

    with pytest.raises(ModelLoadError):
        load_with_fallback("m", gpu_plan(33), load, gpu_plan)
    assert tried == [33, 16, 0]
    with pytest.raises(ModelLoadError):
        load_with_fallback("m", gpu_plan(0), load, gpu_plan)
    assert tried == [33, 16, 0, 0]


def _runtime(home: Path, gpus: tuple[Gpu, ...] = (), **settings: object) -> Runtime:
    return Runtime(Settings(home=home, threads=2, **settings), devices=lambda: gpus)  # type: ignore[arg-type]


def test_the_plan_puts_a_small_model_on_a_simulated_gpu(model_home: Path) -> None:
    rt = _runtime(model_home, (Gpu("Simulated 24 GB", 24 * GIB, 20 * GIB),), parallel=1, ctx_size=512)
    manifest = rt.store.get(MODEL)
    shape = rt.load_shape(manifest)
    plan = rt.offload_plan(manifest, shape)
    assert (plan.verdict, plan.gpu_layers, plan.description) == ("gpu", 31, "fits on GPU")
    assert plan.offload().gpu_layers == 31
    no_gpu = _runtime(model_home, (), parallel=1, ctx_size=512).offload_plan(manifest, shape)
    assert no_gpu.description == "CPU only: no GPU"
    assert no_gpu.total_bytes == model_memory_bytes(manifest, shape, model_home)  # the CPU figure is unchanged


def test_gpu_layers_come_from_the_flag_then_the_modelfiles_num_gpu(model_home: Path) -> None:
    gpus = (Gpu("Simulated", 24 * GIB, 20 * GIB),)
    manifest = _runtime(model_home).store.get(MODEL)
    own = manifest.model_copy(update={"parameters": {**manifest.parameters, "num_gpu": 12}})
    assert _runtime(model_home, gpus).gpu_layers(own) == 12
    assert _runtime(model_home, gpus, gpu_layers="5").gpu_layers(own) == 5
    assert _runtime(model_home, gpus).gpu_layers(manifest) is None
    auto = manifest.model_copy(update={"parameters": {**manifest.parameters, "num_gpu": -1}})
    assert _runtime(model_home, gpus).gpu_layers(auto) is None
    rt = _runtime(model_home, gpus, parallel=1, ctx_size=512)
    plan = rt.offload_plan(own, rt.load_shape(own))
    assert plan.description == "partial: 12 of 30 layers on GPU"


def test_a_shared_pool_takes_its_sequences_and_cells_from_the_memory_it_lives_in(model_home: Path) -> None:
    rt = _runtime(model_home, kv_pool="shared", ctx_size=4096)
    facts = rt.store.get(MODEL).facts
    per_token = kv_bytes_per_token(facts)
    assert per_token
    cpu = rt.shape(facts, free_bytes=GIB)
    assert (cpu.kv_pool, cpu.n_slots, cpu.slot_ctx) == ("shared", 32, 4096)
    assert cpu.n_ctx == int(GIB * KV_SHARE_OF_FREE_RAM) // per_token == 23301  # of the 131k cells 32 slots would take
    gpu = rt.shape(facts, free_bytes=80 * GIB, on_gpu=True)
    assert gpu.n_slots == 128 and gpu.n_ctx == 128 * 4096  # capped at every sequence's whole context
    assert rt.shape(facts, free_bytes=1).n_ctx == 4096  # at least one sequence's
    fixed = _runtime(model_home, kv_pool="shared", ctx_size=4096, parallel=200, kv_cells=50_000)
    assert (fixed.shape(facts).n_slots, fixed.shape(facts).n_ctx) == (200, 50_000)


def test_the_shared_pools_memory_counts_its_cells_and_per_slot_stays_as_it_was(model_home: Path) -> None:
    manifest = _runtime(model_home).store.get(MODEL)
    shared = _runtime(model_home, kv_pool="shared", ctx_size=4096, kv_cells=20_000).shape(manifest.facts)
    per_slot = _runtime(model_home, ctx_size=4096, parallel=4).shape(manifest.facts)
    per_token = kv_bytes_per_token(manifest.facts)
    assert per_token
    assert (model_memory_bytes(manifest, shared, model_home) - model_memory_bytes(manifest, per_slot, model_home)
            == per_token * (20_000 - 4 * 4096))
    assert per_slot.n_slots == 4 and auto_parallel(manifest.facts, 4096, 1 << 40) == 8


def test_a_cpu_only_build_says_once_that_it_cannot_use_the_gpus(model_home: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("lokal.runtime.runtime.nvidia_gpus", lambda: (Gpu("Real but unused", 24 * GIB, 20 * GIB),))
    monkeypatch.setattr("lokal.runtime.runtime.gpu_offload_supported", lambda: False)
    rt = Runtime(Settings(home=model_home, parallel=1, ctx_size=512, threads=2))
    manifest = rt.store.get(MODEL)
    with caplog.at_level(logging.WARNING, logger="lokal.runtime.runtime"):
        plans = [rt.offload_plan(manifest, rt.load_shape(manifest)) for _ in range(2)]
    assert plans[0].description == "CPU only: this llama.cpp build cannot offload"
    assert [r.getMessage() for r in caplog.records] == [
        "Real but unused found, but this llama.cpp build is CPU-only: the GPUs are not used; reinstall with "
        "LOKAL_GPU=cuda scripts/install.sh (docs/gpu.md)"]


def test_the_gpu_and_pool_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings()
    assert (defaults.gpu_layer_count, defaults.tensor_shares, defaults.main_gpu) == (None, (), -1)
    assert (defaults.kv_pool, defaults.kv_cells) == ("per-slot", 0)
    for name, value in {"GPU_LAYERS": " 24 ", "TENSOR_SPLIT": "3,1", "MAIN_GPU": "1", "KV_POOL": "shared",
                        "KV_CELLS": "65536"}.items():
        monkeypatch.setenv(f"LOKAL_{name}", value)
    s = Settings()
    assert (s.gpu_layer_count, s.tensor_shares, s.main_gpu, s.kv_pool, s.kv_cells) == (24, (3.0, 1.0), 1, "shared",
                                                                                      65536)
    assert Settings(gpu_layers="AUTO").gpu_layer_count is None and Settings(gpu_layers=0).gpu_layer_count == 0


def test_a_draft_model_gets_its_room_on_the_gpu_before_its_target_is_placed(model_home: Path) -> None:
    rt = _runtime(model_home, (Gpu("Simulated", 24 * GIB, 20 * GIB),), parallel=1, ctx_size=512)
    manifest = rt.store.get(MODEL)
    shape = rt.load_shape(manifest)
    alone = rt.offload_plan(manifest, shape)
    draft = model_memory_bytes(manifest, shape, model_home)  # smollm2 drafting for itself
    both = rt.offload_plan(manifest, shape, draft=MODEL)  # plenty of room for both
    assert (both.verdict, both.gpu_layers, both.device_bytes) == (alone.verdict, alone.gpu_layers, alone.device_bytes)
    # a GPU with room for the target alone: with its draft the target no longer goes whole
    just = GIB + alone.vram_bytes + draft // 2
    tight = (Gpu("Simulated", just + GIB, just),)
    assert rt.offload_plan(manifest, shape, tight).verdict == "gpu"
    assert rt.offload_plan(manifest, shape, tight, draft=MODEL).verdict == "partial"
