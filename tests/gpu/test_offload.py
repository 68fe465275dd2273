"""lokal's engine with every layer on the GPU: the weights go there, and greedy answers repeat exactly."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lokal.advise.memory import shape_from_file
from lokal.advise.offload import layer_bytes
from lokal.engine.engine import Engine
from lokal.engine.llama_model import ContextShape, LlamaModel, Offload
from lokal.engine.sampling import SamplingParams
from tests.gpu.conftest import ALL_LAYERS, Nvml

pytestmark = pytest.mark.gpu

THREADS = os.cpu_count() or 1
PROMPTS = ["Once upon a time", "The capital of France is", "def fibonacci(n):", "List three colours:"]


@pytest.fixture(scope="module")
def gpu_model(gpu_model_path: Path) -> Iterator[LlamaModel]:
    model = LlamaModel(gpu_model_path, ContextShape(slot_ctx=1024, n_slots=4, n_batch=256, n_threads=THREADS),
                       Offload(gpu_layers=ALL_LAYERS))
    yield model
    model.close()


def greedy(model: LlamaModel, prompts: list[str], n: int) -> list[list[int]]:
    for slot in range(model.shape.n_slots):
        model.forget(slot, 0)
    eng = Engine(model, prefix_cache=False)
    seqs = [eng.add(model.tokenize(p, add_special=True, parse_special=False),
                    SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)) for p in prompts]
    while eng.has_work():
        eng.step()
    return [s.tokens[len(s.prompt):] for s in seqs]


def test_every_layer_and_the_output_layer_go_to_the_gpu(gpu_model_path: Path, nvml: Nvml) -> None:
    placed = layer_bytes(shape_from_file(gpu_model_path, gpu_model_path.name))
    on_gpu = sum(placed.layers) + placed.output  # llama.cpp keeps only the token embeddings on the CPU
    before = nvml.device_used()
    model = LlamaModel(gpu_model_path, ContextShape(slot_ctx=256, n_slots=1, n_batch=64, n_threads=THREADS),
                       Offload(gpu_layers=ALL_LAYERS))
    try:
        grew = nvml.device_used() - before
        assert grew >= on_gpu, f"GPU memory grew by {grew / 2**20:.0f} MiB, the layers are {on_gpu / 2**20:.0f} MiB"
    finally:
        model.close()


def test_greedy_answers_on_the_gpu_repeat_exactly(gpu_model: LlamaModel) -> None:
    first = greedy(gpu_model, PROMPTS, 48)
    assert [len(t) for t in first] == [48] * len(PROMPTS)
    assert all(gpu_model.valid_token(t) for tokens in first for t in tokens)
    assert greedy(gpu_model, PROMPTS, 48) == first
