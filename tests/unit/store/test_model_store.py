"""ModelStore: layout, atomicity, verification, import, copy and delete."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from lokal.store.errors import DigestMismatch, InvalidGguf, InvalidModelName, ModelNotFound, StoreError
from lokal.store.gguf_facts import GgufFacts
from lokal.store.manifest import Manifest
from lokal.store.model_store import ModelStore

MakeGguf = Callable[..., Path]


def sha256_of(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def files_under(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def manifest_for(digest: str, size: int, name: str = "m:latest") -> Manifest:
    return Manifest(name=name, digest=digest, size=size, source="file:/x", facts=GgufFacts())


# -- import --------------------------------------------------------------------------------


def test_import_stores_blob_and_manifest_in_the_documented_layout(store: ModelStore, tiny_gguf: MakeGguf) -> None:
    src = tiny_gguf(seed=1)
    manifest = store.import_file(src, "tiny:q8")
    digest = sha256_of(src)
    assert manifest.name == "tiny:q8"
    assert manifest.digest == digest
    assert manifest.size == src.stat().st_size
    assert manifest.source == f"file:{src.resolve()}"
    assert manifest.facts.architecture == "llama" and manifest.facts.quantization == "Q8_0"
    assert manifest.license == "mit"
    assert manifest.modified_at.tzinfo is not None and manifest.modified_at.utcoffset() == timedelta(0)
    blob = store.home / "blobs" / f"sha256-{digest.split(':')[1]}"
    assert store.blob_path(digest) == blob == store.gguf_path("tiny:q8")
    assert blob.read_bytes() == src.read_bytes()
    on_disk = json.loads((store.home / "manifests" / "tiny" / "q8.json").read_text())
    assert on_disk["digest"] == digest and on_disk["schema_version"] == 1 and on_disk["format"] == "gguf"
    assert [m.name for m in store.list()] == ["tiny:q8"]
    assert store.get("tiny:q8") == manifest
    assert store.exists("tiny:q8") and not store.exists("tiny:other")
    assert files_under(store.tmp_dir) == []
    assert src.exists()  # the user's file is left alone


def test_import_copies_so_the_store_owns_its_bytes(store: ModelStore, tiny_gguf: MakeGguf) -> None:
    src = tiny_gguf()
    blob = store.blob_path(store.import_file(src, "tiny").digest)
    assert blob.stat().st_ino != src.stat().st_ino and blob.stat().st_nlink == 1


@pytest.mark.parametrize("content", [b"", b"not a gguf at all", b"GGUF\x03\x00\x00\x00" + b"\xff" * 100])
def test_import_refuses_garbage_before_storing_anything(store: ModelStore, tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    with pytest.raises(InvalidGguf, match="is not a valid GGUF file"):
        store.import_file(bad, "bad")
    assert files_under(store.home) == []
    assert store.list() == []


def test_import_refuses_a_truncated_gguf_before_storing_anything(
    store: ModelStore, tiny_gguf: MakeGguf, tmp_path: Path
) -> None:
    data = tiny_gguf().read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(InvalidGguf, match="past the end of the file"):
        store.import_file(cut, "cut")
    assert files_under(store.home) == []


def test_import_refuses_a_bad_name_before_reading_the_file(store: ModelStore, tiny_gguf: MakeGguf) -> None:
    with pytest.raises(InvalidModelName):
        store.import_file(tiny_gguf(), "../escape")
    assert files_under(store.home) == []


def test_reimporting_the_same_file_under_another_name_shares_the_blob(store: ModelStore, tiny_gguf: MakeGguf) -> None:
    src = tiny_gguf()
    a = store.import_file(src, "a")
    b = store.import_file(src, "b:v2")
    assert a.digest == b.digest
    assert len(files_under(store.blobs_dir)) == 1
    assert [m.name for m in store.list()] == ["a:latest", "b:v2"]


# -- blobs and manifests: atomicity --------------------------------------------------------


def test_add_blob_refuses_a_digest_mismatch_and_stores_nothing(store: ModelStore, tiny_gguf: MakeGguf) -> None:
    src = tiny_gguf()
    with pytest.raises(DigestMismatch, match="expected sha256:" + "0" * 64):
        store.add_blob(src, "sha256:" + "0" * 64)
    assert files_under(store.blobs_dir) == [] and files_under(store.tmp_dir) == []
    assert store.list() == []
    assert src.exists()


def test_add_blob_moves_the_stores_own_partial_files(store: ModelStore) -> None:
    store.tmp_dir.mkdir(parents=True)
    partial = store.tmp_dir / "download.partial"
    partial.write_bytes(b"weights")
    digest = store.add_blob(partial, "sha256:" + hashlib.sha256(b"weights").hexdigest())
    assert not partial.exists()
    assert store.blob_path(digest).read_bytes() == b"weights"


def test_add_blob_discards_a_partial_file_that_does_not_verify(store: ModelStore) -> None:
    store.tmp_dir.mkdir(parents=True)
    partial = store.tmp_dir / "download.partial"
    partial.write_bytes(b"corrupt")
    with pytest.raises(DigestMismatch):
        store.add_blob(partial, hashlib.sha256(b"weights").hexdigest())
    assert files_under(store.home) == []


def test_a_manifest_is_refused_until_its_blob_is_complete(store: ModelStore) -> None:
    digest = "sha256:" + hashlib.sha256(b"weights").hexdigest()
    with pytest.raises(StoreError, match="missing or incomplete"):
        store.write_manifest(manifest_for(digest, 7))
    store.tmp_dir.mkdir(parents=True)
    (store.tmp_dir / "w").write_bytes(b"weights")
    store.add_blob(store.tmp_dir / "w", digest)
    with pytest.raises(StoreError, match="missing or incomplete"):
        store.write_manifest(manifest_for(digest, 8))  # wrong size
    assert store.list() == []
    store.write_manifest(manifest_for(digest, 7))
    assert [m.name for m in store.list()] == ["m:latest"]


def test_write_manifest_leaves_no_temporary_files(store: ModelStore, tiny_gguf: MakeGguf) -> None:
    m = store.import_file(tiny_gguf(), "x")
    for _ in range(3):
        store.write_manifest(m)
    assert files_under(store.manifests_dir) == ["x/latest.json"]


def test_list_skips_corrupt_partial_and_blobless_manifests(store: ModelStore, tiny_gguf: MakeGguf) -> None:
    good = store.import_file(tiny_gguf(), "good")
    folder = store.manifests_dir / "junk"
    folder.mkdir(parents=True)
    (folder / "truncated.json").write_text('{"name": "junk:truncated", "dig')
    (folder / "binary.json").write_bytes(b"\xff\xfe\x00")
    (folder / "empty.json").write_text("")
    (folder / "wrong-schema.json").write_text(json.dumps({"name": "junk:wrong-schema", "schema_version": 99}))
    (folder / ".latest.json.abc.tmp").write_text("{")
    missing_blob = manifest_for("sha256:" + "1" * 64, 5, "junk:noblob").model_dump_json()
    (folder / "noblob.json").write_text(missing_blob)
    # a valid manifest copied by hand under another name is not trusted either
    (folder / "impostor.json").write_text(good.model_dump_json())
    assert [m.name for m in store.list()] == ["good:latest"]
    for tag in ("truncated", "binary", "empty", "wrong-schema", "noblob", "impostor"):
        with pytest.raises(ModelNotFound):
            store.get(f"junk:{tag}")


def test_a_truncated_blob_hides_its_model(store: ModelStore, tiny_gguf: MakeGguf) -> None:
    m = store.import_file(tiny_gguf(), "x")
    blob = store.blob_path(m.digest)
    os.unlink(blob)
    blob.write_bytes(b"GGUF")
    assert store.list() == []
    assert not store.exists("x")


def test_list_of_an_empty_or_missing_home_is_empty(tmp_path: Path) -> None:
    assert ModelStore(tmp_path / "does-not-exist").list() == []


# -- lookups -------------------------------------------------------------------------------


def test_get_of_a_missing_model_says_how_to_fix_it(store: ModelStore) -> None:
    with pytest.raises(ModelNotFound) as caught:
        store.get("foo")
    assert str(caught.value) == "model \"foo:latest\" not found; run 'lokal pull foo' or 'lokal list'"
    with pytest.raises(ModelNotFound, match="'lokal pull foo:7b'"):
        store.gguf_path("foo:7b")


def test_lookups_ignore_case_but_tags_keep_theirs_on_disk(store: ModelStore, tiny_gguf: MakeGguf) -> None:
    store.import_file(tiny_gguf(), "hf.co/Owner/Repo:Q4_K_M")
    assert (store.manifests_dir / "hf.co" / "owner" / "repo" / "Q4_K_M.json").is_file()
    for name in ("hf.co/owner/repo:Q4_K_M", "HF.CO/OWNER/REPO:q4_k_m", "hf.co/Owner/Repo:Q4_k_m"):
        assert store.get(name).name == "hf.co/owner/repo:Q4_K_M"


def test_blob_path_refuses_a_malformed_digest(store: ModelStore) -> None:
    with pytest.raises(StoreError, match="invalid digest"):
        store.blob_path("sha256:../../etc/passwd")


def test_manifest_name_must_be_valid(tiny_gguf: MakeGguf) -> None:
    with pytest.raises(ValueError, match="invalid model name"):
        manifest_for("sha256:" + "0" * 64, 1, name="../x")
    assert manifest_for("sha256:" + "0" * 64, 1, name="X").name == "x:latest"


# -- copy and delete -----------------------------------------------------------------------


def test_copy_makes_a_second_name_for_the_same_blob(store: ModelStore, tiny_gguf: MakeGguf) -> None:
    original = store.import_file(tiny_gguf(), "a:1")
    copied = store.copy("a:1", "b")
    assert copied.name == "b:latest" and copied.digest == original.digest
    assert copied.facts == original.facts and copied.source == original.source
    assert [m.name for m in store.list()] == ["a:1", "b:latest"]
    assert len(files_under(store.blobs_dir)) == 1


def test_copy_of_a_missing_model_is_refused(store: ModelStore) -> None:
    with pytest.raises(ModelNotFound):
        store.copy("nope", "b")


def test_delete_keeps_a_blob_shared_by_a_copy(store: ModelStore, tiny_gguf: MakeGguf) -> None:
    m = store.import_file(tiny_gguf(), "a")
    store.copy("a", "b")
    store.delete("a")
    assert [x.name for x in store.list()] == ["b:latest"]
    assert store.blob_path(m.digest).is_file()
    store.delete("b")
    assert store.list() == []
    assert files_under(store.blobs_dir) == []
    assert files_under(store.manifests_dir) == []


def test_delete_keeps_blobs_of_other_models(store: ModelStore, tiny_gguf: MakeGguf) -> None:
    a = store.import_file(tiny_gguf(seed=1), "a")
    b = store.import_file(tiny_gguf(seed=2), "b")
    store.delete("a")
    assert not store.blob_path(a.digest).exists()
    assert store.blob_path(b.digest).is_file() and store.exists("b")


def test_delete_removes_empty_name_folders_only(store: ModelStore, tiny_gguf: MakeGguf) -> None:
    src = tiny_gguf()
    store.import_file(src, "hf.co/o/r:Q8_0")
    store.import_file(src, "hf.co/o/r:F16")
    store.delete("hf.co/o/r:Q8_0")
    assert (store.manifests_dir / "hf.co" / "o" / "r").is_dir()
    store.delete("hf.co/o/r:F16")
    assert list(store.manifests_dir.iterdir()) == []


def test_delete_of_a_missing_model_raises_not_found(store: ModelStore) -> None:
    with pytest.raises(ModelNotFound):
        store.delete("nope")


def test_delete_removes_a_corrupt_manifest(store: ModelStore) -> None:
    path = store.manifest_path("broken")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    store.delete("broken")
    assert not path.exists()
