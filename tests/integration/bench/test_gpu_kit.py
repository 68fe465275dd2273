"""The GPU kit (benchmarks/gpu/) on the CPU: make_model.py's random Llama loads in llama.cpp (tiny dims
here, Llama 3.1 8B's on the GPU machine), its synthetic BPE vocabulary tokenizes and detokenizes text,
lokal's engine decodes from it, llama.cpp's quantizer turns it into Q4_K_M; like_model.py rebuilds a
catalog model's file from its header with random weights; table.py turns a bench run's JSON into the
table docs/performance.md publishes."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from gguf import GGUFReader, LlamaFileType

from lokal.engine.engine import Engine
from lokal.engine.llama_model import ContextShape, LlamaModel
from lokal.engine.sampling import SamplingParams
from lokal.store.model_store import ModelStore
from tests.conftest import REPO_ROOT


def load_kit(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"gpu_kit_{name}", REPO_ROOT / "benchmarks" / "gpu" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


kit = load_kit("make_model")
like = load_kit("like_model")
table = load_kit("table")
SHAPE = ContextShape(slot_ctx=256, n_slots=2, n_batch=64, n_threads=2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaModel]:
    path = tmp_path_factory.mktemp("kit") / "tiny.gguf"
    kit.main([str(path), "--dims", "tiny"])
    model = LlamaModel(path, SHAPE)
    yield model
    model.close()


def greedy(model: LlamaModel, prompt: str, n: int) -> list[int]:
    for slot in range(model.shape.n_slots):
        model.forget(slot, 0)
    eng = Engine(model, prefix_cache=False)
    seq = eng.add(model.tokenize(prompt, add_special=True, parse_special=True),
                  SamplingParams(temperature=0, max_tokens=n, ignore_eos=True))
    while eng.has_work():
        eng.step()
    return seq.tokens[len(seq.prompt):]


def test_the_8b_vocabulary_has_llama3s_size_and_special_token_ids() -> None:
    tokens, merges, types, first_special = kit.bpe_vocab(128256)
    assert len(tokens) == len(set(tokens)) == len(types) == 128256
    assert first_special == 128000
    assert tokens[128000] == "<|begin_of_text|>" and tokens[128009] == "<|eot_id|>"
    assert all(m.replace(" ", "") in tokens[:first_special] for m in merges)


def test_llama_cpp_loads_the_random_llama_with_its_shape_and_vocabulary(tiny: LlamaModel) -> None:
    dims = kit.DIMS["tiny"]
    assert (tiny.architecture, tiny.n_layer, tiny.n_vocab) == ("llama", dims.n_layer, dims.n_vocab)
    text = "the quick brown fox jumps over the lazy dog, 42 times!"
    ids = tiny.tokenize(text, add_special=False, parse_special=False)
    assert len(ids) < len(text) / 1.5  # the merges join letters
    assert b"".join(tiny.piece(t) for t in ids).decode() == text
    bos, eot = dims.n_vocab - 16 + kit.BOS, dims.n_vocab - 16 + kit.EOT
    assert tiny.tokenize("<|eot_id|>", add_special=True, parse_special=True) == [bos, eot]
    assert tiny.is_eog(eot) and tiny.bos_text == "<|begin_of_text|>"


def test_lokal_decodes_greedily_from_the_random_llama_the_same_way_twice(tiny: LlamaModel) -> None:
    first = greedy(tiny, "Once upon a time", 12)
    assert len(first) == 12 and all(tiny.valid_token(t) for t in first)
    assert greedy(tiny, "Once upon a time", 12) == first


def test_quantize_writes_a_smaller_q4_k_m_file_that_loads(tmp_path: Path) -> None:
    f16 = tmp_path / "f16.gguf"
    kit.main([str(f16), "--dims", "tiny"])
    q = tmp_path / "q4.gguf"
    kit.main([str(q), "--dims", "tiny", "--quantize", "Q4_K_M", "--threads", "2"])
    assert not (tmp_path / "q4.f16.gguf").exists()
    file_type = GGUFReader(q).fields["general.file_type"]
    assert int(file_type.parts[file_type.data[0]][0]) == int(LlamaFileType.MOSTLY_Q4_K_M)
    assert q.stat().st_size < 0.6 * f16.stat().st_size
    model = LlamaModel(q, SHAPE)
    try:
        assert len(greedy(model, "Hello", 4)) == 4
    finally:
        model.close()


def test_the_table_has_a_row_per_system_and_level_with_ratios_to_the_baseline() -> None:
    def level(c: int, tok_s: float) -> dict[str, object]:
        dist = {"p50": 10.0 * c, "p95": 20.0 * c}
        return {"concurrency": c, "tok_s": tok_s, "req_s": tok_s / 64, "stream_tok_s": tok_s / c,
                "ttft_ms": dist, "itl_ms": dist, "errors": 0}

    doc = {"baseline": "llama-server", "config": {"concurrency": [1, 16]}, "targets": [
        {"name": "lokal", "status": "ok", "peak_rss_mib": 900.0, "peak_gpu_mib": 6000.0,
         "levels": [level(1, 150.0), level(16, 1800.0)]},
        {"name": "llama-server", "status": "ok", "peak_rss_mib": 700.0, "peak_gpu_mib": 5800.0,
         "levels": [level(1, 160.0), level(16, 1500.0)]},
    ]}
    rows = [line for line in table.markdown(doc).splitlines() if line.startswith("| lokal")]
    assert rows == ["| lokal | 1 | 150.0 | 2.34 | 150.0 | 10 / 20 | 10 / 20 | 0 | 0.94 × |",
                    "| lokal | 16 | 1800.0 | 28.12 | 112.5 | 160 / 320 | 160 / 320 | 0 | 1.20 × |"]
    assert "lokal: peak RSS 900 MiB, GPU 6000 MiB" in table.markdown(doc)
    smi = "name, driver_version, memory.total [MiB], compute_cap\nNVIDIA H100 80GB HBM3, 580.159.04, 81559 MiB, 9.0\n"
    assert table.gpu_line(smi) == "NVIDIA H100 80GB HBM3, driver 580.159.04, 81559 MiB, compute capability 9.0"


@pytest.mark.slow
def test_a_catalog_model_rebuilt_from_its_header_has_its_bytes_layout_and_loads(
    model_home: Path, tmp_path: Path
) -> None:
    real = ModelStore(model_home).gguf_path("smollm2:135m")
    head = tmp_path / "smollm2.head.gz"
    header = like.write_head(real, head)
    assert head.stat().st_size < real.stat().st_size / 20
    out = tmp_path / "like.gguf"
    like.fill(head, out)
    assert out.stat().st_size == real.stat().st_size
    with open(real, "rb") as a, open(out, "rb") as b:
        assert a.read(header.data_offset) == b.read(header.data_offset)
        assert a.read(1 << 20) != b.read(1 << 20)  # the weights are not the real ones
    model = LlamaModel(out, SHAPE)
    try:
        assert model.architecture == "llama" and model.n_vocab == 49152
        assert len(greedy(model, "Hello", 8)) == 8
    finally:
        model.close()
