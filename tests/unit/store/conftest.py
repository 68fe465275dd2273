"""The store tests' fixture: an empty store in the test's own folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from lokal.store.model_store import ModelStore


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "home")
