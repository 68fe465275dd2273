"""Live servers of their own for the production features: keys in their own LOKAL_HOME."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import LiveServer
from tests.integration.server.test_ollama_api import own_home

MODEL = "smollm2:135m"
RATE_RPM = 20


def lokal_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the `lokal` CLI with LOKAL_HOME=home."""
    return subprocess.run([sys.executable, "-m", "lokal.cli.main", *args], env={**os.environ, "LOKAL_HOME": str(home)},
                          capture_output=True, text=True, timeout=60)


class SecuredServer(LiveServer):
    """A LiveServer whose home has API keys created through `lokal keys create`."""

    def __init__(self, home: Path, keys: dict[str, str], *args: str, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.keys = keys
        super().__init__(home, *args, env=env)


@pytest.fixture(scope="session")
def secured(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredServer]:
    """smollm2 behind keys (alice, burst, doomed, watcher), RATE_RPM requests per minute per key."""
    home = own_home(model_home, tmp_path_factory.mktemp("secured-home"))
    keys = {}
    for name in ("alice", "burst", "doomed", "watcher"):
        done = lokal_cli(home, "keys", "create", name)
        assert done.returncode == 0, done.stderr
        keys[name] = done.stdout.strip()
    live = SecuredServer(home, keys, "--model", MODEL, "--parallel", "2", "--ctx-size", "512", "--keep-alive", "-1",
                         env={"LOKAL_RATE_RPM": str(RATE_RPM)})
    yield live
    live.stop()
