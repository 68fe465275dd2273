"""lokal serve's scale-out flags: a cluster that cannot be reached and a bad --autoscale are one
clear line and exit code 1, before anything starts."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lokal.cli.main import app


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once it is closed


def test_an_unreachable_ray_cluster_is_one_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOKAL_HOME", str(tmp_path))
    started = time.monotonic()
    result = CliRunner().invoke(app, ["serve", "--no-preload", "--ray", f"127.0.0.1:{_closed_port()}"])
    assert result.exit_code == 1
    assert "cannot reach the Ray cluster at 127.0.0.1:" in result.output
    assert "Traceback" not in result.output
    assert time.monotonic() - started < 15


def test_a_bad_autoscale_range_is_one_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOKAL_HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["serve", "--no-preload", "--autoscale", "3:1"])
    assert result.exit_code == 1
    assert "--autoscale takes MIN:MAX" in result.output
