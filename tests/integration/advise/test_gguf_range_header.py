"""Sizing a model on a web server from its GGUF header alone: HTTP range requests against a
loopback server that serves a bundled model and counts the bytes it sends."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import pytest

from lokal.advise import json_schema
from lokal.advise.memory import (
    REMOTE_FIRST_BYTES,
    EstimateError,
    estimate_memory,
    fetch_remote_header,
    model_shape,
    shape_from_file,
)
from lokal.store.gguf_header import read_gguf_header
from tests.integration.advise.conftest import blob_path


@dataclass
class Served:
    """What the loopback server was asked for and sent."""

    files: dict[str, Path]
    honour_range: bool = True
    bytes_sent: int = 0
    ranges: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(served: Served) -> type[BaseHTTPRequestHandler]:
    class RangeHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = served.files.get(self.path.lstrip("/"))
            if path is None:
                self.send_error(404)
                return
            size = path.stat().st_size
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            if not served.honour_range or not m:
                start, end = 0, size - 1
                self.send_response(200)
            else:
                start = int(m.group(1))
                end = min(int(m.group(2) or size - 1), size - 1)
                with served.lock:
                    served.ranges.append(f"{start}-{end}")
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            with path.open("rb") as f:
                f.seek(start)
                left = end - start + 1
                while left > 0:
                    chunk = f.read(min(left, 64 * 1024))
                    try:
                        self.wfile.write(chunk)
                    except (BrokenPipeError, ConnectionResetError):
                        return
                    with served.lock:
                        served.bytes_sent += len(chunk)
                    left -= len(chunk)

        def log_message(self, *args: object) -> None:
            pass

    return RangeHandler


@pytest.fixture
def gguf_server(bundled_home: Path) -> Iterator[tuple[str, Served]]:
    """``http://127.0.0.1:PORT`` serving smollm2.gguf and gemma3.gguf (the store's blobs)."""
    served = Served(files={"smollm2.gguf": blob_path(bundled_home, "smollm2:135m"),
                           "gemma3.gguf": blob_path(bundled_home, "gemma3:270m")})
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", served
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_only_the_header_is_fetched_and_the_estimate_equals_the_local_files(
    gguf_server: tuple[str, Served], name: str
) -> None:
    url, served = gguf_server
    path = served.files[f"{name}.gguf"]
    header_end = read_gguf_header(path).data_offset  # where the tensor data starts
    file_size = path.stat().st_size

    header, fetched = fetch_remote_header(f"{url}/{name}.gguf")

    assert fetched == served.bytes_sent  # what the client kept is what the server sent
    # Only the header: at least its bytes, at most the doubling step past them, never the tensors.
    assert header_end <= fetched <= max(REMOTE_FIRST_BYTES, 2 * header_end)
    assert fetched < file_size / 10
    assert header.file_size == file_size and header.data_offset == header_end

    remote = model_shape(f"{url}/{name}.gguf")
    local = shape_from_file(path, f"{name}.gguf")
    assert remote.source == "remote" and remote.name == f"{name}.gguf"
    assert (remote.weights_bytes, remote.n_vocab, remote.facts) == (local.weights_bytes, local.n_vocab, local.facts)
    for ctx in (256, 4096):
        assert estimate_memory(remote, ctx, 2) == estimate_memory(local, ctx, 2)


def test_the_ranges_do_not_overlap(gguf_server: tuple[str, Served]) -> None:
    url, served = gguf_server
    _, fetched = fetch_remote_header(f"{url}/gemma3.gguf")  # a 262,144-token vocabulary: several requests
    spans = [tuple(map(int, r.split("-"))) for r in served.ranges]
    assert len(spans) > 1
    assert spans[0][0] == 0
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start == end + 1
    assert sum(b - a + 1 for a, b in spans) == fetched


def test_a_server_that_ignores_range_is_refused(gguf_server: tuple[str, Served]) -> None:
    url, served = gguf_server
    served.honour_range = False
    with pytest.raises(EstimateError, match="HTTP 200 to a range request"):
        fetch_remote_header(f"{url}/smollm2.gguf")


def test_a_missing_file_is_an_estimate_error(gguf_server: tuple[str, Served]) -> None:
    url, _ = gguf_server
    with pytest.raises(EstimateError, match="HTTP 404"):
        model_shape(f"{url}/nothing.gguf")


def test_lokal_advise_sizes_a_url(gguf_server: tuple[str, Served], tmp_path: Path) -> None:
    url, served = gguf_server
    env = {**os.environ, "LOKAL_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "lokal.cli.main", "advise", "--json", "-m", f"{url}/smollm2.gguf"],
                         capture_output=True, text=True, env=env, timeout=120, check=True)
    doc = json.loads(out.stdout)
    jsonschema.Draft202012Validator(json_schema("advise")).validate(doc)
    (row,) = doc["models"]
    assert row["source"] == "remote" and row["estimate"]["weights"] == 96_576_768
    assert served.bytes_sent < served.files["smollm2.gguf"].stat().st_size / 10
