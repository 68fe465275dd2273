"""The offload planner against simulated GPUs: everything fits, a partial fit to the exact layer,
several GPUs and their split, no GPU, a fixed layer count, and VRAM too small for one layer."""

from __future__ import annotations

from pathlib import Path

import pytest

from lokal.advise.hardware import Gpu
from lokal.advise.memory import estimate_memory, model_shape
from lokal.advise.offload import (
    VRAM_MARGIN_BYTES,
    LayerBytes,
    device_of,
    fallback_layers,
    layer_bytes,
    parse_gpu_layers,
    parse_tensor_split,
    plan_for,
    plan_offload,
    split_points,
)

MB = 1_000_000
GB = 1_000_000_000
# 32 layers of 100 MB with 10 MB of KV cache each, 500 MB embeddings in and out, 50 MB compute, 20 MB overhead
WEIGHTS = LayerBytes(layers=(100 * MB,) * 32, input=500 * MB, output=500 * MB, output_host=500 * MB)
KV, COMPUTE, OVERHEAD = 10 * MB, 50 * MB, 20 * MB
ALL_ON_GPU = 32 * 110 * MB + 500 * MB + COMPUTE  # 4.07 GB


def gpu(free: int, total: int = 80 * GB, name: str = "Simulated GPU") -> Gpu:
    return Gpu(name=name, memory_total=total, memory_free=free)


def plan(*gpus: Gpu, **kw: object):  # type: ignore[no-untyped-def]
    return plan_offload(WEIGHTS, KV, COMPUTE, OVERHEAD, gpus, **kw)  # type: ignore[arg-type]


def test_one_gpu_with_room_takes_every_layer_and_the_output() -> None:
    p = plan(gpu(24 * GB))
    assert (p.verdict, p.gpu_layers, p.n_layers, p.description) == ("gpu", 33, 32, "fits on GPU")
    assert p.device_bytes == (ALL_ON_GPU,)
    assert p.host_bytes == 500 * MB + OVERHEAD  # the input layer stays on the CPU, with llama.cpp's structures
    assert p.fits and p.offload().gpu_layers == 33


def test_the_whole_model_fits_exactly_at_the_margin() -> None:
    assert plan(gpu(ALL_ON_GPU + VRAM_MARGIN_BYTES)).verdict == "gpu"
    assert plan(gpu(ALL_ON_GPU + VRAM_MARGIN_BYTES - 1)).verdict == "partial"


def test_partial_offload_takes_as_many_layers_as_fit() -> None:
    # 20 layers (and their KV cache) and one compute buffer: 2.25 GB; a 21st would need 110 MB more
    free = VRAM_MARGIN_BYTES + 20 * 110 * MB + COMPUTE + 100 * MB
    p = plan(gpu(free))
    assert (p.verdict, p.gpu_layers, p.description) == ("partial", 20, "partial: 20 of 32 layers on GPU")
    assert p.device_bytes == (20 * 110 * MB + COMPUTE,)
    # the other 12 layers, the output layer and a compute buffer stay in RAM
    assert p.host_bytes == 500 * MB + OVERHEAD + 12 * 110 * MB + 500 * MB + COMPUTE
    assert p.fits


def test_vram_too_small_for_one_layer_runs_on_the_cpu() -> None:
    p = plan(gpu(VRAM_MARGIN_BYTES + 100 * MB))  # one layer and its compute buffer: 160 MB
    assert (p.verdict, p.gpu_layers, p.description) == ("cpu", 0, "CPU only: not one layer fits in free GPU memory")
    assert p.device_bytes == (0,) and p.offload().gpu_layers == 0


def test_no_gpu_and_a_cpu_only_build_plan_the_cpu() -> None:
    none = plan()
    assert (none.verdict, none.description, none.device_bytes) == ("cpu", "CPU only: no GPU", ())
    assert none.host_bytes == 1000 * MB + 32 * 110 * MB + COMPUTE + OVERHEAD  # everything
    build = plan(gpu(24 * GB), can_offload=False)
    assert (build.verdict, build.description) == ("cpu", "CPU only: this llama.cpp build cannot offload")
    assert plan(gpu(24 * GB), gpu_layers=0).description == "CPU only: --gpu-layers 0"


