"""lokal quantize's types, names and disk check, without running llama.cpp's quantizer."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from lokal.store.model_store import ModelStore
from lokal.workshop.quant_table import parse_types
from lokal.workshop.quantize import (
    QUANT_TYPES,
    QuantizeError,
    estimated_size,
    parse_quant_type,
    quantize_model,
    quantized_name,
)


def test_every_type_is_the_llama_ftype_of_the_installed_llama_cpp() -> None:
    for name, qtype in QUANT_TYPES.items():
        constant = "LLAMA_FTYPE_ALL_F32" if name == "F32" else f"LLAMA_FTYPE_MOSTLY_{name}"
        assert getattr(llama_cpp, constant) == qtype.ftype, name


def test_type_names_ignore_case_and_spaces() -> None:
    assert parse_quant_type(" q4_k_m ").name == "Q4_K_M"
    assert parse_quant_type("q4_K_M") is QUANT_TYPES["Q4_K_M"]  # Ollama's spelling in /api/create


@pytest.mark.parametrize("bad", ["Q9", "", "q4_k_x", "IQ2_XXS", "f16; rm -rf /"])
def test_an_unknown_type_is_one_error_listing_the_valid_ones(bad: str) -> None:
    with pytest.raises(QuantizeError) as exc:
        parse_quant_type(bad)
    message = str(exc.value)
    assert message.startswith("unknown quantization type")
    assert all(name in message for name in ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K", "F16"))


def test_the_new_name_is_the_source_tag_with_the_type() -> None:
    q4 = QUANT_TYPES["Q4_K_M"]
    assert quantized_name("smollm2:135m", q4) == "smollm2:135m-q4_k_m"
    assert quantized_name("pirate", q4) == "pirate:latest-q4_k_m"
    # a variant of a variant is named after the model, not after both types
    assert quantized_name("smollm2:135m-q8_0", q4) == "smollm2:135m-q4_k_m"


def test_bench_types_are_parsed_deduplicated_and_widest_first() -> None:
    assert [t.name for t in parse_types("q4_k_m,Q8_0,Q4_K_M")] == ["Q8_0", "Q4_K_M"]
    assert [t.name for t in parse_types(None)] == ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K"]
    with pytest.raises(QuantizeError):
        parse_types("Q8_0,Q7")


def test_the_size_estimate_follows_the_bits_of_the_type(tiny_gguf: Callable[..., Path]) -> None:
    path = tiny_gguf()
    sizes = {name: estimated_size(path, QUANT_TYPES[name]) for name in ("F32", "F16", "Q8_0", "Q4_K_M")}
    assert sizes["F32"] > sizes["F16"] > sizes["Q8_0"] > sizes["Q4_K_M"]
    # the matrices of the tiny model (64x32 + 2 of 64x64) at 16 bits, plus what is kept as it is
    assert sizes["F32"] - sizes["F16"] == (64 * 32 + 2 * 64 * 64) * 2


def test_not_enough_disk_is_refused_before_anything_is_written(
    tmp_path: Path, tiny_gguf: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(tmp_path / "home")
    store.import_file(tiny_gguf(file_type=1), "tiny:f16")  # an F16 file type: quantizing it needs no flag
    before = sorted(p.relative_to(store.home) for p in store.home.rglob("*"))
    real = shutil.disk_usage

    def almost_full(path: Any) -> Any:  # the machine's disk cannot be filled for a test: its free space is shrunk
        usage = real(path)
        return usage._replace(free=1000)

    monkeypatch.setattr(shutil, "disk_usage", almost_full)
    with pytest.raises(QuantizeError, match=r"not enough disk space to quantize to Q8_0: about .* GB needed"):
        quantize_model(store, "tiny:f16", "Q8_0")
    assert sorted(p.relative_to(store.home) for p in store.home.rglob("*")) == before
