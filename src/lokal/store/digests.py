"""sha256 digests of files, written ``sha256:<hex>`` as in manifests and Ollama's API."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import os
import re
import sys
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


def copy_and_hash(src: Path, out: io.BufferedRandom) -> str:
    """Copy the file ``src`` into the empty, writable file ``out`` and return the digest of the
    bytes ``out`` now holds (flushed and fsynced).

    Where the filesystem can share extents (Btrfs, XFS, bcachefs: the ``FICLONE`` ioctl), the copy
    is a reflink, instant and taking no space until either file changes, and the clone is hashed.
    Elsewhere the bytes are streamed and hashed as they are written, in one read of ``src``. Either
    way the digest is that of the copy: a source changed meanwhile cannot make them disagree.
    A copy that cannot fit on the disk is refused (:class:`StoreError`) before a byte is written.
    """
    h = hashlib.sha256()
    buf = bytearray(CHUNK_SIZE)
    view = memoryview(buf)
    with open(src, "rb") as r:
        if _reflink(r.fileno(), out.fileno()):
            out.seek(0)
            while n := out.readinto(buf):
                h.update(view[:n])
        else:
            needed = os.fstat(r.fileno()).st_size
            fs = os.fstatvfs(out.fileno())
            if needed > fs.f_bavail * fs.f_frsize:
                raise StoreError(
                    f"not enough disk space to copy {src} into the store: {needed} bytes needed, "
                    f"{fs.f_bavail * fs.f_frsize} free"
                )
            while n := r.readinto(buf):
                h.update(view[:n])
                out.write(view[:n])
    out.flush()
    os.fsync(out.fileno())
    return "sha256:" + h.hexdigest()


# ioctl FICLONE (linux/fs.h): make the destination share the source's extents (copy-on-write).
FICLONE = 0x40049409
# What FICLONE answers where a reflink is impossible: another filesystem, one without shared
# extents (ext4, tmpfs), or no such ioctl at all.
_NO_REFLINK_ERRNOS = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS,
                      errno.EPERM}


def _reflink(src_fd: int, dst_fd: int) -> bool:
    """Clone ``src_fd`` into ``dst_fd`` where the filesystem supports it; False where it does not."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError as e:
        if e.errno in _NO_REFLINK_ERRNOS:
            return False
        raise
    return True