def test_a_fixed_layer_count_is_taken_whether_or_not_it_fits() -> None:
    p = plan(gpu(24 * GB), gpu_layers=10)
    assert (p.verdict, p.gpu_layers, p.description) == ("partial", 10, "partial: 10 of 32 layers on GPU")
    assert p.device_bytes == (10 * 110 * MB + COMPUTE,)
    over = plan(gpu(2 * GB), gpu_layers=999)
    assert over.gpu_layers == 33 and over.verdict == "gpu" and not over.fits
    assert over.description == "fits on GPU (more than the free GPU memory)"
    no_output = plan(gpu(24 * GB), gpu_layers=32)
    assert no_output.description == "partial: 32 of 32 layers on GPU (the output layer on the CPU)"


def test_two_gpus_split_the_layers_by_free_memory() -> None:
    p = plan(gpu(30 * GB), gpu(10 * GB))
    assert p.verdict == "gpu" and p.description == "fits on 2 GPUs"
    assert p.tensor_split == (30 * GB, 10 * GB)
    # llama.cpp: layer il goes to the first GPU whose cumulative share exceeds il / 33: 0..24 and 25..32
    assert [device_of(il, 0, 33, split_points(p.tensor_split)) for il in (0, 24, 25, 32)] == [0, 0, 1, 1]
    assert p.device_bytes == (25 * 110 * MB + COMPUTE, 7 * 110 * MB + 500 * MB + COMPUTE)
    assert p.offload().tensor_split == p.tensor_split


def test_the_users_tensor_split_and_main_gpu_decide_the_devices() -> None:
    even = plan(gpu(30 * GB), gpu(30 * GB), tensor_split=(1, 1))
    # 33 layers at 0.5: 0..16 (17 layers) on GPU 0, 17..31 and the output on GPU 1
    assert even.device_bytes == (17 * 110 * MB + COMPUTE, 15 * 110 * MB + 500 * MB + COMPUTE)
    only_second = plan(gpu(30 * GB), gpu(30 * GB), main_gpu=1)
    assert only_second.device_bytes == (0, ALL_ON_GPU) and only_second.description == "fits on GPU"
    assert only_second.offload().main_gpu == 1
    with pytest.raises(ValueError, match="main_gpu 2"):
        plan(gpu(30 * GB), gpu(30 * GB), main_gpu=2)


def test_several_gpus_fit_what_one_cannot() -> None:
    one = plan(gpu(VRAM_MARGIN_BYTES + 5 * GB // 2))
    two = plan(gpu(VRAM_MARGIN_BYTES + 5 * GB // 2), gpu(VRAM_MARGIN_BYTES + 5 * GB // 2))
    assert one.verdict == "partial" and two.verdict == "gpu"


def test_the_plan_of_a_real_model_accounts_for_every_byte_of_the_estimate(model_home: Path) -> None:
    shape = model_shape("smollm2:135m", model_home)
    estimate = estimate_memory(shape, 4096, 2)
    weights = layer_bytes(shape)
    assert len(weights.layers) == 30 and len(set(weights.layers)) == 1  # its header's blk.N tensors
    assert weights.input + sum(weights.layers) + weights.output_host == shape.weights_bytes
    assert weights.output > weights.output_host  # tied embeddings: the output layer copies them to a GPU
    cpu = plan_for(shape, estimate, ())
    assert cpu.total_bytes == estimate.total
    on_gpu = plan_for(shape, estimate, (gpu(8 * GB),))
    assert on_gpu.verdict == "gpu" and on_gpu.total_bytes == estimate.total + weights.output - weights.output_host


def test_a_model_without_tensors_is_split_evenly() -> None:
    shape = model_shape("7b")
    weights = layer_bytes(shape)
    assert len(weights.layers) == 28
    assert weights.input + sum(weights.layers) + weights.output_host == shape.weights_bytes
    assert weights.output == weights.output_host > 0


def test_gpu_layers_and_tensor_split_parse() -> None:
    assert parse_gpu_layers("auto") is None and parse_gpu_layers(" AUTO ") is None
    assert parse_gpu_layers("20") == 20 and parse_gpu_layers(0) == 0
    for bad in ("-1", "many", True):
        with pytest.raises(ValueError):
            parse_gpu_layers(bad)
    assert parse_tensor_split("") == () and parse_tensor_split("3,1") == (3.0, 1.0)
    for bad in ("3,x", "0,0", "-1,2"):
        with pytest.raises(ValueError):
            parse_tensor_split(bad)


def test_a_failed_load_retries_with_half_the_layers_then_none() -> None:
    assert fallback_layers(33) == [16, 0]
    assert fallback_layers(1) == [0]
