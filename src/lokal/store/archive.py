"""Models that are a folder of files (a CTranslate2 Whisper, a Piper voice) rather than one GGUF:
the store keeps the folder as one blob, an uncompressed tar written the same way every time (so
that the catalog can pin its sha256), and unpacks it once next to the blobs for the library that
loads it."""

from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
from pathlib import Path

from lokal.store.digests import CHUNK_SIZE, parse_digest

UNPACKED_DIR = "unpacked"


def archive_wheel_folder(wheel: Path, prefix: str, dest: Path) -> None:
    """Write the files under ``prefix`` in ``wheel`` to ``dest`` as a tar: names relative to the
    prefix, sorted, with no owner, time or mode of the machine that wrote it."""
    with zipfile.ZipFile(wheel) as archive, tarfile.open(dest, "w", format=tarfile.USTAR_FORMAT) as tar:
        members = sorted((i for i in archive.infolist() if not i.is_dir() and i.filename.startswith(prefix)),
                         key=lambda i: i.filename)
        if not members:
            raise KeyError(f"no files under {prefix}")
        for info in members:
            relative = info.filename.removeprefix(prefix)
            if not relative or ".." in Path(relative).parts:
                continue
            entry = tarfile.TarInfo(relative)
            entry.size = info.file_size
            entry.mode = 0o644
            entry.mtime = 0
            with archive.open(info) as member:
                tar.addfile(entry, member)


def unpacked_folder(home: Path, digest: str) -> Path:
    """The folder a tar blob is unpacked into (``$LOKAL_HOME/unpacked/sha256-<hex>``)."""
    return home / UNPACKED_DIR / parse_digest(digest).replace(":", "-")


def unpack(blob: Path, folder: Path) -> Path:
    """``folder`` holding the files of the tar ``blob``, unpacked now unless it already is (into a
    temporary folder renamed into place, so a half-unpacked folder is never used)."""
    if folder.is_dir():
        return folder
    partial = folder.with_name(folder.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        with tarfile.open(blob, "r:") as tar:
            for member in tar.getmembers():
                if not member.isfile() or ".." in Path(member.name).parts or member.name.startswith("/"):
                    continue
                target = partial / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # a regular file
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, CHUNK_SIZE)
        try:
            partial.rename(folder)
        except OSError:  # another process unpacked it first
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder
