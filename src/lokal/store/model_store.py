"""The model store: content-addressed blobs plus one JSON manifest per model name.

Layout under ``home``::

    blobs/sha256-<hex>               the GGUF weights, named by their digest
    manifests/<name>/<tag>.json      one per model name (Manifest)
    tmp/                             partial work: pulls, imports (same filesystem as blobs/)
    store.lock                       serialises manifest writes against deletes

A blob is renamed into ``blobs/`` only after its sha256 is verified, and a manifest is
written (atomically) only once its blob is there, so a crash at any moment leaves either no
model or a complete one. The store owns its bytes: a file from outside is copied (reflinked where
the filesystem can), never hard-linked, so editing or truncating the original changes nothing.

Work in ``tmp/`` is always held under a ``flock`` by the process doing it (a pull's
``pull-<name>.lock``, each import's ``blob-<uuid>.partial`` itself), so what a killed process left
is told from live work by trying its lock: opening the store removes it (:meth:`clean_tmp`),
keeping only what a later pull resumes (finished wheels, partial hf.co downloads).
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from lokal.store.archive import unpacked_folder
from lokal.store.atomic import atomic_write, fsync_dir, fsync_file
from lokal.store.digests import copy_and_hash, parse_digest, sha256_file
from lokal.store.errors import DigestMismatch, ModelNotFound, StoreError
from lokal.store.gguf_facts import GgufFacts
from lokal.store.loadable import check_loadable, read_loadable_gguf_facts
from lokal.store.lock import FileLock, lock_fd, remove_if_unlocked
from lokal.store.manifest import Manifest, utc_now
from lokal.store.names import DEFAULT_TAG, ModelName, parse_model_name
from lokal.store.progress import ProgressCallback, PullProgress

T = TypeVar("T")

# In a pull's folder: what the next pull of that model resumes (finished wheels of a catalog
# pull, hf.co downloads resumed with a Range request). Everything else there is redone anyway.
RESUMABLE_PULL_WORK = ("wheels", "files")
# Partial files whose writer holds no lock (the server's blob uploads): removed once untouched
# for this long (a live upload writes as its bytes arrive).
UNLOCKED_PARTIAL_MAX_AGE_S = 3600.0


class ModelStore:
    """Models on disk under ``home`` (``$LOKAL_HOME``)."""

    def __init__(self, home: Path | str, *, clean: bool = True) -> None:
        self.home = Path(home).expanduser()
        self.blobs_dir = self.home / "blobs"
        self.manifests_dir = self.home / "manifests"
        self.tmp_dir = self.home / "tmp"
        if clean:
            self.clean_tmp()

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
        """The GGUF file of model ``name``, ready for llama.cpp to open.

        Raises :class:`UnloadableGguf` (an :class:`InvalidGguf`) naming the model and the reason
        when its facts say llama.cpp cannot load it (a model stored before lokal checked that).
        """
        manifest = self.get(name)
        check_loadable(manifest.facts, f'model "{manifest.name}"')
        return self.blob_path(manifest.digest)

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
        copied (reflinked where the filesystem can), hashed as it is copied, so the store never
        shares bytes with a file someone else may change. The content is verified before it
        appears in ``blobs/``; on a mismatch with ``expected_digest`` nothing is stored and
        :class:`DigestMismatch` is raised.
        """
        return self._store_blob(Path(src), expected_digest, None)[0]

    def add_gguf(self, src: Path | str, expected_digest: str | None = None) -> tuple[str, GgufFacts]:
        """:meth:`add_blob` for a GGUF model file, returning its digest and facts.

        The facts are read from the store's own copy, and it must be a GGUF file llama.cpp can
        load (:func:`read_loadable_gguf_facts`) before it becomes a blob: :class:`InvalidGguf`, or
        its subclass :class:`UnloadableGguf`, otherwise, with nothing stored.
        """
        digest, facts = self._store_blob(Path(src), expected_digest, read_loadable_gguf_facts)
        assert facts is not None
        return digest, facts

    @contextlib.contextmanager
    def partial_file(self, prefix: str = "blob") -> Iterator[tuple[Path, io.BufferedRandom]]:
        """A new, empty ``tmp/<prefix>-<uuid>.partial`` open for writing, held under a ``flock`` until
        the block ends (so :meth:`clean_tmp` in another process leaves it alone), then closed and,
        unless it was renamed away, deleted."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        while True:
            path = self.tmp_dir / f"{prefix}-{uuid.uuid4().hex}.partial"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            if lock_fd(fd, path):
                break
            os.close(fd)  # a clean-up removed it between its creation and our lock: take another
        with os.fdopen(fd, "r+b") as file:
            try:
                yield path, file
            finally:
                path.unlink(missing_ok=True)  # still held: nobody can take this name meanwhile

    def _store_blob(
        self, src: Path, expected_digest: str | None, check: Callable[[Path], T] | None
    ) -> tuple[str, T | None]:
        expected = parse_digest(expected_digest) if expected_digest else None
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        if src.resolve().is_relative_to(self.tmp_dir.resolve()):  # our own work: move it
            try:
                return self._commit(src, sha256_file(src), expected, check, fsync=True)
            except BaseException:
                src.unlink(missing_ok=True)
                raise
        if check is not None:
            check(src)  # refuse a bad file before copying gigabytes of it (the copy is checked again)
        with self.partial_file() as (staged, out):
            digest = copy_and_hash(src, out)
            return self._commit(staged, digest, expected, check, fsync=False)

    def _commit(
        self, staged: Path, digest: str, expected: str | None, check: Callable[[Path], T] | None, fsync: bool
    ) -> tuple[str, T | None]:
        """Verify the file ``staged`` (digest ``digest``) and rename it into ``blobs/``. A blob of
        that digest already there is replaced: the rename is atomic, and it repairs a blob that
        was changed behind the store's back."""
        if expected and digest != expected:
            raise DigestMismatch(f"{staged} has digest {digest}, expected {expected}")
        result = check(staged) if check is not None else None
        if fsync:
            fsync_file(staged)
        os.replace(staged, self.blob_path(digest))
        fsync_dir(self.blobs_dir)
        return digest, result

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
        """Remove model ``name``; its blobs (weights, adapters, projector) go too unless another
        manifest still uses them."""
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
            still_used: set[str] = set()
            for other in self._read_all_manifests():
                still_used |= other.blobs
            for digest in manifest.blobs - still_used:
                self.blob_path(digest).unlink(missing_ok=True)
                shutil.rmtree(unpacked_folder(self.home, digest), ignore_errors=True)  # a folder model's

    def copy(self, src: str | ModelName, dst: str | ModelName) -> Manifest:
        """Make ``dst`` a second name for model ``src`` (same blob); returns the new manifest."""
        source = self.get(src)
        copied = source.model_copy(update={"name": str(_as_name(dst)), "modified_at": utc_now()})
        self.write_manifest(copied)
        return copied

    def import_file(
        self,
        path: Path | str,
        name: str | ModelName,
        *,
        source: str | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> Manifest:
        """Add the local GGUF file ``path`` as model ``name``.

        The file must be a GGUF llama.cpp can load (:class:`InvalidGguf` / :class:`UnloadableGguf`
        otherwise, with nothing stored). It is copied into ``blobs/`` (reflinked where the
        filesystem can), so the model no longer depends on the original: editing, truncating or
        deleting it later changes nothing in the store; a file the store wrote in ``tmp/`` (a
        conversion) is moved. ``source`` (default ``file:<path>``) and ``parameters`` (Modelfile
        defaults) go into the manifest.
        """
        model = _as_name(name)
        path = Path(path).expanduser().resolve()
        digest, facts = self.add_gguf(path)
        manifest = Manifest(
            name=str(model),
            digest=digest,
            size=self.blob_path(digest).stat().st_size,
            source=source or f"file:{path}",
            facts=facts,
            parameters=parameters or {},
            license=facts.license,
        )
        self.write_manifest(manifest)
        return manifest

    def clean_tmp(self) -> builtins.list[Path]:
        """Remove what killed processes left in ``tmp/`` and return the paths removed.

        Only work whose lock no live process holds is touched: an import's partial copy, a pull's
        scratch files (pip's staging folder, a half-joined GGUF) and its lock file, and the
        server's blob uploads untouched for an hour. What a later pull resumes is kept: finished
        wheels and partial hf.co downloads. Called when the store is opened; never raises.
        """
        removed: builtins.list[Path] = []
        try:
            entries = sorted(self.tmp_dir.iterdir())
        except OSError:
            return removed
        for entry in entries:
            try:
                self._clean_entry(entry, removed)
            except OSError:
                continue  # a file that vanished or cannot be touched: the next open tries again
        return removed

    def _clean_entry(self, entry: Path, removed: builtins.list[Path]) -> None:
        name = entry.name
        if name.startswith("pull-") and entry.is_dir() and not entry.is_symlink():
            lock = FileLock(entry.with_name(name + ".lock"))
            if not lock.acquire(blocking=False):
                return  # a pull of this model is running (or its pip child still is)
            try:
                for part in sorted(entry.iterdir()):
                    if part.name not in RESUMABLE_PULL_WORK:
                        _remove(part)
                        removed.append(part)
                if _is_empty_tree(entry):
                    shutil.rmtree(entry)
                    removed.append(entry)
            finally:
                lock.release(remove=True)
            removed.append(lock.path)
        elif name.startswith("pull-") and name.endswith(".lock"):
            if not entry.with_suffix("").is_dir() and remove_if_unlocked(entry):
                removed.append(entry)
        elif name.startswith("blob-") and name.endswith(".partial"):
            if remove_if_unlocked(entry):
                removed.append(entry)
        elif name.startswith("upload-") and name.endswith(".partial"):
            if time.time() - entry.stat().st_mtime > UNLOCKED_PARTIAL_MAX_AGE_S and remove_if_unlocked(entry):
                removed.append(entry)

    # -- internals -------------------------------------------------------------------------

    def _blob_is_complete(self, manifest: Manifest) -> bool:
        try:
            return self.blob_path(manifest.digest).stat().st_size == manifest.size and all(
                self.blob_path(a.digest).stat().st_size == a.size for a in manifest.adapters)
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


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _is_empty_tree(folder: Path) -> bool:
    """Whether ``folder`` holds no files, only (nested) empty folders."""
    return all(not files for _, _, files in os.walk(folder))


def _as_name(name: str | ModelName) -> ModelName:
    return name if isinstance(name, ModelName) else parse_model_name(name)


def _not_found_message(model: ModelName) -> str:
    short = model.name if model.tag == DEFAULT_TAG else str(model)
    return f"model \"{model}\" not found; run 'lokal pull {short}' or 'lokal list'"
