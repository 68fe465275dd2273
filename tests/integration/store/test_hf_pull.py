"""Pulling hf.co/<owner>/<repo>[:quant] through huggingface_hub from a fake Hub on loopback.

The fake serves what ``huggingface_hub`` asks of the real Hub: ``GET /api/models/<repo>
[/revision/<rev>]?blobs=true`` (siblings with their LFS sha256) and ``HEAD``/``GET
/<repo>/resolve/<rev>/<file>`` (ETag, X-Repo-Commit, Content-Length, byte ranges).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from lokal.store.errors import PullError
from lokal.store.model_store import ModelStore
from lokal.store.progress import PullProgress
from lokal.store.pull import pull_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class HubFile:
    content: bytes
    lfs: bool = True
    served: bytes | None = None  # what GET returns, when it should differ from the content
    chunk_delay: float = 0.0  # seconds between 1 KB chunks: a slow download that a test can kill
    ignore_range: bool = False  # answer a Range request with the whole file (200), as some servers do

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass
class FakeHub:
    url: str = ""
    repos: dict[str, dict[str, HubFile]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    ranges: list[str] = field(default_factory=list)  # the Range header of each download ("" for none)

    def add(self, repo_id: str, filename: str, content: bytes, **options: object) -> HubFile:
        hub_file = HubFile(content, **options)  # type: ignore[arg-type]
        self.repos.setdefault(repo_id, {})[filename] = hub_file
        return hub_file

    def downloads(self) -> list[str]:
        return [path for method, path in self.requests if method == "GET" and "/resolve/" in path]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: FakeHub

    def log_message(self, *_: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.hub.requests.append((self.command, path))
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?", path):
            return self._model_info(m.group(1), body)
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            return self._resolve(m.group(1), m.group(3), body)
        self._send(404, b'{"error": "not found"}', {"X-Error-Code": "EntryNotFound"}, body)

    def _model_info(self, repo_id: str, body: bool) -> None:
        files = self.hub.repos.get(repo_id)
        if files is None:
            return self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}, body)
        siblings = []
        for name, f in files.items():
            sibling: dict[str, object] = {"rfilename": name, "size": len(f.content), "blobId": "b" * 40}
            if f.lfs:
                sibling["lfs"] = {"sha256": f.sha256, "size": len(f.content), "pointerSize": 134}
            siblings.append(sibling)
        info = {"id": repo_id, "modelId": repo_id, "sha": COMMIT, "private": False, "siblings": siblings}
        self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)

    def _resolve(self, repo_id: str, filename: str, body: bool) -> None:
        f = self.hub.repos.get(repo_id, {}).get(filename)
        if f is None:
            return self._send(404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, body)
        data = f.served if f.served is not None else f.content
        headers = {"ETag": f'"{f.sha256}"', "X-Repo-Commit": COMMIT, "Accept-Ranges": "bytes"}
        start = 0
        if body:
            self.hub.ranges.append(self.headers.get("Range", ""))
        if (m := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))) and not f.ignore_range:
            start = int(m.group(1))
            if start >= len(data):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"}, body)
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        self._send(206 if start else 200, data[start:], headers, body, f.chunk_delay)

    def _send(self, status: int, data: bytes, headers: dict[str, str], body: bool, delay: float = 0.0) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not body:
            return
        if not delay:
            self.wfile.write(data)
            return
        try:
            for i in range(0, len(data), 1024):
                self.wfile.write(data[i : i + 1024])
                self.wfile.flush()
                time.sleep(delay)
        except OSError:  # the client was killed mid-download
            pass


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    hub = FakeHub()
    handler = type("Handler", (_Handler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield hub
    server.shutdown()
    server.server_close()


MakeGguf = Callable[..., Path]
REPO = "TheOwner/Tiny-GGUF"


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "home")


@pytest.fixture
def hub(fake_hub: FakeHub, tiny_gguf: MakeGguf) -> FakeHub:
    for seed, quant in enumerate(("Q4_K_M", "Q4_K_S", "Q8_0"), start=1):
        fake_hub.add(REPO, f"tiny-{quant}.gguf", tiny_gguf(seed=seed).read_bytes())
    fake_hub.add(REPO, "README.md", b"# tiny\n", lfs=False)
    return fake_hub


def blobs(store: ModelStore) -> list[str]:
    return sorted(p.name for p in store.blobs_dir.iterdir()) if store.blobs_dir.exists() else []


def test_pull_by_quant_verifies_and_stores(store: ModelStore, hub: FakeHub) -> None:
    seen: list[PullProgress] = []
    manifest = pull_model(store, f"hf.co/{REPO}:Q8_0", seen.append, hf_endpoint=hub.url)
    expected = hub.repos[REPO]["tiny-Q8_0.gguf"]
    assert manifest.name == "hf.co/theowner/tiny-gguf:Q8_0"
    assert manifest.digest == f"sha256:{expected.sha256}" and manifest.size == len(expected.content)
    assert manifest.source == f"hf.co/{REPO}/tiny-Q8_0.gguf"
    assert manifest.facts.architecture == "llama" and manifest.license == "mit"
    assert store.gguf_path("hf.co/theowner/tiny-gguf:q8_0").read_bytes() == expected.content
    statuses = list(dict.fromkeys(p.status for p in seen))
    assert statuses == ["pulling manifest", "downloading", "verifying sha256 digest", "writing manifest", "success"]
    assert [p.completed for p in seen if p.status == "downloading"][-1] == len(expected.content)
    assert not store.pull_dir(manifest.name).exists()
    assert hub.downloads() == [f"/{REPO}/resolve/{'0123456789abcdef' * 2 + '01234567'}/tiny-Q8_0.gguf"]


def test_no_tag_pulls_the_q4_k_m_file(store: ModelStore, hub: FakeHub) -> None:
    manifest = pull_model(store, f"hf.co/{REPO}", hf_endpoint=hub.url)
    assert manifest.name == "hf.co/theowner/tiny-gguf:latest"
    assert manifest.source.endswith("/tiny-Q4_K_M.gguf")


def test_pulling_again_is_a_no_op_that_never_asks_the_hub(store: ModelStore, hub: FakeHub) -> None:
    first = pull_model(store, f"hf.co/{REPO}:Q8_0", hf_endpoint=hub.url)
    hub.requests.clear()
    seen: list[PullProgress] = []
    assert pull_model(store, f"hf.co/{REPO}:q8_0", seen.append, hf_endpoint=hub.url) == first
    assert hub.requests == []
    assert [p.status for p in seen] == ["pulling manifest", "success"]


def test_a_second_name_for_a_stored_file_is_not_downloaded_again(store: ModelStore, hub: FakeHub) -> None:
    pull_model(store, f"hf.co/{REPO}:Q8_0", hf_endpoint=hub.url)
    second = pull_model(store, f"hf.co/{REPO}:tiny-Q8_0.gguf", hf_endpoint=hub.url)
    assert second.name == "hf.co/theowner/tiny-gguf:tiny-Q8_0.gguf"
    assert len(hub.downloads()) == 1 and len(blobs(store)) == 1


def test_ambiguous_quant_lists_the_files_and_stores_nothing(store: ModelStore, hub: FakeHub) -> None:
    with pytest.raises(PullError) as caught:
        pull_model(store, f"hf.co/{REPO}:Q4_K", hf_endpoint=hub.url)
    assert str(caught.value) == (
        f'"Q4_K" is ambiguous in hf.co/{REPO}; pick one of: tiny-Q4_K_M.gguf, tiny-Q4_K_S.gguf'
    )
    assert store.list() == [] and blobs(store) == [] and hub.downloads() == []


def test_unknown_quant_lists_every_gguf(store: ModelStore, hub: FakeHub) -> None:
    with pytest.raises(PullError, match="matches no file.*tiny-Q4_K_M.gguf, tiny-Q4_K_S.gguf, tiny-Q8_0.gguf$"):
        pull_model(store, f"hf.co/{REPO}:Q2_K", hf_endpoint=hub.url)


def test_a_sha256_mismatch_is_refused_and_nothing_is_listed(store: ModelStore, hub: FakeHub) -> None:
    hub_file = hub.repos[REPO]["tiny-Q8_0.gguf"]
    corrupt = bytearray(hub_file.content)
    corrupt[-1] ^= 0xFF
    hub_file.served = bytes(corrupt)
    with pytest.raises(PullError, match=f"does not match the Hub's sha256.*expected sha256:{hub_file.sha256}"):
        pull_model(store, f"hf.co/{REPO}:Q8_0", hf_endpoint=hub.url)
    assert store.list() == [] and blobs(store) == []
    assert not store.exists(f"hf.co/{REPO}:Q8_0")


def test_a_file_without_lfs_sha256_is_refused(store: ModelStore, hub: FakeHub, tiny_gguf: MakeGguf) -> None:
    hub.add("o/plain", "plain.gguf", tiny_gguf(seed=9).read_bytes(), lfs=False)
    with pytest.raises(PullError, match="no sha256 on the Hub"):
        pull_model(store, "hf.co/o/plain", hf_endpoint=hub.url)
    assert hub.downloads() == []


def test_a_missing_repo_is_a_one_line_pull_error(store: ModelStore, hub: FakeHub) -> None:
    with pytest.raises(PullError) as caught:
        pull_model(store, "hf.co/nobody/nothing", hf_endpoint=hub.url)
    assert str(caught.value).startswith("cannot get the file list of hf.co/nobody/nothing: ")
    assert "\n" not in str(caught.value)


def test_an_unreachable_hub_is_a_pull_error(store: ModelStore, hub: FakeHub) -> None:
    with pytest.raises(PullError, match="cannot get the file list"):
        pull_model(store, f"hf.co/{REPO}", hf_endpoint="http://127.0.0.1:9")


def test_hf_endpoint_from_the_environment_is_honoured(tmp_path: Path, hub: FakeHub) -> None:
    code = (
        "import sys; from lokal.store import ModelStore, pull_model; "
        "m = pull_model(ModelStore(sys.argv[1]), sys.argv[2]); print(m.model_dump_json())"
    )
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "env-home"), f"hf.co/{REPO}:Q4_K_S"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["source"] == f"hf.co/{REPO}/tiny-Q4_K_S.gguf"


# -- resuming, disk space, progress --------------------------------------------------------


def test_a_pull_killed_mid_download_is_resumed_with_a_range_request(
    store: ModelStore, hub: FakeHub, tmp_path: Path
) -> None:
    hub_file = hub.repos[REPO]["tiny-Q8_0.gguf"]
    hub_file.chunk_delay = 0.05
    name = f"hf.co/{REPO}:Q8_0"
    code = "import sys; from lokal.store import ModelStore, pull_model; "
    code += "pull_model(ModelStore(sys.argv[1]), sys.argv[2])"
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code, str(store.home), name], env=env)
    partial = store.pull_dir(name) / "files" / f"{hub_file.sha256}.partial"
    deadline = time.monotonic() + 60
    while not (partial.exists() and partial.stat().st_size >= 4096):
        assert proc.poll() is None and time.monotonic() < deadline, "the pull ended before it could be killed"
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no cleanup of any kind
    proc.wait()
    kept = partial.stat().st_size
    assert 4096 <= kept < len(hub_file.content)
    assert not store.exists(name)

    hub_file.chunk_delay = 0.0
    seen: list[PullProgress] = []
    manifest = pull_model(store, name, seen.append, hf_endpoint=hub.url)
    assert hub.ranges[-1] == f"bytes={kept}-"
    assert store.gguf_path(manifest.name).read_bytes() == hub_file.content
    downloading = [p for p in seen if p.status == "downloading"]
    assert downloading[0].completed == kept and downloading[-1].completed == len(hub_file.content)
    assert all(p.total == len(hub_file.content) and p.digest == manifest.digest for p in downloading)
    assert not store.pull_dir(name).exists()


def test_a_corrupt_partial_file_fails_the_sha256_check_once_then_the_pull_starts_over(
    store: ModelStore, hub: FakeHub
) -> None:
    hub_file = hub.repos[REPO]["tiny-Q8_0.gguf"]
    name = f"hf.co/{REPO}:Q8_0"
    partial = store.pull_dir(name) / "files" / f"{hub_file.sha256}.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\xff" * 1000)  # not a prefix of the file
    with pytest.raises(PullError, match="does not match the Hub's sha256"):
        pull_model(store, name, hf_endpoint=hub.url)
    assert not partial.exists() and blobs(store) == []
    manifest = pull_model(store, name, hf_endpoint=hub.url)
    assert hub.ranges == ["bytes=1000-", ""]
    assert store.gguf_path(manifest.name).read_bytes() == hub_file.content


def test_a_server_that_ignores_range_gets_the_whole_file_again(store: ModelStore, hub: FakeHub) -> None:
    hub_file = hub.repos[REPO]["tiny-Q8_0.gguf"]
    hub_file.ignore_range = True
    name = f"hf.co/{REPO}:Q8_0"
    partial = store.pull_dir(name) / "files" / f"{hub_file.sha256}.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(hub_file.content[:3000])
    manifest = pull_model(store, name, hf_endpoint=hub.url)
    assert hub.ranges == ["bytes=3000-"]
    assert store.gguf_path(manifest.name).read_bytes() == hub_file.content


def test_a_complete_partial_file_is_not_downloaded_again(store: ModelStore, hub: FakeHub) -> None:
    hub_file = hub.repos[REPO]["tiny-Q8_0.gguf"]
    name = f"hf.co/{REPO}:Q8_0"
    partial = store.pull_dir(name) / "files" / f"{hub_file.sha256}.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(hub_file.content)
    pull_model(store, name, hf_endpoint=hub.url)
    assert hub.downloads() == []


def test_not_enough_disk_space_is_refused_before_downloading(
    store: ModelStore, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lokal.store.sources import hf

    monkeypatch.setattr(hf, "disk_free", lambda _path: 1234)
    size = len(hub.repos[REPO]["tiny-Q8_0.gguf"].content)
    with pytest.raises(PullError) as caught:
        pull_model(store, f"hf.co/{REPO}:Q8_0", hf_endpoint=hub.url)
    message = str(caught.value)
    assert message.startswith(f"not enough disk space to download hf.co/{REPO}/tiny-Q8_0.gguf: ")
    assert f"{size} bytes needed, 1234 bytes free in " in message
    assert hub.downloads() == [] and store.list() == []


def test_the_disk_check_counts_only_the_bytes_still_missing(
    store: ModelStore, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lokal.store.sources import hf

    hub_file = hub.repos[REPO]["tiny-Q8_0.gguf"]
    name = f"hf.co/{REPO}:Q8_0"
    partial = store.pull_dir(name) / "files" / f"{hub_file.sha256}.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(hub_file.content[:-100])
    needed: list[int] = []
    monkeypatch.setattr(hf, "check_disk_space", lambda _folder, n, _what: needed.append(n))
    pull_model(store, name, hf_endpoint=hub.url)
    assert needed == [100]


def test_cli_and_api_pull_show_byte_progress_of_a_hub_download(
    store: ModelStore, hub: FakeHub, tmp_path: Path
) -> None:
    import httpx

    from tests.integration.conftest import LiveServer

    env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1"}
    cli = subprocess.run(
        [sys.executable, "-m", "lokal.cli.main", "pull", f"hf.co/{REPO}:Q8_0"],
        env={**os.environ, **env, "LOKAL_HOME": str(store.home)}, capture_output=True, text=True, timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    assert "is ready" in cli.stdout and "pulling hf.co" in cli.stderr  # the bar's label

    (tmp_path / "server-home").mkdir()
    server = LiveServer(tmp_path / "server-home", "--no-preload", env=env)
    try:
        with httpx.stream("POST", server.url + "/api/pull", json={"model": f"hf.co/{REPO}:Q4_K_S"}, timeout=60) as r:
            lines = [json.loads(line) for line in r.iter_lines() if line]
    finally:
        server.stop()
    expected = hub.repos[REPO]["tiny-Q4_K_S.gguf"]
    counted = [line for line in lines if "completed" in line and line.get("total")]
    assert counted, lines
    assert counted[-1]["completed"] == counted[-1]["total"] == len(expected.content)
    assert counted[-1]["digest"] == f"sha256:{expected.sha256}"
    assert lines[-1] == {"status": "success"}
