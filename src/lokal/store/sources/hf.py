"""Pull a GGUF file from a Hugging Face Hub repository: ``hf.co/<owner>/<repo>[:<quant|file>]``.

The file is chosen from the repository's listing (``huggingface_hub``'s
``model_info(files_metadata=True)``), downloaded into ``tmp/pull-<name>/files/<sha256>.partial``
(kept when a pull is interrupted, and resumed with an HTTP Range request by the next pull; free
disk space is checked first), and verified against the sha256 the Hub publishes in its LFS
metadata before it becomes a blob. huggingface_hub's own downloader is not used for the file:
it writes to a per-process temporary file that it deletes on failure, so it cannot resume.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lokal.store.digests import sha256_file
from lokal.store.errors import DigestMismatch, InvalidGguf, PullError
from lokal.store.loadable import read_loadable_gguf_facts
from lokal.store.manifest import Manifest
from lokal.store.model_store import ModelStore
from lokal.store.names import DEFAULT_TAG, ModelName
from lokal.store.progress import ByteProgress, ProgressCallback, PullProgress

HF_PREFIXES = ("hf.co/", "huggingface.co/")
DEFAULT_QUANT = "Q4_K_M"
CONNECT_TIMEOUT = 15.0
READ_TIMEOUT = 60.0
DISK_RESERVE = 64 * 1024 * 1024  # keep this much free: a full disk breaks more than this pull
_REPO_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class HfFile:
    """The GGUF file picked from a repository, with what the Hub says it must hash to."""

    repo_id: str
    filename: str
    revision: str | None
    sha256: str | None  # None: a small file kept in git, not LFS (the Hub publishes no sha256 for it)
    size: int

    @property
    def source(self) -> str:
        """``hf.co/<owner>/<repo>/<file>``, recorded in the manifest."""
        return f"hf.co/{self.repo_id}/{self.filename}"


class NoGgufFile(PullError):
    """The repository has no ``.gguf`` file (a model published as safetensors, say)."""


def is_hf_name(text: str) -> bool:
    """Whether ``text`` names a Hugging Face repository (``hf.co/…``)."""
    return text.lower().startswith(HF_PREFIXES)


def split_hf_name(text: str) -> tuple[str, str | None]:
    """``hf.co/Owner/Repo:Q4_K_M`` -> (``Owner/Repo``, ``Q4_K_M``), keeping the case the Hub
    uses; the selector is None for no tag or ``latest``."""
    lowered = text.lower()
    prefix = next((p for p in HF_PREFIXES if lowered.startswith(p)), None)
    if prefix is None:
        raise PullError(f'"{text}" is not an hf.co/<owner>/<repo> name')
    repo_id, _, selector = text[len(prefix) :].partition(":")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(_REPO_PART.fullmatch(p) for p in parts):
        raise PullError(f'"{text}" is not an hf.co/<owner>/<repo>[:<quant or file>] name')
    return repo_id, (selector if selector and selector != DEFAULT_TAG else None)


def pick_gguf(repo_id: str, filenames: list[str], selector: str | None) -> str:
    """The one ``.gguf`` file in ``filenames`` that ``selector`` names.

    A selector matches a file name exactly or as a case-insensitive substring (``Q4_K_M``).
    Without one, the ``Q4_K_M`` file is taken if there is one, else the only GGUF (projector
    files, ``mmproj*``, only when named). Raises :class:`PullError` listing the files.
    """
    ggufs = sorted(f for f in filenames if f.lower().endswith(".gguf"))
    if not ggufs:
        raise NoGgufFile(f"hf.co/{repo_id} has no .gguf file ('lokal pull hf.co/{repo_id}' converts its safetensors)")
    if selector is None:
        models = [f for f in ggufs if not Path(f).name.lower().startswith("mmproj")]
        matches = [f for f in models if DEFAULT_QUANT.lower() in Path(f).name.lower()]
        matches = matches or models
        wanted = f"a default (no tag, and no single {DEFAULT_QUANT} file among {len(models)})"
    else:
        exact = [f for f in ggufs if f.lower() == selector.lower() or Path(f).name.lower() == selector.lower()]
        matches = exact or [f for f in ggufs if selector.lower() in Path(f).name.lower()]
        wanted = f'"{selector}"'
    if len(matches) == 1:
        return matches[0]
    verdict = "is ambiguous" if matches else "matches no file"
    listed = ", ".join(matches or ggufs)
    raise PullError(f"{wanted} {verdict} in hf.co/{repo_id}; pick one of: {listed}")


class HfSource:
    """Pulls GGUF files from the Hugging Face Hub (or any Hub-compatible ``endpoint``).

    ``endpoint`` None means huggingface_hub's default, which honours ``HF_ENDPOINT``.
    """

    def __init__(self, store: ModelStore, endpoint: str | None = None, token: str | bool | None = None) -> None:
        self.store = store
        self.endpoint = endpoint
        self.token = token

    def pull(self, name: ModelName, text: str, report: ProgressCallback) -> Manifest:
        """Pull the model that ``text`` (``hf.co/owner/repo[:quant]``) names, as ``name``."""
        repo_id, selector = split_hf_name(text)
        work = self.store.pull_dir(name)
        lock = self.store.pull_lock(name, report)
        try:
            report(PullProgress("pulling manifest"))
            file = self.resolve(repo_id, selector)
            digest = f"sha256:{file.sha256}"
            blob = self.store.blob_path(digest)
            try:
                if blob.is_file() and blob.stat().st_size == file.size:
                    facts = read_loadable_gguf_facts(blob)
                else:
                    downloaded = self._download(file, work, ByteProgress(report, "downloading", file.size, digest))
                    report(PullProgress("verifying sha256 digest", digest=digest))
                    # A file llama.cpp cannot load is refused (and its download dropped) here, not at
                    # the first chat.
                    _, facts = self.store.add_gguf(downloaded, digest)
            except DigestMismatch as e:
                raise PullError(f"{file.source} does not match the Hub's sha256 ({e})") from e
            except InvalidGguf as e:
                raise PullError(f"{file.source}: {e}") from e
            report(PullProgress("writing manifest"))
            manifest = Manifest(
                name=str(name),
                digest=digest,
                size=file.size,
                source=file.source,
                facts=facts,
                license=facts.license,
            )
            return self.store.finish_pull(manifest, work, report)
        finally:
            lock.release(remove=True)

    def resolve(self, repo_id: str, selector: str | None) -> HfFile:
        """Ask the Hub which file ``selector`` names in ``repo_id`` and what it must hash to."""
        files = {f.filename: f for f in self.repo_files(repo_id)}
        file = files[pick_gguf(repo_id, list(files), selector)]
        if file.sha256 is None:
            raise PullError(f"{file.source} has no sha256 on the Hub; refusing to pull it unverified")
        return file

    def repo_files(self, repo_id: str) -> list[HfFile]:
        """Every file of ``repo_id`` at its current commit, with its size and (LFS files) sha256."""
        from huggingface_hub import HfApi  # imported lazily: it is slow and only pulls need it

        try:
            info = HfApi(endpoint=self.endpoint, token=self.token).model_info(repo_id, files_metadata=True)
        except Exception as e:  # network, 401/404, bad JSON: one line for the user either way
            raise PullError(f"cannot get the file list of hf.co/{repo_id}: {_one_line(e)}") from e
        files = []
        for sibling in info.siblings or []:
            lfs = sibling.lfs
            sha256, size = (lfs.sha256.lower(), lfs.size) if lfs is not None else (None, sibling.size or 0)
            files.append(HfFile(repo_id, sibling.rfilename, info.sha, sha256, size))
        return files

    def download(self, file: HfFile, work: Path, downloading: ByteProgress) -> Path:
        """Download ``file`` into ``work/files/`` (resuming an earlier partial download) and return
        where it is; an LFS file is checked against the Hub's sha256 (:class:`PullError` if it
        differs, with the download dropped)."""
        path = self._download(file, work, downloading)
        if file.sha256 is not None and sha256_file(path) != f"sha256:{file.sha256}":
            path.unlink()
            raise PullError(f"{file.source} does not match the Hub's sha256; pull again to download it again")
        return path

    def _download(self, file: HfFile, work: Path, downloading: ByteProgress) -> Path:
        """Download ``file`` into ``work/files/<sha256>.partial``, resuming what an earlier,
        interrupted pull left there (an HTTP Range request), after checking free disk space."""
        import httpx
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        files = work / "files"
        files.mkdir(parents=True, exist_ok=True)
        # LFS files by content (another name for the same bytes resumes them), small git files by name
        key = file.sha256 or "git-" + re.sub(r"[^A-Za-z0-9._-]", "_", file.filename)
        partial = files / f"{key}.partial"
        if file.sha256 is None:  # small, and with no digest to tell a stale prefix: always downloaded whole
            partial.unlink(missing_ok=True)
        done = partial.stat().st_size if partial.exists() else 0
        if done > file.size:  # not this file's prefix: start over
            partial.unlink()
            done = 0
        check_disk_space(files, file.size - done, file.source)
        if done:
            downloading(done, force=True)
        if done == file.size:
            return partial
        url = hf_hub_url(file.repo_id, file.filename, revision=file.revision, endpoint=self.endpoint)
        headers = build_hf_headers(token=self.token, library_name="lokal")
        if done:
            headers["Range"] = f"bytes={done}-"
        timeout = httpx.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT, write=READ_TIMEOUT, pool=CONNECT_TIMEOUT)
        try:
            # Authorization is dropped if the Hub redirects to another host (its CDN): httpx does that.
            with httpx.stream("GET", url, headers=headers, follow_redirects=True, timeout=timeout) as response:
                if response.status_code == 416 and done:  # the partial is not a prefix of this file
                    partial.unlink()
                    raise PullError(f"cannot resume {file.source}: the Hub refused the range; pull again to restart")
                if response.status_code not in (200, 206):
                    raise PullError(f"cannot download {file.source}: HTTP {response.status_code} from {url}")
                resumed = response.status_code == 206 and _range_start(response.headers) == done
                with partial.open("ab" if resumed else "wb") as out:
                    written = done if resumed else 0
                    for chunk in response.iter_bytes():
                        out.write(chunk)
                        written += len(chunk)
                        if written > file.size:
                            break
                        downloading(written)
                    out.flush()
                    os.fsync(out.fileno())
        except httpx.HTTPError as e:  # the partial file is kept: pulling again resumes it
            raise PullError(f"cannot download {file.source}: {_one_line(e)} (pull again to resume)") from e
        size = partial.stat().st_size
        if size != file.size:
            if size > file.size:
                partial.unlink()
            raise PullError(
                f"cannot download {file.source}: got {size} of {file.size} bytes (pull again to resume)"
            )
        downloading(file.size, force=True)
        return partial


def disk_free(path: Path) -> int:
    """Bytes free for an unprivileged user on the filesystem of ``path``."""
    return shutil.disk_usage(path).free


def check_disk_space(folder: Path, needed: int, what: str) -> None:
    """Raise :class:`PullError` unless ``needed`` bytes (and a small reserve) fit under ``folder``."""
    free = disk_free(folder)
    if needed + DISK_RESERVE > free:
        raise PullError(
            f"not enough disk space to download {what}: {needed} bytes needed, {free} bytes free in {folder}"
        )


def _range_start(headers: Any) -> int | None:
    match = re.match(r"bytes (\d+)-", headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
