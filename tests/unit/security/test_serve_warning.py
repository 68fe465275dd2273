"""`lokal serve` warns loudly when it listens beyond loopback with no API key."""

from __future__ import annotations

from pathlib import Path

import pytest

from lokal.cli.main import _warn_if_open
from lokal.config import Settings
from lokal.server.security.keys import KeyStore


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::", "my-host.example"])
def test_a_public_bind_without_keys_prints_a_warning(host: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _warn_if_open(Settings(home=tmp_path, host=host))
    assert "WARNING" in capsys.readouterr().err


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_needs_no_warning(host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _warn_if_open(Settings(home=tmp_path, host=host))
    assert capsys.readouterr().err == ""


def test_a_public_bind_with_a_key_needs_no_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    KeyStore(tmp_path).create("ops")
    _warn_if_open(Settings(home=tmp_path, host="0.0.0.0"))
    assert capsys.readouterr().err == ""
