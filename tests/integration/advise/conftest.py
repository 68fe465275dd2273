"""The bundled models for the advise tests: the shared test home with gemma3:270m pulled too."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def bundled_home(model_home: Path) -> Path:
    """``model_home`` (smollm2:135m) with ``gemma3:270m`` pulled too (once per machine)."""
    from lokal.store.model_store import ModelStore
    from lokal.store.pull import pull_model

    pull_model(ModelStore(model_home), "gemma3:270m")
    return model_home


def blob_path(home: Path, name: str) -> Path:
    """The GGUF file of a stored model."""
    from lokal.store.model_store import ModelStore

    store = ModelStore(home)
    return store.blob_path(store.get(name).digest)
