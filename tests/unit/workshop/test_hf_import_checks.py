"""import_hf_folder's refusals, each before the converter runs (so without it installed): one clear
error, and the store as empty as before; generation_config.json's defaults as Modelfile
parameters; a missing converter named with its install command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lokal.config import Settings
from lokal.store.errors import InvalidModelName
from lokal.store.model_store import ModelStore
from lokal.store.sources import hf as hf_source
from lokal.workshop.converter import ConverterMissing, converter_folder
from lokal.workshop.hf_import import HfImportError, generation_parameters, import_hf_folder
from lokal.workshop.quantize import QuantizeError
from tests.conftest import write_safetensors


def hf_folder(folder: Path, architectures: list[str] | None = None) -> Path:
    """A folder shaped like a Hugging Face model (config, safetensors, tokenizer)."""
    folder.mkdir()
    config = {"architectures": architectures or ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8}
    (folder / "config.json").write_text(json.dumps(config))
    write_safetensors(folder / "model.safetensors", {"model.embed_tokens.weight": np.zeros((16, 8))})
    (folder / "tokenizer.json").write_text("{}")
    return folder


def assert_store_is_empty(store: ModelStore) -> None:
    """No manifest, no blob, and nothing left behind in tmp/."""
    for folder in (store.manifests_dir, store.blobs_dir, store.tmp_dir):
        assert not folder.exists() or not any(folder.rglob("*")), f"{folder} is not empty"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


@pytest.fixture
def store(settings: Settings) -> ModelStore:
    return ModelStore(settings.home)


def refused(store: ModelStore, settings: Settings, folder: Path, **options: str) -> str:
    with pytest.raises(HfImportError) as caught:
        import_hf_folder(store, folder, "imported", settings, **options)  # type: ignore[arg-type]
    assert_store_is_empty(store)
    return str(caught.value)


def test_a_folder_without_config_json_is_not_a_hugging_face_model(
    store: ModelStore, settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("hello")
    assert refused(store, settings, folder) == f"{folder} is not a Hugging Face model folder: it has no config.json"


def test_a_path_that_is_not_a_folder_is_refused(store: ModelStore, settings: Settings, tmp_path: Path) -> None:
    assert refused(store, settings, tmp_path / "missing") == f"{tmp_path / 'missing'}: no such folder"


def test_a_config_naming_no_architecture_is_refused(store: ModelStore, settings: Settings, tmp_path: Path) -> None:
    folder = hf_folder(tmp_path / "model")
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert "names no model architecture" in refused(store, settings, folder)
    (folder / "config.json").write_text("{not json")
    assert "config.json is not readable JSON" in refused(store, settings, folder)


def test_pickle_only_weights_are_refused_as_code(store: ModelStore, settings: Settings, tmp_path: Path) -> None:
    folder = hf_folder(tmp_path / "model")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"PK\x03\x04 a pickle")
    message = refused(store, settings, folder)
    assert "only PyTorch pickle weights (pytorch_model.bin)" in message and "safetensors only" in message


def test_a_folder_without_a_tokenizer_is_refused(store: ModelStore, settings: Settings, tmp_path: Path) -> None:
    folder = hf_folder(tmp_path / "model")
    (folder / "tokenizer.json").unlink()
    assert "has no tokenizer (tokenizer.json, tokenizer.model" in refused(store, settings, folder)


def test_a_shard_missing_from_the_index_is_refused(store: ModelStore, settings: Settings, tmp_path: Path) -> None:
    folder = hf_folder(tmp_path / "model")
    weight_map = {"a": "model.safetensors", "b": "model-00002-of-00002.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert "lacks weight files its index lists: model-00002-of-00002.safetensors" in refused(store, settings, folder)


def test_an_unknown_output_type_and_a_bad_name_are_refused(
    store: ModelStore, settings: Settings, tmp_path: Path
) -> None:
    folder = hf_folder(tmp_path / "model")
    with pytest.raises(QuantizeError, match='^unknown quantization type "Q9_9"; choose one of F32, F16, BF16, Q8_0'):
        import_hf_folder(store, folder, "imported", settings, out_type="Q9_9")
    with pytest.raises(InvalidModelName):
        import_hf_folder(store, folder, "../escape", settings)
    assert_store_is_empty(store)


def test_not_enough_disk_is_refused_before_converting(
    store: ModelStore, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = hf_folder(tmp_path / "model")
    monkeypatch.setattr(hf_source, "disk_free", lambda _path: 4096)
    message = refused(store, settings, folder)
    assert message.startswith(f"not enough disk space to convert {folder}: about ") and "4096 bytes free" in message


def test_a_missing_converter_names_the_install_command(store: ModelStore, tmp_path: Path) -> None:
    settings = Settings(home=store.home, converter_cache=tmp_path / "no-converters")
    with pytest.raises(ConverterMissing) as caught:
        import_hf_folder(store, hf_folder(tmp_path / "model"), "imported", settings)
    assert str(converter_folder(settings)) in str(caught.value)
    assert "install it with: LOKAL_EXTRAS=convert scripts/install.sh" in str(caught.value)
    assert_store_is_empty(store)


def test_sampling_defaults_become_modelfile_parameters_when_the_model_samples(tmp_path: Path) -> None:
    (tmp_path / "generation_config.json").write_text(json.dumps({
        "do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05,
        "max_new_tokens": 2048, "eos_token_id": [1, 2], "transformers_version": "4.45.0",
    }))
    parameters, notes = generation_parameters(tmp_path)
    assert parameters == {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repeat_penalty": 1.05}
    assert notes == ["generation_config.json: max_new_tokens not carried over (no Modelfile parameter)"]


def test_sampling_defaults_of_a_greedy_model_are_not_carried_over(tmp_path: Path) -> None:
    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": 0.6, "top_p": 0.9}))
    parameters, notes = generation_parameters(tmp_path)
    assert parameters == {}
    assert notes == ["generation_config.json: temperature, top_p not carried over, as do_sample is not true there "
                     "(transformers decodes greedily)"]


def test_a_sampling_default_out_of_range_is_a_note_not_a_parameter(tmp_path: Path) -> None:
    (tmp_path / "generation_config.json").write_text(json.dumps({"do_sample": True, "temperature": -1, "top_k": 5}))
    parameters, notes = generation_parameters(tmp_path)
    assert parameters == {"top_k": 5}
    assert len(notes) == 1 and notes[0].startswith("generation_config.json: temperature -1 not carried over (")
    assert generation_parameters(tmp_path / "nowhere") == ({}, [])
