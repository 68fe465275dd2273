"""A request a model's kind cannot serve is refused before the model loads (WrongModelKind)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from lokal.config import Settings
from lokal.runtime import errors
from lokal.runtime.request import GenerateRequest
from lokal.runtime.runtime import Runtime
from lokal.store.model_store import ModelStore


def _runtime(home: Path, tiny: Path, kind: str) -> Runtime:
    store = ModelStore(home)
    manifest = store.import_file(tiny, "tiny:1")
    store.write_manifest(manifest.model_copy(update={"kind": kind}))
    return Runtime(Settings(home=home, threads=1), store)


def test_a_reranker_neither_embeds_nor_generates_and_nothing_loads(
        tmp_path: Path, tiny_gguf: Callable[..., Path]) -> None:
    runtime = _runtime(tmp_path / "home", tiny_gguf(), "reranker")

    async def attempts() -> None:
        with pytest.raises(errors.WrongModelKind, match="is a reranker model and cannot embed text"):
            await runtime.embed("tiny:1", ["hello"])
        with pytest.raises(errors.WrongModelKind, match="cannot generate text; use a chat model") as info:
            await runtime.generate(GenerateRequest(model="tiny:1", messages=[{"role": "user", "content": "hi"}]))
        assert info.value.param == "model" and info.value.code == "model_kind_mismatch"
        assert runtime.loaded() == []

    asyncio.run(attempts())


def test_an_embedding_model_loads_with_one_slot_of_its_trained_context(
        tmp_path: Path, tiny_gguf: Callable[..., Path]) -> None:
    runtime = _runtime(tmp_path / "home", tiny_gguf(), "embedding")
    shape = runtime.load_shape(runtime.store.get("tiny:1"))
    assert (shape.n_slots, shape.slot_ctx) == (1, 256)  # the tiny GGUF's context_length
