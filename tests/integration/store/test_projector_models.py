"""A chat model's vision projector in the store: a second FROM in its Modelfile (Ollama's way),
kept as a blob while any model uses it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lokal.store.create import create_model
from lokal.store.model_store import ModelStore
from lokal.store.modelfile import ModelfileError, parse_modelfile, render_modelfile
from tests.conftest import link_model
from tests.projector import write_test_projector


@pytest.fixture
def store(model_home: Path, tmp_path: Path) -> ModelStore:
    """A store holding smollm2:135m (its blob hard-linked from the test home)."""
    link_model(model_home, tmp_path / "home", "smollm2:135m")
    return ModelStore(tmp_path / "home")


def test_a_second_from_attaches_the_projector_and_show_writes_it_back(store: ModelStore, tmp_path: Path) -> None:
    projector = write_test_projector(tmp_path / "mmproj.gguf")
    made = create_model(store, "see:1", parse_modelfile(f"FROM smollm2:135m\nFROM {projector}\n"))
    assert made.projector is not None and store.blob_path(made.projector).is_file()
    assert made.digest == store.get("smollm2:135m").digest and made.kind == "chat"
    again = parse_modelfile(render_modelfile(made))
    assert again.projector == made.projector
    # a model built on it inherits the projector
    assert create_model(store, "see:2", parse_modelfile("FROM see:1\nSYSTEM be brief\n")).projector == made.projector
    shown = subprocess.run([sys.executable, "-m", "lokal.cli.main", "show", "see:1"], capture_output=True,
                           text=True, env={**os.environ, "LOKAL_HOME": str(store.home), "COLUMNS": "200"}, timeout=60)
    assert "vision projector" in shown.stdout and made.projector in shown.stdout


def test_the_projector_blob_stays_while_a_model_uses_it(store: ModelStore, tmp_path: Path) -> None:
    projector = write_test_projector(tmp_path / "mmproj.gguf")
    a = create_model(store, "see:a", parse_modelfile(f"FROM smollm2:135m\nFROM {projector}\n"))
    create_model(store, "see:b", parse_modelfile(f"FROM smollm2:135m\nFROM {a.projector}\n"))
    assert a.projector is not None
    store.delete("see:a")
    assert store.blob_path(a.projector).is_file()
    store.delete("see:b")
    assert not store.blob_path(a.projector).exists()
    assert store.blob_path(a.digest).is_file()  # smollm2:135m still uses its weights


def test_a_second_from_that_is_not_a_projector_is_refused(store: ModelStore, tmp_path: Path) -> None:
    weights = store.blob_path(store.get("smollm2:135m").digest)
    with pytest.raises(ModelfileError, match="a second FROM must be a vision projector"):
        create_model(store, "bad:1", parse_modelfile(f"FROM smollm2:135m\nFROM {weights}\n"))
    with pytest.raises(ModelfileError, match="a second FROM must be a vision projector, not a chat model"):
        create_model(store, "bad:2", parse_modelfile("FROM smollm2:135m\nFROM smollm2:135m\n"))
    with pytest.raises(ModelfileError, match="no such file"):
        create_model(store, "bad:3", parse_modelfile(f"FROM smollm2:135m\nFROM {tmp_path / 'none.gguf'}\n"))
    with pytest.raises(ModelfileError, match="file paths are not accepted"):
        create_model(store, "bad:4", parse_modelfile(f"FROM smollm2:135m\nFROM {tmp_path / 'x.gguf'}\n"),
                     allow_paths=False)
    assert not any(m.name.startswith("bad") for m in store.list())
