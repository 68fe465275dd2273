"""The CLI and the server against corrupt local files: one red line and exit 1, never a traceback;
a GGUF llama.cpp cannot load is refused at import (and named with its reason if one is already
stored); a broken keys.json fails closed."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from lokal.store.errors import InvalidGguf
from lokal.store.gguf_facts import read_gguf_facts
from lokal.store.manifest import Manifest
from lokal.store.model_store import ModelStore

MakeGguf = Callable[..., Path]


def lokal(home: Path, *args: str, cwd: Path | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lokal.cli.main", *args],
        env={**os.environ, "LOKAL_HOME": str(home), "COLUMNS": "200"},
        capture_output=True, text=True, timeout=timeout, cwd=cwd,
    )


def assert_one_error_line(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def set_u32(path: Path, key: str, value: int) -> Path:
    """Overwrite the UINT32 value of metadata ``key`` in a GGUF file (in place)."""
    with open(path, "r+b") as f:
        head = f.read(8 << 20)
        needle = struct.pack("<Q", len(key)) + key.encode()
        at = head.find(needle) + len(needle)
        assert at >= len(needle) and struct.unpack_from("<I", head, at)[0] == 4, key
        f.seek(at + 4)
        f.write(struct.pack("<I", value))
    return path


def set_architecture(path: Path, arch: str) -> Path:
    """Rename ``general.architecture`` in place (a name of the same length)."""
    with open(path, "r+b") as f:
        head = f.read(8 << 20)
        key = b"general.architecture"
        at = head.find(struct.pack("<Q", len(key)) + key) + 8 + len(key) + 4
        (length,) = struct.unpack_from("<Q", head, at)
        assert length == len(arch)
        f.seek(at + 8)
        f.write(arch.encode())
    return path


# -- item 10: corrupt local files --------------------------------------------------------------


def test_a_modelfile_that_is_not_utf8_is_one_error_line(tmp_path: Path, tiny_gguf: MakeGguf) -> None:
    tiny_gguf("base.gguf")
    modelfile = tmp_path / "Modelfile"
    modelfile.write_bytes(b"FROM ./base.gguf\nSYSTEM caf\xff\n")
    r = lokal(tmp_path / "home", "create", "mine", "-f", str(modelfile))
    assert_one_error_line(r, str(modelfile), "not a UTF-8 text file", "0xff", "line 2")
    assert ModelStore(tmp_path / "home").list() == []


@pytest.mark.parametrize("content", [b"{not json", b"", b"   \n", b"\xff\xfe", b"[]", b'{"keys": [{"name": 1}]}'])
def test_a_broken_keys_file_is_one_error_line_for_every_keys_command(tmp_path: Path, content: bytes) -> None:
    home = tmp_path / "home"
    home.mkdir()
    keys = home / "keys.json"
    keys.write_bytes(content)
    for args in (["keys", "list"], ["keys", "create", "ci"], ["keys", "revoke", "ci"]):
        r = lokal(home, *args)
        assert_one_error_line(r, str(keys))
        assert "auth is off" not in r.stdout
        assert keys.read_bytes() == content  # never overwritten: the user may still repair it


def test_a_keys_file_with_no_keys_left_still_means_auth_is_off(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert lokal(home, "keys", "create", "ci").returncode == 0
    assert lokal(home, "keys", "revoke", "ci").returncode == 0
    r = lokal(home, "keys", "list")
    assert r.returncode == 0 and "auth is off" in r.stdout


@pytest.fixture
def keyed_client(tmp_path: Path) -> Callable[[bytes | None], TestClient]:
    from lokal.app import create_app
    from lokal.config import Settings

    def make(content: bytes | None) -> TestClient:
        if content is not None:
            (tmp_path / "keys.json").write_bytes(content)
        return TestClient(create_app(Settings(home=tmp_path)))

    return make


@pytest.mark.parametrize("content", [b"{not json", b"", b'{"keys": "all"}'])
def test_the_server_fails_closed_on_a_broken_keys_file_and_health_still_answers(
    keyed_client: Callable[[bytes | None], TestClient], tmp_path: Path, content: bytes
) -> None:
    client = keyed_client(content)
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code in (200, 503)  # open: it answers about the model, not keys
    r = client.get("/v1/models")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "keys_unavailable" and "keys.json" in r.json()["error"]["message"]
    assert str(tmp_path) not in r.text  # clients are not told where the server's files are
    r = client.get("/api/tags", headers={"Authorization": "Bearer lokal-anything"})
    assert r.status_code == 503 and "keys.json" in r.json()["error"]
    (tmp_path / "keys.json").unlink()  # the operator deletes it: auth is off, on the next request
    assert client.get("/v1/models").status_code == 200


def test_a_keys_file_corrupted_under_a_running_server_fails_closed(
    keyed_client: Callable[[bytes | None], TestClient], tmp_path: Path
) -> None:
    from lokal.server.security.keys import KeyStore

    key = KeyStore(tmp_path).create("ci")
    client = keyed_client(None)
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    (tmp_path / "keys.json").write_bytes(b"")  # truncated by some other tool
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 503
    assert client.get("/v1/models").status_code == 503
    assert client.get("/health").status_code == 200


# -- item 6: GGUFs llama.cpp cannot load -------------------------------------------------------


def test_import_of_a_gguf_llama_cpp_cannot_load_is_one_error_line(tmp_path: Path, tiny_gguf: MakeGguf) -> None:
    bad = set_u32(tiny_gguf("heads.gguf"), "llama.attention.head_count", 0)
    r = lokal(tmp_path / "home", "import", str(bad), "--name", "bad")
    assert_one_error_line(r, str(bad), "cannot be loaded by llama.cpp", "llama.attention.head_count is 0")
    r = lokal(tmp_path / "home", "import", str(tiny_gguf("arch.gguf", arch="llamb")), "--name", "bad")
    assert_one_error_line(r, "unknown architecture 'llamb'")
    assert "bad" not in lokal(tmp_path / "home", "list").stdout


def stored_without_checks(store: ModelStore, path: Path, name: str) -> None:
    """What an older lokal did: store any well-formed GGUF under ``name``."""
    digest = store.add_blob(path)
    store.write_manifest(Manifest(name=name, digest=digest, size=path.stat().st_size, source=f"file:{path}",
                                  facts=read_gguf_facts(path)))


def test_a_stored_model_llama_cpp_cannot_load_is_named_with_the_reason_when_used(
    tmp_path: Path, tiny_gguf: MakeGguf
) -> None:
    from lokal.app import create_app
    from lokal.config import Settings

    store = ModelStore(tmp_path / "home")
    stored_without_checks(store, tiny_gguf(arch="llamb"), "old:latest")
    r = lokal(store.home, "run", "old", "hello")
    assert_one_error_line(r, "old:latest", "unknown architecture 'llamb'")

    client = TestClient(create_app(Settings(home=store.home)))
    r = client.post("/api/chat", json={"model": "old", "messages": [{"role": "user", "content": "hi"}],
                                       "stream": False})
    assert r.status_code == 422  # well formed, the model exists, but it cannot be served
    assert "old:latest" in r.json()["error"] and "unknown architecture 'llamb'" in r.json()["error"]
    r = client.post("/v1/chat/completions", json={"model": "old", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "model_load_failed"
    assert "unknown architecture 'llamb'" in r.json()["error"]["message"]


def test_ollama_create_from_an_uploaded_gguf_llama_cpp_cannot_load_is_refused(tmp_path: Path,
                                                                             tiny_gguf: MakeGguf) -> None:
    from lokal.app import create_app
    from lokal.config import Settings

    bad = set_u32(tiny_gguf("blocks.gguf"), "llama.block_count", 0)  # llama.cpp aborts on this one
    digest = ModelStore(tmp_path / "home").add_blob(bad)  # as POST /api/blobs/<digest> stores it
    client = TestClient(create_app(Settings(home=tmp_path / "home")))
    r = client.post("/api/create", json={"model": "bad", "files": {"model.gguf": digest}, "stream": False})
    assert r.status_code == 400 and "llama.block_count is 0" in r.json()["error"]
    assert client.get("/api/tags").json() == {"models": []}


@pytest.mark.slow
def test_real_model_variants_llama_cpp_refuses_are_refused_and_the_real_one_is_accepted(
    model_home: Path, tmp_path: Path
) -> None:
    """SmolLM2 with one hyperparameter broken: each variant is one llama.cpp refuses (zero layers
    even aborts it), and the store refuses each at import, naming what is wrong."""
    real = ModelStore(model_home).gguf_path("smollm2:135m")
    store = ModelStore(tmp_path / "home")
    variants: dict[str, Callable[[Path], Path]] = {
        "unknown architecture 'llamb'": lambda p: set_architecture(p, "llamb"),
        "llama.attention.head_count is 0": lambda p: set_u32(p, "llama.attention.head_count", 0),
        "llama.attention.head_count_kv is 0": lambda p: set_u32(p, "llama.attention.head_count_kv", 0),
        "llama.embedding_length is 0": lambda p: set_u32(p, "llama.embedding_length", 0),
        "llama.block_count is 0": lambda p: set_u32(p, "llama.block_count", 0),
    }
    for reason, breaks in variants.items():
        copy = tmp_path / "variant.gguf"
        shutil.copyfile(real, copy)
        with pytest.raises(InvalidGguf, match=reason):
            store.import_file(breaks(copy), "variant")
    assert store.list() == [] and not any(store.blobs_dir.iterdir())
    manifest = store.import_file(real, "real")
    with open(real, "rb") as f:
        assert manifest.digest == "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
    assert store.blob_path(manifest.digest).stat().st_ino != real.stat().st_ino


# -- item 7: the store owns its bytes ----------------------------------------------------------


def test_lokal_import_then_editing_or_truncating_the_file_leaves_the_model_whole(tmp_path: Path,
                                                                                tiny_gguf: MakeGguf) -> None:
    src = tiny_gguf()
    home = tmp_path / "home"
    assert lokal(home, "import", str(src), "--name", "mine").returncode == 0
    digest = ModelStore(home).get("mine").digest
    with open(src, "r+b") as f:
        f.seek(-16, os.SEEK_END)
        f.write(b"\0" * 16)
    assert "mine:latest" in lokal(home, "list").stdout
    os.truncate(src, 10)
    assert "mine:latest" in lokal(home, "list").stdout
    blob = ModelStore(home).blob_path(digest)
    assert "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest() == digest
