"""ADAPTER in a Modelfile: a LoRA adapter is checked against the base's weights, stored as a layer
of its own (the weights are not copied), and refused with one message, nothing written, when it
does not fit."""

from __future__ import annotations

from pathlib import Path

import pytest

from lokal.store.adapter import InvalidAdapter, check_adapter
from lokal.store.create import create_model
from lokal.store.errors import ModelNotFound
from lokal.store.model_store import ModelStore
from lokal.store.modelfile import AdapterRef, Modelfile, ModelfileError
from tests.integration.server.test_ollama_api import own_home
from tests.lora import AHOY_LORA, rewrite_adapter

BASE = "smollm2:135m"


@pytest.fixture
def smol_store(model_home: Path, tmp_path: Path) -> ModelStore:
    """A store of its own holding smollm2:135m (its blob linked, not copied)."""
    return ModelStore(own_home(model_home, tmp_path / "home"))


def contents(store: ModelStore) -> tuple[list[str], list[str]]:
    return sorted(m.name for m in store.list()), sorted(p.name for p in store.blobs_dir.iterdir())


def test_the_ahoy_adapter_fits_smollm2(smol_store: ModelStore) -> None:
    check_adapter(AHOY_LORA, smol_store.gguf_path(BASE), "ADAPTER ahoy.gguf")


def test_create_stores_the_adapter_as_a_layer_over_the_base_weights(smol_store: ModelStore) -> None:
    base = smol_store.get(BASE)
    made = create_model(smol_store, "smollm2:135m-ahoy",
                        Modelfile(from_=BASE, adapters=[AdapterRef(str(AHOY_LORA), 0.5)]))
    assert made.digest == base.digest and made.facts == base.facts  # the same weights, not a copy
    (layer,) = made.adapters
    assert layer.scale == 0.5 and layer.size == AHOY_LORA.stat().st_size
    assert smol_store.blob_path(layer.digest).read_bytes() == AHOY_LORA.read_bytes()
    assert len(list(smol_store.blobs_dir.iterdir())) == 2
    # a model made from it keeps its adapter; removing models removes only blobs nobody uses
    create_model(smol_store, "ahoy:brief", Modelfile(from_="smollm2:135m-ahoy", system="Be brief."))
    assert smol_store.get("ahoy:brief").adapters == made.adapters
    smol_store.delete("smollm2:135m-ahoy")
    assert smol_store.blob_path(layer.digest).is_file()
    smol_store.delete(BASE)
    assert smol_store.blob_path(base.digest).is_file()  # ahoy:brief still runs on it
    smol_store.delete("ahoy:brief")
    assert list(smol_store.blobs_dir.iterdir()) == []


def test_an_adapter_can_be_named_by_the_digest_of_an_uploaded_blob(smol_store: ModelStore) -> None:
    digest = smol_store.add_blob(AHOY_LORA)
    made = create_model(smol_store, "ahoy", Modelfile(from_=BASE, adapters=[AdapterRef(digest)]), allow_paths=False)
    assert [a.digest for a in made.adapters] == [digest]


def wrong_architecture(tmp: Path, store: ModelStore) -> str:
    return str(rewrite_adapter(tmp / "qwen.gguf", architecture="qwen2"))


def wrong_shape(tmp: Path, store: ModelStore) -> str:
    return str(rewrite_adapter(tmp / "narrow.gguf", width=512))


def not_an_adapter(tmp: Path, store: ModelStore) -> str:
    return str(store.gguf_path(BASE))  # a model, not an adapter


def missing(tmp: Path, store: ModelStore) -> str:
    return str(tmp / "nope.gguf")


def not_gguf(tmp: Path, store: ModelStore) -> str:
    path = tmp / "notes.gguf"
    path.write_text("not a model")
    return str(path)


def unknown_blob(tmp: Path, store: ModelStore) -> str:
    return "sha256:" + "e" * 64


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (wrong_architecture, InvalidAdapter, "a LoRA adapter for qwen2 models, but the base model is llama"),
        (wrong_shape, InvalidAdapter, "does not fit the base model: tensor blk.22.attn_q.weight is [576, 576] "
                                      "in the base model, its LoRA pair is [512, 8] and [8, 512]"),
        (not_an_adapter, InvalidAdapter, "not a LoRA adapter (the GGUF is a model"),
        (missing, ModelfileError, "no such file"),
        (not_gguf, InvalidAdapter, "not a GGUF file"),
        (unknown_blob, ModelNotFound, "no such blob in the store"),
    ],
)
def test_a_bad_adapter_is_one_clear_error_and_nothing_is_written(
    smol_store: ModelStore, tmp_path: Path, make, error: type[Exception], message: str
) -> None:
    before = contents(smol_store)
    source = make(tmp_path, smol_store)
    # the good adapter first: it must not be stored either when the second is refused
    modelfile = Modelfile(from_=BASE, adapters=[AdapterRef(str(AHOY_LORA)), AdapterRef(source)])
    with pytest.raises(error) as e:
        create_model(smol_store, "broken", modelfile)
    assert message in str(e.value) and f"ADAPTER {source}" in str(e.value)
    assert contents(smol_store) == before


def test_a_bad_adapter_over_a_gguf_file_leaves_no_imported_weights(smol_store: ModelStore, tmp_path: Path) -> None:
    before = contents(smol_store)
    modelfile = Modelfile(from_=str(smol_store.gguf_path(BASE).resolve()),
                          adapters=[AdapterRef(wrong_shape(tmp_path, smol_store))])
    with pytest.raises(InvalidAdapter):
        create_model(smol_store, "broken", modelfile)
    assert contents(smol_store) == before


def test_over_http_adapters_must_be_uploaded_blobs(smol_store: ModelStore) -> None:
    with pytest.raises(ModelfileError, match="file paths are not accepted here"):
        create_model(smol_store, "ahoy", Modelfile(from_=BASE, adapters=[AdapterRef(str(AHOY_LORA))]),
                     allow_paths=False)
