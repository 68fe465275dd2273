"""The memory estimate's terms, worked out by hand for known shapes, and where a shape comes from."""

from __future__ import annotations

from pathlib import Path

import pytest

from lokal.advise.memory import (
    EstimateError,
    estimate_memory,
    fit_for,
    generic_shape,
    model_shape,
)
from lokal.store.gguf_facts import GgufFacts
from lokal.store.manifest import Manifest


def test_smollm2_at_1024_tokens_term_by_term() -> None:
    # Worked by hand from the GGUF's facts and the calibration in docs/memory-estimate.md (its
    # worked example): not from the code's constants, so a changed constant or formula fails here.
    shape = model_shape("smollm2:135m")
    e = estimate_memory(shape, 1024, 1)
    assert e.weights == 96_576_768  # the GGUF's tensor bytes
    # 30 layers x 3 KV heads x (64 + 64) head size x 2 bytes (f16) = 23,040 bytes a token; x 1024
    assert e.kv_cache == 23_592_960
    # one ubatch of 512 tokens against 1024 cells x 9 heads of f32 scores = 18,874,368 bytes;
    # x 1.7 = 32,086,425.6, truncated to 32,086,425; + 4 MiB (4,194,304)
    assert e.compute == 36_280_729
    # 17 MiB (17,825,792) + 183 bytes x 49,152 vocabulary tokens (8,994,816)
    assert e.overhead == 26_820_608
    assert e.total == 183_271_065  # 174.8 MiB


def test_flash_attention_never_holds_the_scores() -> None:
    shape = model_shape("smollm2:135m")
    with_fa = estimate_memory(shape, 1024, 1, flash_attention=True)
    without = estimate_memory(shape, 1024, 1, flash_attention=False)
    # no scores; one ubatch of 512 tokens x 576 dimensions x 10 f32 activations (11,796,480) + 4 MiB
    assert with_fa.compute == 15_990_784
    assert without.compute == 36_280_729  # the scores, as worked out above


def test_gemma3_uses_its_stated_head_size() -> None:
    e = estimate_memory(model_shape("gemma3:270m"), 256, 1)
    assert e.kv_cache == 18 * 1 * (256 + 256) * 2 * 256  # key_length 256, not 640 / 4


def test_slots_multiply_the_kv_cache_not_the_compute_buffer() -> None:
    shape = model_shape("smollm2:135m")
    one, four = estimate_memory(shape, 1024, 1), estimate_memory(shape, 1024, 4)
    assert four.kv_cache == 4 * one.kv_cache
    assert four.compute == one.compute  # one KV stream a slot: scores are ubatch x one slot's context
    assert four.weights == one.weights and four.overhead == one.overhead


def test_a_short_context_shrinks_the_ubatch() -> None:
    e = estimate_memory(model_shape("smollm2:135m"), 128, 1)
    # ubatch = min(512, 128): 128 x 128 cells x 9 heads x 4 bytes = 589,824; x 1.7 = 1,002,700.8,
    # truncated to 1,002,700; + 4 MiB (4,194,304)
    assert e.compute == 5_197_004


@pytest.mark.parametrize(("kv_type", "bytes_per_value"), [("f16", 2.0), ("q8_0", 34 / 32), ("q4_0", 18 / 32)])
def test_kv_cache_types(kv_type: str, bytes_per_value: float) -> None:
    e = estimate_memory(model_shape("smollm2:135m"), 4096, 2, kv_type)
    assert e.kv_cache == int(30 * 3 * 128 * bytes_per_value) * 4096 * 2


def test_bad_arguments_are_estimate_errors() -> None:
    shape = model_shape("smollm2:135m")
    with pytest.raises(EstimateError, match="unknown KV cache type"):
        estimate_memory(shape, 1024, 1, "q5_1")
    with pytest.raises(EstimateError, match="at least 1"):
        estimate_memory(shape, 0, 1)
    with pytest.raises(EstimateError, match="at least 1"):
        estimate_memory(shape, 1024, 0)


def test_generic_sizes_plan_with_a_representative_architecture() -> None:
    shape = generic_shape("7b:q8_0")
    assert shape is not None and shape.source == "generic"
    assert shape.weights_bytes == int(7e9 * 8.5 / 8)
    assert shape.facts.block_count == 28 and shape.facts.head_count_kv == 4  # like Qwen2.5-7B
    assert generic_shape("smollm2:135m") is None
    with pytest.raises(EstimateError, match="unknown quantization"):
        generic_shape("7b:q9_x")


def test_shapes_come_from_a_file_a_catalog_name_or_a_size(tiny_gguf) -> None:  # type: ignore[no-untyped-def]
    path = tiny_gguf()
    from_file = model_shape(path)
    assert from_file.source == "file" and from_file.n_vocab == 64 and from_file.weights_bytes > 0
    assert model_shape(str(path)).weights_bytes == from_file.weights_bytes
    assert model_shape("gemma3:270m").source == "catalog"
    assert model_shape("3b").source == "generic"


def test_unknown_models_and_bad_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(EstimateError, match='cannot size "no-such:model"'):
        model_shape("no-such:model")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(EstimateError, match="not a valid GGUF"):
        model_shape(bad)


def test_fit_for_judges_a_manifest_as_the_web_ui_does(tiny_gguf) -> None:  # type: ignore[no-untyped-def]
    from lokal.store.gguf_facts import facts_from_header
    from lokal.store.gguf_header import read_gguf_header
    from lokal.ui.fit import fit_badge

    path = tiny_gguf()
    facts: GgufFacts = facts_from_header(read_gguf_header(path))
    manifest = Manifest(name="tiny:latest", digest="sha256:" + "0" * 64, size=path.stat().st_size, facts=facts,
                        source=f"file:{path}")
    fit = fit_for(manifest, 256, 10**9)
    assert fit.fit == "fits" and fit.needed_bytes == fit.estimate.total
    badge = fit_badge(fit.needed_bytes, 10**9)
    assert badge == {"fit": "fits", "needed_bytes": fit.needed_bytes, "available_bytes": 10**9}
    assert fit_badge(fit.needed_bytes, fit.needed_bytes - 1)["fit"] == "wont_fit"
    assert fit_for(manifest, 256, fit.needed_bytes - 1).fit == "wont_fit"
