"""An advisory, cross-process lock on a file (POSIX ``flock``); released when its holder dies.

Lock files may be deleted by their holder (``FileLock.release(remove=True)``, the store's clean-up
of ``tmp/``), so taking a lock checks, once it is held, that the path still names the locked
file; if another process removed it meanwhile, the lock is taken again on the new file.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


def lock_fd(fd: int, path: Path, blocking: bool = True) -> bool:
    """``flock`` the open file ``fd`` (named ``path``) exclusively. False when another process holds
    it (``blocking=False`` only) or when ``path`` no longer names it (it was removed meanwhile)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return _same_file(fd, path)


def remove_if_unlocked(path: Path) -> bool:
    """Delete ``path`` unless a live process holds its ``flock``; True if it was deleted.

    The file is locked while it is unlinked, so a process that was about to lock it finds it gone
    (``lock_fd`` returns False) and starts over on a new file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        if not lock_fd(fd, path, blocking=False):
            return False
        os.unlink(path)
        return True
    finally:
        os.close(fd)


class FileLock:
    """Exclusive lock on ``path``. ``with FileLock(p):`` blocks until the lock is free.

    The lock belongs to an open file: a child process given ``fd`` (``pass_fds``) keeps it
    held after its parent is killed.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock; with ``blocking=False`` return False at once if another holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return False
            except BaseException:
                os.close(fd)
                raise
            if _same_file(fd, self.path):
                self.fd = fd
                return True
            os.close(fd)  # removed by its holder while we waited: lock the file that replaced it

    def release(self, remove: bool = False) -> None:
        """Let the lock go (no-op when not held); ``remove`` deletes the lock file first, while it
        is still held (a waiting process then locks a new one)."""
        if self.fd is not None:
            if remove and _same_file(self.fd, self.path):
                self.path.unlink(missing_ok=True)
            os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

