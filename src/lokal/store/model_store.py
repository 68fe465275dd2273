"""The model store: content-addressed blobs plus one JSON manifest per model name.

Layout under ``home``::

    blobs/sha256-<hex>               the GGUF weights, named by their digest
    manifests/<name>/<tag>.json      one per model name (Manifest)
    tmp/                             partial work: pulls, imports (same filesystem as blobs/)
    store.lock                       serialises manifest writes against deletes

A blob is renamed into ``blobs/`` only after its sha256 is verified, and a manifest is
written (atomically) only once its blob is there, so a crash at any moment leaves either no
model or a complete one.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import shutil
import uuid
from pathlib import Path

from pydantic import ValidationError

from lokal.store.atomic import atomic_write, fsync_dir, fsync_file
from lokal.store.digests import copy_and_hash, parse_digest, sha256_file
from lokal.store.errors import DigestMismatch, ModelNotFound, StoreError
from lokal.store.gguf_facts import read_gguf_facts
from lokal.store.lock import FileLock
from lokal.store.manifest import Manifest, utc_now
from lokal.store.names import DEFAULT_TAG, ModelName, parse_model_name
from lokal.store.progress import ProgressCallback, PullProgress

# os.link fails with these when a hard link is impossible; the file is copied instead.
_NO_LINK_ERRNOS = {errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP}


class ModelStore:
    """Models on disk under ``home`` (``$LOKAL_HOME``)."""

    def __init__(self, home: Path | str) -> None:
        self.home = Path(home).expanduser()
        self.blobs_dir = self.home / "blobs"
        self.manifests_dir = self.home / "manifests"
        self.tmp_dir = self.home / "tmp"

    def __repr__(self) -> str:
        return f"ModelStore({str(self.home)!r})"

    # -- reading ---------------------------------------------------------------------------

    def list(self) -> builtins.list[Manifest]:
        """Every complete model, sorted by name. Unreadable or blob-less manifests are skipped."""
        found = [m for m in self._read_all_manifests() if self._blob_is_complete(m)]
        return sorted(found, key=lambda m: m.name)

    def get(self, name: str | ModelName) -> Manifest:
        """The manifest of ``name``; raises :class:`ModelNotFound` unless it is complete."""
        model = _as_name(name)
        path = self._find_manifest_path(model)
        manifest = self._read_manifest(path) if path else None
        if manifest is None or not self._blob_is_complete(manifest):
            raise ModelNotFound(_not_found_message(model))
        return manifest

    def exists(self, name: str | ModelName) -> bool:
        """Whether ``name`` is in the store, complete."""
        try:
            self.get(name)
        except ModelNotFound:
            return False
        return True

    def blob_path(self, digest: str) -> Path:
        """Where the blob of ``digest`` lives (whether or not it exists)."""
        return self.blobs_dir / parse_digest(digest).replace(":", "-")

    def gguf_path(self, name: str | ModelName) -> Path:
        """The GGUF file of model ``name``, ready for llama.cpp to open."""
        return self.blob_path(self.get(name).digest)

    def manifest_path(self, name: str | ModelName) -> Path:
        """Where the manifest of ``name`` is written."""
        model = _as_name(name)
        return self.manifests_dir.joinpath(*model.name.split("/"), f"{model.tag}.json")

    def pull_dir(self, name: str | ModelName) -> Path:
        """A folder under ``tmp/`` for a pull of ``name`` to keep its partial work in."""
        safe = str(_as_name(name)).replace("/", "_").replace(":", "-")
        return self.tmp_dir / f"pull-{safe}"

    def pull_lock(self, name: str | ModelName, report: ProgressCallback) -> FileLock:
        """Take the lock of one model's pull (another pull of it is waited for, and said so)."""
        work = self.pull_dir(name)
        lock = FileLock(work.with_name(work.name + ".lock"))
        if not lock.acquire(blocking=False):
            report(PullProgress(f"waiting for another pull of {_as_name(name)}"))
            lock.acquire()
        return lock

    def finish_pull(self, manifest: Manifest, work: Path, report: ProgressCallback) -> Manifest:
        """Publish a pulled model's manifest (its blob is already verified) and drop partial work."""
        self.write_manifest(manifest)
        shutil.rmtree(work, ignore_errors=True)
        report(PullProgress("success"))
        return manifest

    def lock(self) -> FileLock:
        """The store-wide lock: held while a manifest is written or a model deleted."""
        return FileLock(self.home / "store.lock")

    # -- writing ---------------------------------------------------------------------------

    def add_blob(self, src: Path | str, expected_digest: str | None = None) -> str:
        """Store the file ``src`` as a blob and return its digest (``sha256:<hex>``).

        A file inside ``tmp/`` is the store's own partial work and is moved; any other file is
        left in place and hard-linked (same filesystem) or copied. The content is hashed
        before it appears in ``blobs/``; on a mismatch with ``expected_digest`` nothing is
        stored and :class:`DigestMismatch` is raised.
        """
        src = Path(src)
        expected = parse_digest(expected_digest) if expected_digest else None
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        owned = src.resolve().is_relative_to(self.tmp_dir.resolve())
        staged = src if owned else self.tmp_dir / f"blob-{uuid.uuid4().hex}.partial"
        try:
            if owned:
                digest = sha256_file(staged)
            else:
                digest = self._link_or_copy(src, staged)
            if expected and digest != expected:
                raise DigestMismatch(f"{src} has digest {digest}, expected {expected}")
            dst = self.blob_path(digest)
            if dst.is_file() and dst.stat().st_size == staged.stat().st_size:
                staged.unlink()  # already stored (blobs only ever appear verified)
            else:
                fsync_file(staged)
                os.replace(staged, dst)
                fsync_dir(self.blobs_dir)
            return digest
        except BaseException:
            staged.unlink(missing_ok=True)
            raise

    def write_manifest(self, manifest: Manifest) -> None:
        """Write ``manifest`` atomically. Its blob must already be stored, complete."""
        path = self.manifest_path(manifest.name)
        with self.lock():
            # Checked under the lock: a concurrent delete may have just collected the blob.
            if not self._blob_is_complete(manifest):
                raise StoreError(
                    f"cannot write the manifest of {manifest.name}: blob {manifest.digest} is missing or incomplete"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, manifest.model_dump_json(indent=2).encode() + b"\n")

    def delete(self, name: str | ModelName) -> None:
        """Remove model ``name``; its blob goes too unless another manifest still uses it."""
        model = _as_name(name)
        with self.lock():
            path = self._find_manifest_path(model)
            if path is None:
                raise ModelNotFound(_not_found_message(model))
            manifest = self._read_manifest(path)
            path.unlink()
            fsync_dir(path.parent)
            self._remove_empty_parents(path.parent)
            if manifest is None:
                return
            if all(m.digest != manifest.digest for m in self._read_all_manifests()):
                self.blob_path(manifest.digest).unlink(missing_ok=True)

    def copy(self, src: str | ModelName, dst: str | ModelName) -> Manifest:
        """Make ``dst`` a second name for model ``src`` (same blob); returns the new manifest."""
        source = self.get(src)
        copied = source.model_copy(update={"name": str(_as_name(dst)), "modified_at": utc_now()})
        self.write_manifest(copied)
        return copied

    def import_file(self, path: Path | str, name: str | ModelName) -> Manifest:
        """Add the local GGUF file ``path`` as model ``name``.

        The file is validated (:class:`InvalidGguf`) before anything is stored, then
        hard-linked into ``blobs/`` when on the same filesystem, else copied while hashed.
        """
        model = _as_name(name)
        path = Path(path).expanduser().resolve()
        facts = read_gguf_facts(path)
        digest = self.add_blob(path)
        manifest = Manifest(
            name=str(model),
            digest=digest,
            size=self.blob_path(digest).stat().st_size,
            source=f"file:{path}",
            facts=facts,
            license=facts.license,
        )
        self.write_manifest(manifest)
        return manifest

    # -- internals -------------------------------------------------------------------------

    def _link_or_copy(self, src: Path, staged: Path) -> str:
        try:
            os.link(src, staged)
        except OSError as e:
            if e.errno not in _NO_LINK_ERRNOS:
                raise
            return copy_and_hash(src, staged)
        return sha256_file(staged)

    def _blob_is_complete(self, manifest: Manifest) -> bool:
        try:
            return self.blob_path(manifest.digest).stat().st_size == manifest.size
        except OSError:
            return False

    def _find_manifest_path(self, model: ModelName) -> Path | None:
        path = self.manifest_path(model)
        if path.is_file():
            return path
        # Tags keep their case on disk but, as in Ollama, lookups ignore it.
        try:
            candidates = sorted(path.parent.glob("*.json"))
        except OSError:
            return None
        for candidate in candidates:
            if candidate.stem.lower() == model.tag.lower() and candidate.is_file():
                return candidate
        return None

    def _read_manifest(self, path: Path) -> Manifest | None:
        try:
            manifest = Manifest.model_validate(json.loads(path.read_bytes()))
        except (OSError, ValueError, ValidationError):
            return None
        # A manifest copied by hand to another path is not trusted to name itself.
        if self.manifest_path(manifest.name) != path:
            return None
        return manifest

    def _read_all_manifests(self) -> builtins.list[Manifest]:
        if not self.manifests_dir.is_dir():
            return []
        manifests = []
        for path in self.manifests_dir.rglob("*.json"):
            if path.name.startswith("."):
                continue
            manifest = self._read_manifest(path)
            if manifest is not None:
                manifests.append(manifest)
        return manifests

    def _remove_empty_parents(self, folder: Path) -> None:
        while folder != self.manifests_dir and folder.is_relative_to(self.manifests_dir):
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent


def _as_name(name: str | ModelName) -> ModelName:
    return name if isinstance(name, ModelName) else parse_model_name(name)


def _not_found_message(model: ModelName) -> str:
    short = model.name if model.tag == DEFAULT_TAG else str(model)
    return f"model \"{model}\" not found; run 'lokal pull {short}' or 'lokal list'"
