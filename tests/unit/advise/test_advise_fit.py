"""`lokal advise` on simulated machines: which rows fit, the limits that fit, the serve settings
and the quantization a target size needs."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from lokal.advise.advise import (
    MAX_PARALLEL,
    advise_target,
    candidate_shapes,
    fit_table,
    largest_ctx,
    largest_parallel,
    parse_target,
    serve_advice,
    serve_model,
)
from lokal.advise.memory import estimate_memory, model_shape
from tests.unit.advise.conftest import GIB, machine

MODELS = ["smollm2:135m", "gemma3:270m", "qwen2.5-coder:0.5b", "1b", "7b", "70b:q8_0"]


def _rows(ram_gib: float, ctx: int = 4096, parallel: int = 1) -> dict[str, str]:
    shapes = [model_shape(m) for m in MODELS]
    return {r.model: r.fit for r in fit_table(shapes, machine(ram_gib), ctx, parallel)}


def test_one_gib_machine_fits_the_small_models_and_not_the_big_ones() -> None:
    rows = _rows(1.0)
    assert rows["smollm2:135m"] == "fits"  # 0.35 GB of 1.07 GB
    assert rows["gemma3:270m"] == "fits"  # 0.45 GB
    assert rows["qwen2.5-coder:0.5b"] == "tight"  # 0.79 GB: over 70 %, under 100 %
    assert rows["1b:q4_k_m"] == "wont_fit"  # 0.6 GB of weights + 0.13 GB KV + a 128k-token vocabulary
    assert rows["7b:q4_k_m"] == "wont_fit"
    assert rows["70b:q8_0"] == "wont_fit"


def test_a_big_machine_fits_all_but_the_70b() -> None:
    rows = _rows(64.0)
    assert {m for m, fit in rows.items() if fit != "fits"} == {"70b:q8_0"}


def test_more_slots_turn_a_fitting_model_tight_then_wont_fit() -> None:
    # SmolLM2 at 4096 tokens: 94 MB of KV cache a slot on 97 MB of weights and 159 MB of the rest
    verdicts = [_rows(1.0, ctx=4096, parallel=n)["smollm2:135m"] for n in (1, 8, 12)]
    assert verdicts == ["fits", "tight", "wont_fit"]


def test_verdict_boundaries_are_70_and_100_percent_of_available_ram() -> None:
    shape = model_shape("smollm2:135m")
    total = estimate_memory(shape, 4096, 1).total

    def verdict(available: int) -> str:
        (row,) = fit_table([shape], replace(machine(), ram_available=available), 4096, 1)
        return row.fit

    assert verdict(math.ceil(total / 0.7)) == "fits"
    assert verdict(math.ceil(total / 0.7) - 2) == "tight"
    assert verdict(total) == "tight"
    assert verdict(total - 1) == "wont_fit"


def test_max_ctx_and_slots_are_the_largest_that_fit() -> None:
    shape = model_shape("qwen2.5-coder:0.5b")
    available = GIB
    ctx = largest_ctx(shape, 1, available)
    assert ctx % 256 == 0 and 0 < ctx < 32768
    assert estimate_memory(shape, ctx, 1).total <= available < estimate_memory(shape, ctx + 256, 1).total
    slots = largest_parallel(shape, 1024, available)
    assert estimate_memory(shape, 1024, slots).total <= available < estimate_memory(shape, 1024, slots + 1).total


def test_a_model_that_does_not_fit_at_all_has_zero_limits() -> None:
    (row,) = fit_table([model_shape("70b:q8_0")], machine(1.0), 4096, 1)
    assert (row.fit, row.max_ctx, row.max_parallel) == ("wont_fit", 0, 0)


def test_slots_are_counted_up_to_a_cap_and_ctx_up_to_the_trained_context() -> None:
    (row,) = fit_table([model_shape("smollm2:135m")], machine(256.0), 4096, 1)
    assert row.max_parallel == MAX_PARALLEL
    assert row.max_ctx == 8192  # SmolLM2's trained context


def test_candidates_without_a_store_are_the_catalog_then_planning_sizes() -> None:
    shapes = candidate_shapes(None)
    catalog = [s.name for s in shapes if s.source == "catalog"]
    generic = [s.name for s in shapes if s.source == "generic"]
    assert catalog == ["smollm2:135m", "gemma3:270m", "qwen2.5-coder:0.5b"]
    assert generic == ["1b:q4_k_m", "3b:q4_k_m", "7b:q4_k_m", "14b:q4_k_m", "32b:q4_k_m", "70b:q4_k_m"]
    assert len(shapes) == len(catalog) + len(generic)


def test_named_candidates_are_only_those(tiny_gguf) -> None:  # type: ignore[no-untyped-def]
    shapes = candidate_shapes(None, [str(tiny_gguf()), "3b:q8_0"])
    assert [(s.source, s.quantization) for s in shapes] == [("file", "Q8_0"), ("generic", "Q8_0")]


def test_serve_advice_on_two_cores_uses_both_and_fits_its_slots_in_70_percent() -> None:
    hw = machine(1.0, cores=2)
    advice = serve_advice(model_shape("smollm2:135m"), hw)
    assert advice.threads == 2
    assert advice.ctx == 4096
    assert 1 <= advice.parallel < 8
    assert estimate_memory(model_shape("smollm2:135m"), 4096, advice.parallel).total <= 0.7 * hw.ram_available
    assert estimate_memory(model_shape("smollm2:135m"), 4096, advice.parallel + 1).total > 0.7 * hw.ram_available
    assert advice.command == (f"lokal serve --model smollm2:135m --ctx-size 4096 --parallel {advice.parallel} "
                              "--threads 2")


def test_serve_advice_shrinks_the_context_when_one_slot_does_not_fit() -> None:
    advice = serve_advice(model_shape("qwen2.5-coder:0.5b"), machine(1.0))
    assert advice.parallel == 1 and advice.ctx < 4096
    assert "largest context" in advice.reasons[1]


def test_serve_advice_gives_one_slot_per_user_up_to_eight() -> None:
    big = machine(64.0)
    shape = model_shape("smollm2:135m")
    assert serve_advice(shape, big, slots=3).parallel == 3
    assert serve_advice(shape, big, slots=20).parallel == 8


def test_serve_model_prefers_the_store_and_never_a_generic_size() -> None:
    shapes = [model_shape("qwen2.5-coder:0.5b"), model_shape("7b")]
    small = model_shape("smollm2:135m")
    stored = type(small)(name=small.name, facts=small.facts, weights_bytes=small.weights_bytes,
                         n_vocab=small.n_vocab, source="store")
    rows = fit_table([*shapes, stored], machine(64.0), 4096, 1)
    chosen = serve_model(rows, [*shapes, stored])
    assert chosen is not None and chosen.name == "smollm2:135m"
    rows = fit_table(shapes, machine(64.0), 4096, 1)
    chosen = serve_model(rows, shapes)
    assert chosen is not None and chosen.name == "qwen2.5-coder:0.5b"
    assert serve_model(fit_table([model_shape("70b")], machine(1.0), 4096, 1), [model_shape("70b")]) is None


def test_serve_model_never_suggests_an_embedding_model() -> None:
    small = model_shape("smollm2:135m")
    pooled = small.facts.model_copy(update={"metadata": {**small.facts.metadata, "llama.pooling_type": 1}})
    embedder = replace(small, name="embedder:1", facts=pooled, source="store")
    assert serve_model(fit_table([embedder], machine(64.0), 4096, 1), [embedder]) is None


# ---- targets: "7B at 8k, 4 users" ------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "size", "ctx", "users"),
    [
        ("7b@8k x4", 7.0, 8192, 4),
        ("7B at 8k, 4 users", 7.0, 8192, 4),
        ("7b@8kx4", 7.0, 8192, 4),
        ("13b", 13.0, 4096, 1),
        ("0.5b at 2048 x 3 users", 0.5, 2048, 3),
        ("70B@32k", 70.0, 32768, 1),
    ],
)
def test_targets_parse(text: str, size: float, ctx: int, users: int) -> None:
    target = parse_target(text)
    assert (target.size_b, target.ctx, target.users) == (size, ctx, users)


@pytest.mark.parametrize("text", ["7", "seven b", "7b@", "0b", "7b x0", "7b@0k"])
def test_bad_targets_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="target"):
        parse_target(text)


# 7B (Qwen2.5-7B's shape) at 8k x 4 users with an f16 KV cache needs, by quantization:
# F16 16.73 GB, Q8_0 10.16, Q6_K 8.50, Q5_K_M 7.71, Q4_K_M 6.97, Q4_0 6.71, Q3_K_M 6.14, Q2_K 5.35.
@pytest.mark.parametrize(
    ("ram_gib", "quant", "kv", "fit"),
    [
        (32, "F16", "f16", "fits"),  # 16.73 <= 0.7 x 34.36 GB
        (16, "Q8_0", "f16", "fits"),  # 10.16 <= 12.03 GB; F16 is over
        (12, "Q6_K", "f16", "fits"),  # 8.50 <= 9.02 GB; Q8_0 is over
        (8, "Q2_K", "f16", "fits"),  # only Q2_K is under 0.7 x 8.59 = 6.01 GB: comfortable beats tight
        (6, "Q3_K_M", "f16", "tight"),  # nothing under 4.51 GB; Q3_K_M's 6.14 is under 6.44 GB
        (4.5, "Q2_K", "q8_0", "tight"),  # no f16 KV option under 4.83 GB; Q2_K with a q8_0 KV cache (4.47) is
    ],
)
def test_target_picks_the_best_quantization_that_fits(ram_gib: float, quant: str, kv: str, fit: str) -> None:
    advice = advise_target(parse_target("7B at 8k, 4 users"), int(ram_gib * GIB))
    assert advice.best is not None
    assert (advice.best.quantization, advice.best.kv_type, advice.best.fit) == (quant, kv, fit)
    assert quant in advice.reason


def test_target_says_nothing_fits_on_a_small_machine() -> None:
    advice = advise_target(parse_target("7b@8k x4"), 4 * GIB)
    assert advice.best is None
    assert advice.reason.startswith("nothing fits") and "Q2_K" in advice.reason
    assert all(o.fit == "wont_fit" for o in advice.options)
