"""`lokal pull` warns (never stops) before a model that will not fit in RAM or on the disk,
judged with the same estimate as `lokal advise`, on injected machine facts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lokal.advise.advise import pull_warnings
from lokal.advise.memory import estimate_memory, model_shape
from lokal.cli.advise_cmds import warn_if_wont_fit
from lokal.config import Settings
from tests.unit.advise.conftest import GIB, machine

QWEN_FILE = 491_400_064  # the catalog's size of qwen2.5-coder:0.5b's GGUF


def test_a_model_that_fits_says_nothing() -> None:
    assert pull_warnings("smollm2:135m", 4096, 1, machine(8.0)) == []


def test_a_model_too_big_for_the_ram_is_warned_about_with_the_numbers() -> None:
    (warning,) = pull_warnings("qwen2.5-coder:0.5b", 4096, 1, machine(0.5))
    needed = estimate_memory(model_shape("qwen2.5-coder:0.5b"), 4096, 1).total
    assert warning.startswith("qwen2.5-coder:0.5b will not fit:")
    assert f"{needed / 1e9:.2f} GB at ctx 4096 x 1 slot(s)" in warning
    assert f"{0.5 * GIB / 1e9:.2f} GB of RAM is available" in warning


def test_a_tight_model_is_warned_about_too() -> None:
    (warning,) = pull_warnings("qwen2.5-coder:0.5b", 4096, 1, machine(1.0))  # 0.79 GB of 1.07
    assert "will be tight" in warning


def test_more_slots_at_the_configured_context_can_make_it_not_fit() -> None:
    assert pull_warnings("smollm2:135m", 4096, 1, machine(1.0)) == []
    (warning,) = pull_warnings("smollm2:135m", 4096, 16, machine(1.0))
    assert "will not fit" in warning and "x 16 slot(s)" in warning


def test_a_file_larger_than_the_free_disk_is_warned_about(tmp_path: Path) -> None:
    hw = machine(8.0, disk_gib=0.25)  # 268 MB free, the file is 491 MB
    (warning,) = pull_warnings("qwen2.5-coder:0.5b", 4096, 1, hw, tmp_path)
    assert warning == (f"qwen2.5-coder:0.5b will not fit on disk: the file is about {QWEN_FILE / 1e9:.2f} GB and "
                       f"{0.25 * GIB / 1e9:.2f} GB is free under {tmp_path}")


def test_ram_and_disk_both_short_give_two_warnings() -> None:
    warnings = pull_warnings("qwen2.5-coder:0.5b", 4096, 1, machine(0.25, disk_gib=0.1))
    assert len(warnings) == 2 and "will not fit:" in warnings[0] and "on disk" in warnings[1]


def test_unknown_disk_space_is_not_a_warning() -> None:
    assert pull_warnings("qwen2.5-coder:0.5b", 4096, 1, machine(8.0, disk_gib=None)) == []


def test_a_model_that_cannot_be_sized_is_not_a_warning() -> None:
    assert pull_warnings("not-a-model", 4096, 1, machine(0.01)) == []


def test_warn_if_wont_fit_prints_one_warning_line_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    warn_if_wont_fit("qwen2.5-coder:0.5b", Settings(home=tmp_path), hardware=machine(0.5))
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("warning: qwen2.5-coder:0.5b will not fit:")
    assert captured.err.count("\n") == 1


@dataclass
class _Pulled:
    name: str
    size: int
    kind: str = "chat"


def test_lokal_pull_warns_then_pulls_anyway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lokal.advise.hardware
    import lokal.store.pull
    import lokal.workshop.hf_import
    from lokal.cli.main import app

    pulled: list[str] = []

    def fake_pull(store: Any, name: str, report: Any = None, **options: Any) -> _Pulled:
        pulled.append(name)
        return _Pulled(name, QWEN_FILE)

    monkeypatch.setattr(lokal.store.pull, "pull_model", fake_pull)
    monkeypatch.setattr(lokal.workshop.hf_import, "pull_model", fake_pull)  # the CLI's pull goes through it
    monkeypatch.setattr(lokal.advise.hardware, "detect_hardware", lambda home=None: machine(0.5, disk_gib=0.25))
    monkeypatch.setenv("LOKAL_HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["pull", "qwen2.5-coder:0.5b"])
    assert result.exit_code == 0, result.output
    assert pulled == ["qwen2.5-coder:0.5b"]
    assert "qwen2.5-coder:0.5b will not fit:" in result.stderr
    assert "will not fit on disk" in result.stderr
