"""Fixtures of the engine's unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lokal.engine.llama_model import ContextShape, LlamaModel
from lokal.store.model_store import ModelStore


@pytest.fixture(scope="module")
def llama(model_home: Path) -> Iterator[LlamaModel]:
    """smollm2:135m loaded with one small slot, for grammar and sampler checks."""
    m = LlamaModel(ModelStore(model_home).gguf_path("smollm2:135m"),
                   ContextShape(slot_ctx=64, n_slots=1, n_batch=64, n_threads=1))
    yield m
    m.close()
