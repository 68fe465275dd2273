"""`lokal advise | cost | recommend` in-process on a simulated machine: tables, --json against the
documented schemas, and one-line errors with a non-zero exit for bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from typer.testing import CliRunner

from lokal.advise import json_schema
from lokal.advise.hardware import Hardware
from tests.unit.advise.conftest import machine
from tests.unit.advise.test_cost_inputs import lokal_bench_doc


@pytest.fixture
def lokal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run the CLI in an empty home on a simulated machine: ``lokal(args, ram_gib=1)``."""
    import lokal.advise.cost
    import lokal.advise.hardware
    from lokal.cli.main import app

    monkeypatch.setenv("LOKAL_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(lokal.advise.cost, "measure_power", lambda *a, **k: pytest.fail("power measured"))

    def run(args: list[str], ram_gib: float = 1.0, cores: int = 2) -> Any:
        hw: Hardware = machine(ram_gib, cores)
        monkeypatch.setattr(lokal.advise.hardware, "detect_hardware", lambda home=None: hw)
        return CliRunner().invoke(app, args)

    return run


def valid(kind: str, stdout: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(stdout)
    jsonschema.Draft202012Validator(json_schema(kind)).validate(doc)
    return doc


@pytest.fixture
def bench(tmp_path: Path) -> Path:
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(lokal_bench_doc([(1, 42.0), (4, 96.0)])))
    return path


def test_the_schemas_are_valid_json_schemas() -> None:
    for kind in ("advise", "cost", "recommend"):
        jsonschema.Draft202012Validator.check_schema(json_schema(kind))


def test_advise_json_on_a_one_gib_machine(lokal: Any) -> None:
    result = lokal(["advise", "--json", "-m", "smollm2:135m", "-m", "qwen2.5-coder:0.5b", "-m", "7b"])
    assert result.exit_code == 0, result.output
    doc = valid("advise", result.stdout)
    assert {m["model"]: m["fit"] for m in doc["models"]} == {
        "smollm2:135m": "fits", "qwen2.5-coder:0.5b": "tight", "7b:q4_k_m": "wont_fit"}
    assert doc["hardware"]["ram_available"] == doc["available_bytes"] == 1024**3
    assert doc["serve"]["model"] == "qwen2.5-coder:0.5b"  # the largest that fits (tightly), not the generic 7b
    assert doc["target"] is None


def test_advise_json_with_a_target(lokal: Any) -> None:
    result = lokal(["advise", "--json", "--target", "7B at 8k, 4 users"], ram_gib=12)
    doc = valid("advise", result.stdout)
    assert doc["target"]["best"] == {"quantization": "Q6_K", "kv_type": "f16", "needed_bytes": 8_502_491_481,
                                     "fit": "fits"}
    assert {m["source"] for m in doc["models"]} == {"catalog", "generic"}  # an empty store: catalog and sizes
    assert doc["serve"]["model"] == "qwen2.5-coder:0.5b"  # the largest catalog model, never a generic size


def test_advise_serves_with_the_asked_context_and_slots(lokal: Any) -> None:
    doc = valid("advise", lokal(["advise", "--json", "--ctx", "2048", "--parallel", "3", "-m", "smollm2:135m"],
                                ram_gib=8).stdout)
    assert (doc["ctx"], doc["parallel"]) == (2048, 3)
    assert doc["models"][0]["estimate"]["parallel"] == 3
    assert doc["serve"]["command"] == "lokal serve --model smollm2:135m --ctx-size 2048 --parallel 3 --threads 2"


def test_advise_table_marks_the_rows(lokal: Any) -> None:
    result = lokal(["advise", "-m", "smollm2:135m", "-m", "70b:q8_0"])
    assert result.exit_code == 0
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "fits" in lines["smollm2:135m*"]
    assert "won't fit" in lines["70b:q8_0*"]
    assert "serve: lokal serve --model smollm2:135m" in result.stdout


def test_cost_json_from_a_bench_file(lokal: Any, bench: Path) -> None:
    result = lokal(["cost", "--bench", str(bench), "--watts", "40", "--hardware-price", "900", "--json"])
    assert result.exit_code == 0, result.output
    doc = valid("cost", result.stdout)
    assert doc["throughput"] == {"tok_s": 96.0, "source": "bench.json: target lokal, c=4", "model": "smollm2:135m",
                                 "concurrency": 4}
    assert doc["power"]["method"] == "given" and doc["inputs"]["watts"] == 40
    assert doc["input_per_output_source"] == "assumed" and doc["inputs"]["input_per_output"] == 1.0
    # 96 tok/s x 0.25 x 2,629,800 s; 900 / 36 months; 0.04 kW x 730.5 h x 0.25 x 0.30
    assert doc["result"]["tokens_per_month"] == pytest.approx(63_115_200)
    assert doc["result"]["hardware_per_month"] == pytest.approx(25.0)
    assert doc["result"]["energy_per_month"] == pytest.approx(2.1915)


def test_cost_table_names_its_inputs(lokal: Any, bench: Path) -> None:
    result = lokal(["cost", "--bench", str(bench), "--watts", "40"])
    assert result.exit_code == 0
    assert "throughput 96.0 tok/s (bench.json: target lokal, c=4, smollm2:135m)" in result.stdout
    assert "power 40 W: 40 W (--watts)" in result.stdout
    assert "list prices noted 2025-06-01; 1 prompt token(s) per output token (assumed)" in result.stdout
    assert "BREAK-EVEN" in result.stdout


def test_recommend_json_from_flags(lokal: Any, bench: Path) -> None:
    result = lokal(["recommend", "--use-case", "batch", "--users", "4", "--api", "openai", "--local-only",
                    "--private", "--bench", str(bench), "--json"], ram_gib=8)
    assert result.exit_code == 0, result.output
    doc = valid("recommend", result.stdout)
    assert doc["needs"] == {"use_case": "batch", "users": 4, "private": True, "api": "openai", "lan": False,
                            "model": None}
    rec = doc["recommendation"]
    assert rec["command"] == "lokal serve --model smollm2:135m --ctx-size 2048 --parallel 4 --threads 2"
    assert rec["measured"]["tok_s"] == 96.0 and rec["measured"]["per_slot_tok_s"] == 24.0


def test_recommend_without_a_terminal_takes_the_defaults(lokal: Any) -> None:
    result = lokal(["recommend", "--json"], ram_gib=8)
    doc = valid("recommend", result.stdout)
    assert doc["needs"]["use_case"] == "chat" and doc["needs"]["users"] == 1


def test_recommend_json_when_nothing_fits(lokal: Any) -> None:
    result = lokal(["recommend", "--json", "--users", "4"], ram_gib=0.25)
    rec = valid("recommend", result.stdout)["recommendation"]
    assert rec["model"] is None and rec["settings"] == {}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cost", "--bench", "/no/such/bench.json"], "cannot read the bench JSON"),
        (["cost", "--bench", "{garbled}"], "not JSON"),
        (["cost", "--tok-s", "10", "--hardware-price", "-5"], "hardware price cannot be negative"),
        (["cost", "--tok-s", "10", "--kwh-price", "-0.3"], "electricity price (per kWh) cannot be negative"),
        (["cost", "--tok-s", "10", "--watts", "-1"], "power (watts) cannot be negative"),
        (["cost", "--tok-s", "0"], "throughput must be more than 0"),
        (["cost", "--tok-s", "nan"], "must be a finite number"),
        (["cost"], "give measured throughput"),
        (["advise", "-m", "no-such:model"], 'cannot size "no-such:model"'),
        (["advise", "--ctx", "0"], "at least 1"),
        (["advise", "--parallel", "0"], "--parallel must be at least 1"),
        (["advise", "--kv-type", "q5"], "unknown KV cache type"),
        (["advise", "--target", "big"], 'target "big"'),
        (["recommend", "-m", "no-such:model"], 'cannot size "no-such:model"'),
        (["recommend", "--users", "0"], "--users must be at least 1"),
        (["recommend", "--use-case", "poetry"], "use case must be one of"),
        (["recommend", "--bench", "{garbled}"], "not JSON"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_1(lokal: Any, tmp_path: Path, args: list[str], message: str) -> None:
    garbled = tmp_path / "garbled.json"
    garbled.write_text("{not json")
    result = lokal([str(garbled) if a == "{garbled}" else a for a in args])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
