"""sha256 digests of files, written ``sha256:<hex>`` as in manifests and Ollama's API."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from lokal.store.errors import StoreError

_DIGEST = re.compile(r"(?:sha256[:-])?([0-9a-f]{64})")
CHUNK_SIZE = 1 << 20


def parse_digest(text: str) -> str:
    """Normalise ``sha256:<hex>``, ``sha256-<hex>`` or a bare hex digest to ``sha256:<hex>``."""
    match = _DIGEST.fullmatch(text.strip().lower())
    if match is None:
        raise StoreError(f'invalid digest "{text}": expected sha256:<64 hex digits>')
    return f"sha256:{match.group(1)}"


def sha256_file(path: Path) -> str:
    """The ``sha256:<hex>`` digest of the file at ``path``."""
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def copy_and_hash(src: Path, dst: Path) -> str:
    """Copy ``src`` to a new file ``dst`` (fsynced), returning the digest of what was copied."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK_SIZE)
    view = memoryview(buf)
    with open(src, "rb") as r, open(dst, "xb") as w:
        while n := r.readinto(buf):
            h.update(view[:n])
            w.write(view[:n])
        w.flush()
        os.fsync(w.fileno())
    return "sha256:" + h.hexdigest()
