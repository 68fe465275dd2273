"""`lokal recommend`: needs in, a configuration and its reasons out, citing the bench's numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lokal.advise.cost import read_bench_throughput
from lokal.advise.memory import EstimateError, model_shape
from lokal.advise.recommend import Needs, recommend
from tests.unit.advise.conftest import machine
from tests.unit.advise.test_cost_inputs import lokal_bench_doc


@pytest.fixture
def bench_file(tmp_path: Path) -> Path:
    """smollm2:135m measured at 42.0 tok/s with 1 request in flight and 96.0 with 4."""
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(lokal_bench_doc([(1, 42.0), (4, 96.0)])))
    return path


def test_batch_work_for_four_users_on_the_benched_model_cites_its_numbers(bench_file: Path) -> None:
    throughput = read_bench_throughput(bench_file, concurrency=4)
    rec = recommend(Needs(use_case="batch", users=4), machine(8.0), None, throughput)
    assert rec.model == "smollm2:135m"
    assert rec.command == "lokal serve --model smollm2:135m --ctx-size 2048 --parallel 4 --threads 2"
    assert rec.settings == {"model": "smollm2:135m", "ctx": 2048, "parallel": 4, "threads": 2, "host": "127.0.0.1"}
    cited = [r for r in rec.reasons if r.startswith("measured throughput")]
    # 96.0 tok/s over 4 requests in flight = 24.0 tok/s a slot
    assert cited == ["measured throughput 96.0 tok/s at 4 request(s) in flight (bench.json: target lokal, c=4): "
                     "24.0 tok/s per busy slot"]
    assert rec.measured == {"tok_s": 96.0, "source": "bench.json: target lokal, c=4", "model": "smollm2:135m",
                            "concurrency": 4, "per_slot_tok_s": 24.0, "expected_per_slot_tok_s": 24.0}
    assert rec.warnings == []


def test_another_model_than_the_benched_one_is_scaled_by_its_weights_and_says_so(bench_file: Path) -> None:
    throughput = read_bench_throughput(bench_file, concurrency=1)
    rec = recommend(Needs(use_case="code", users=1), machine(8.0), None, throughput)
    assert rec.model == "qwen2.5-coder:0.5b"
    scale = model_shape("smollm2:135m").weights_bytes / model_shape("qwen2.5-coder:0.5b").weights_bytes
    assert rec.measured is not None
    assert rec.measured["per_slot_tok_s"] == 42.0
    assert rec.measured["expected_per_slot_tok_s"] == pytest.approx(42.0 * scale)  # 8.4 tok/s
    (cited,) = [r for r in rec.reasons if r.startswith("measured throughput")]
    assert "42.0 tok/s per busy slot; measured on smollm2:135m" in cited
    assert f"about {42.0 * scale:.1f} tok/s per slot (scaled by the weights, a pessimistic guess" in cited


def test_slow_measured_throughput_is_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "slow.json"
    path.write_text(json.dumps(lokal_bench_doc([(8, 16.0)])))
    rec = recommend(Needs(use_case="batch", users=8), machine(8.0), None, read_bench_throughput(path, concurrency=8))
    assert any(w.startswith("about 2.0 tok/s per user is slower than reading speed") for w in rec.warnings)


def test_the_reasons_cite_the_estimate_against_the_ram() -> None:
    rec = recommend(Needs(use_case="chat", users=2), machine(8.0))
    assert rec.model == "qwen2.5-coder:0.5b"
    assert any(r.startswith("qwen2.5-coder:0.5b with 2 slot(s) of 4096 tokens needs") and r.endswith(": fits")
               for r in rec.reasons)


def test_a_small_machine_falls_back_to_the_smaller_model() -> None:
    rec = recommend(Needs(use_case="chat", users=1), machine(0.5))
    assert rec.model == "smollm2:135m"
    assert any(r.startswith("qwen2.5-coder:0.5b with 1 slot(s)") and r.endswith(": won't fit") for r in rec.reasons)


def test_nothing_fits_is_an_answer_without_a_command() -> None:
    rec = recommend(Needs(use_case="chat", users=4), machine(0.25))
    assert rec.model is None and rec.command is None and rec.settings == {}
    assert rec.warnings[-1] == "no candidate model fits this machine"


def test_more_users_than_slots_queue() -> None:
    rec = recommend(Needs(use_case="batch", users=20), machine(64.0))
    assert rec.settings["parallel"] == 8
    assert any(r.startswith("20 users share 8 slots") for r in rec.reasons)


def test_lan_api_and_privacy_shape_the_command_and_reasons() -> None:
    rec = recommend(Needs(use_case="chat", users=1, lan=True, api="ollama", private=False), machine(8.0))
    assert rec.command is not None and rec.command.startswith("lokal serve --host 0.0.0.0 --model ")
    assert rec.settings["host"] == "0.0.0.0"
    assert any("API key" in r for r in rec.reasons)
    assert "API: Ollama clients: host http://HOST:11435 (the /api routes)" in rec.reasons
    assert any("lokal cost" in r for r in rec.reasons)


def test_two_cores_and_many_users_without_a_bench_suggest_measuring() -> None:
    rec = recommend(Needs(use_case="chat", users=6), machine(8.0, cores=2))
    assert any("run `lokal bench`" in w for w in rec.warnings)


def test_a_model_the_user_insists_on_is_used_or_refused() -> None:
    rec = recommend(Needs(use_case="code", users=1, model="smollm2:135m"), machine(8.0))
    assert rec.model == "smollm2:135m"
    with pytest.raises(EstimateError, match='cannot size "no-such"'):
        recommend(Needs(model="no-such"), machine(8.0))
    with pytest.raises(EstimateError, match="a size for planning"):
        recommend(Needs(model="7b"), machine(8.0))


@pytest.mark.parametrize(
    ("needs", "message"),
    [(Needs(use_case="poetry"), "use case"), (Needs(api="grpc"), "api"), (Needs(users=0), "users")],
)
def test_bad_needs_are_refused(needs: Needs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        recommend(needs, machine(8.0))
