"""What `lokal cost` reads: throughput from bench JSON files, power, and the price table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lokal.advise.cost import BenchFileError, measure_power, read_bench_throughput
from lokal.advise.prices import PriceTableError, load_prices


def lokal_bench_doc(levels: list[tuple[int, float]], *, model: str = "smollm2:135m",
                    prompt_tokens: int = 0, max_tokens: int = 64) -> dict[str, Any]:
    """The parts of a `lokal bench run --json` file that cost reads."""
    return {
        "schema": "lokal-bench/1",
        "config": {"scenario": "single", "model": model, "prompt_tokens": prompt_tokens, "max_tokens": max_tokens},
        "targets": [
            {"name": "lokal", "model": model, "status": "ok",
             "levels": [{"concurrency": c, "tok_s": t} for c, t in levels]},
            {"name": "llama-server", "model": model, "status": "ok", "levels": [{"concurrency": 1, "tok_s": 999.0}]},
        ],
    }


def write(tmp_path: Path, doc: Any, name: str = "bench.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


def test_lokal_bench_file_gives_lokals_best_level(tmp_path: Path) -> None:
    t = read_bench_throughput(write(tmp_path, lokal_bench_doc([(1, 120.0), (4, 210.5), (8, 190.0)])))
    assert t.tok_s == 210.5 and t.concurrency == 4 and t.model == "smollm2:135m"
    assert t.source == "bench.json: target lokal, c=4"
    assert t.input_per_output is None  # no prompt_tokens in a single-scenario run


def test_a_named_target_and_a_concurrency_pick_that_level(tmp_path: Path) -> None:
    path = write(tmp_path, lokal_bench_doc([(1, 120.0), (4, 210.5), (8, 190.0)]))
    assert read_bench_throughput(path, "llama-server").tok_s == 999.0
    assert read_bench_throughput(path, concurrency=7).concurrency == 8
    assert read_bench_throughput(path, concurrency=1).tok_s == 120.0


def test_the_prompt_ratio_comes_from_a_long_prompt_run(tmp_path: Path) -> None:
    t = read_bench_throughput(write(tmp_path, lokal_bench_doc([(1, 50.0)], prompt_tokens=1500, max_tokens=64)))
    assert t.input_per_output == pytest.approx(1500 / 64)


def test_serve_load_files_are_read_too(tmp_path: Path) -> None:
    doc = {"lokal": {"c8": {"tok_s": 201.0}, "c10": {"tok_s": 212.0}, "rss_mib": 300},
           "llama-server": {"c10": {"tok_s": 230.0}}}
    t = read_bench_throughput(write(tmp_path, doc))
    assert (t.tok_s, t.concurrency, t.model) == (212.0, 10, None)


def test_failed_targets_and_bad_levels_are_skipped(tmp_path: Path) -> None:
    doc = lokal_bench_doc([(1, 100.0)])
    doc["targets"][0]["status"] = "failed"
    doc["targets"][1]["levels"] = [{"concurrency": 1, "tok_s": "fast"}, {"concurrency": 2, "tok_s": -1},
                                   "junk", {"concurrency": 4, "tok_s": 50.0}]
    t = read_bench_throughput(write(tmp_path, doc))
    assert (t.tok_s, t.source) == (50.0, "bench.json: target llama-server, c=4")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json {", "not JSON"),
        ("{}", "no tok_s measurements"),
        ("[1, 2, 3]", "no tok_s measurements"),
        ('{"targets": [{"name": "lokal", "levels": 5}]}', "no tok_s measurements"),
        ('{"targets": [{"name": "lokal", "levels": [{"tok_s": NaN}]}]}', "no tok_s measurements"),
    ],
)
def test_garbled_bench_files_give_one_line_errors(tmp_path: Path, content: str, message: str) -> None:
    with pytest.raises(BenchFileError, match=message) as info:
        read_bench_throughput(write(tmp_path, content))
    assert "\n" not in str(info.value)


def test_a_missing_or_binary_bench_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BenchFileError, match="No such file"):
        read_bench_throughput(tmp_path / "missing.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(BenchFileError, match="not a text file"):
        read_bench_throughput(tmp_path / "bin.json")


def test_an_unknown_target_names_those_there_are(tmp_path: Path) -> None:
    with pytest.raises(BenchFileError, match="no target 'ollama' \\(has llama-server, lokal\\)"):
        read_bench_throughput(write(tmp_path, lokal_bench_doc([(1, 1.0)])), "ollama")


# ---- power ----------------------------------------------------------------------------------
def test_power_without_counters_is_a_stated_assumption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lokal.advise.cost._nvml_watts", lambda: None)  # whatever GPU this machine has
    power = measure_power(0.01, powercap=tmp_path / "none")
    assert power.method == "assumed"
    assert power.watts == 65 and "assumed" in power.detail and "--watts" in power.detail


class FakeClock:
    """time for measure_power: sleeping advances the clock by `seconds` and the counters by `moves`."""

    def __init__(self, moves: dict[Path, int]) -> None:
        self.now = 1000.0
        self.moves = moves

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        for path, microjoules in self.moves.items():
            path.write_text(str(int(path.read_text()) + microjoules))


def test_power_from_rapl_counters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "energy_uj").write_text("1000000")
    (zone / "max_energy_range_uj").write_text("262143328850")
    (tmp_path / "intel-rapl:0:0").mkdir()  # a sub-zone (the cores): part of the package, not added again
    (tmp_path / "intel-rapl:0:0" / "energy_uj").write_text("5")
    # over 0.5 s the package uses 25 J (25,000,000 uJ) and its cores 20 J of those
    clock = FakeClock({zone / "energy_uj": 25_000_000, tmp_path / "intel-rapl:0:0" / "energy_uj": 20_000_000})
    monkeypatch.setattr("lokal.advise.cost.time", clock)
    monkeypatch.setattr("lokal.advise.cost._nvml_watts", lambda: None)
    power = measure_power(0.5, powercap=tmp_path)
    assert power.method == "rapl"
    assert power.watts == 50.0  # 25 J / 0.5 s; the sub-zone's 20 J not counted again
    assert power.detail == "CPU packages 50.0 W (RAPL over 0.5 s, whatever is running now)"


def test_power_across_a_rapl_counter_wrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "energy_uj").write_text("999000000")
    (zone / "max_energy_range_uj").write_text("1000000000")
    # +10 J wraps at 1000 J: the counter reads 9 J after the sleep
    clock = FakeClock({zone / "energy_uj": 10_000_000 - 1_000_000_000})
    monkeypatch.setattr("lokal.advise.cost.time", clock)
    monkeypatch.setattr("lokal.advise.cost._nvml_watts", lambda: None)
    power = measure_power(2.0, powercap=tmp_path)
    assert (power.method, power.watts) == ("rapl", 5.0)  # 10 J / 2 s


# ---- prices ---------------------------------------------------------------------------------
def test_the_shipped_price_table_is_dated_and_sane() -> None:
    table = load_prices(None)
    assert table.noted and table.currency == "USD" and len(table.apis) >= 5
    assert all(p.input_per_m >= 0 and p.output_per_m > 0 for p in table.apis)


def test_a_users_prices_replace_and_add_entries_by_id(tmp_path: Path) -> None:
    (tmp_path / "prices.json").write_text(json.dumps({"noted": "2030-01-01", "apis": [
        {"id": "openai/gpt-4o", "input_per_m": 1, "output_per_m": 2},
        {"id": "acme/new", "provider": "Acme", "model": "New", "input_per_m": 0.5, "output_per_m": 0.5},
    ]}))
    table = load_prices(tmp_path)
    by_id = {p.id: p for p in table.apis}
    assert (by_id["openai/gpt-4o"].input_per_m, by_id["openai/gpt-4o"].output_per_m) == (1.0, 2.0)
    assert by_id["acme/new"].provider == "Acme"
    assert table.noted == "2030-01-01" and str(tmp_path / "prices.json") in table.sources


def test_an_undated_user_table_keeps_the_shipped_date_and_says_so(tmp_path: Path) -> None:
    (tmp_path / "prices.json").write_text(json.dumps({"apis": []}))
    assert "gives no date" in load_prices(tmp_path).noted


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not valid JSON"),
        ('{"noted": "x"}', "expected"),
        ('{"apis": [{"id": "a"}]}', "needs id, input_per_m and output_per_m"),
        ('{"apis": [{"id": "a", "input_per_m": -1, "output_per_m": 1}]}', "at least 0"),
        ('{"apis": [{"id": "a", "input_per_m": "cheap", "output_per_m": 1}]}', "needs id"),
    ],
)
def test_a_bad_user_table_is_a_one_line_error(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "prices.json").write_text(content)
    with pytest.raises(PriceTableError, match=message):
        load_prices(tmp_path)
