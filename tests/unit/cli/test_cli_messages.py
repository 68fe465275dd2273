"""Messages printed through Rich keep their square brackets: paths, names and install hints are text,
not markup (Rich drops a lowercase ``[word]`` it takes for a style tag)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lokal.cli.main import app


def test_bench_html_without_matplotlib_names_the_extra_to_install(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOKAL_HOME", str(tmp_path / "home"))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError

    def run_bench(targets: Any, cfg: Any, events: Any) -> dict[str, Any]:  # no server, no requests
        return {"targets": [], "interrupted": False}

    monkeypatch.setattr("lokal.bench.run.run_bench", run_bench)
    monkeypatch.setattr("lokal.bench.report.render", lambda doc, console: None)
    result = CliRunner().invoke(app, ["bench", "run", "--target", "peer=http://127.0.0.1:9@m",
                                      "--html", str(tmp_path / "report.html")])
    assert result.exit_code == 1
    assert "error: --html needs matplotlib: pip install 'lokal[bench]'" in result.stderr
    assert not (tmp_path / "report.html").exists()


def test_a_user_error_keeps_the_brackets_of_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOKAL_HOME", str(tmp_path / "home"))
    modelfile = tmp_path / "models[bench]" / "Modelfile"
    result = CliRunner().invoke(app, ["create", "mine", "-f", str(modelfile)])
    assert result.exit_code == 1
    assert f"error: {modelfile}: no such Modelfile" in result.stderr
