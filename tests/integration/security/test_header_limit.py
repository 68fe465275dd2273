"""LOKAL_MAX_HEADER_BYTES against a live `lokal serve` (uvloop + httptools), over raw sockets: a
request line plus headers over the bound gets 431 while it arrives, without the server buffering
it; requests under it, keep-alive, pipelining and bodies are untouched."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.integration.conftest import LiveServer

DEFAULT_LIMIT = 64 * 1024
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """No model needed: the bound acts before the app."""
    server = LiveServer(tmp_path_factory.mktemp("header-home"), "--no-preload")
    yield server
    server.stop()


def exchange(port: int, *parts: bytes, timeout: float = 10.0) -> bytes:
    """Send ``parts`` on one connection (stopping if the server closes it), then read to EOF (or
    ``timeout`` seconds of silence)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            for part in parts:
                for i in range(0, len(part), 256 * 1024):
                    sock.sendall(part[i:i + 256 * 1024])
        except (BrokenPipeError, ConnectionResetError):
            pass
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (ConnectionResetError, TimeoutError):  # a server still waiting for the head's end
            pass
        return received


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def head(path: str = "/health", *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "Connection: close", "", ""]
    return "\r\n".join(lines).encode()


def rss(server: LiveServer) -> int:
    return int(psutil.Process(server.proc.pid).memory_info().rss)


@pytest.mark.parametrize("what", ["one 1 MiB header", "2000 small headers", "a 1 MiB URL"])
def test_a_head_over_the_bound_gets_431_at_once(live: LiveServer, what: str) -> None:
    request = {
        "one 1 MiB header": head("/health", "X-Big: " + "a" * MiB),
        "2000 small headers": head("/health", *(f"X-H{i}: {'v' * 60}" for i in range(2000))),
        "a 1 MiB URL": head("/health?q=" + "u" * MiB),
    }[what]
    start = time.monotonic()
    response = exchange(live.port, request)
    assert time.monotonic() - start < 5
    assert status_of(response) == 431, response[:200]
    assert b"connection: close" in response.lower()
    assert response.endswith(
        f"request line and headers are larger than {DEFAULT_LIMIT} bytes (LOKAL_MAX_HEADER_BYTES)".encode())
    assert httpx.get(live.url + "/health", timeout=5).status_code == 200


def test_huge_heads_do_not_grow_the_server(live: LiveServer) -> None:
    exchange(live.port, head("/health", "X-Big: " + "a" * MiB))  # warm: the first 431's allocations
    before = rss(live)
    peak = before
    sending = threading.Event()
    sending.set()

    def sample() -> None:
        nonlocal peak
        while sending.is_set():
            peak = max(peak, rss(live))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        start = time.monotonic()
        # 64 MiB of one header: the server drops what follows its 431 and closes after 16 MiB
        response = exchange(live.port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Huge: ", b"h" * 64 * MiB)
        elapsed = time.monotonic() - start
    finally:
        sending.clear()
        sampler.join()
    assert peak - before < 8 * MiB, f"RSS grew by {(peak - before) / MiB:.1f} MiB"  # before: +123 MiB
    assert response == b"" or status_of(response) == 431, response[:200]
    assert elapsed < 10
    assert httpx.get(live.url + "/health", timeout=5).status_code == 200


def test_requests_under_the_bound_keep_alive_pipelining_and_bodies_still_work(live: LiveServer) -> None:
    assert status_of(exchange(live.port, head("/health", "X-Token: " + "t" * 48 * 1024))) == 200
    assert status_of(exchange(live.port, head("/health", *(f"X-H{i}: {'v' * 60}" for i in range(500))))) == 200
    # two requests, one connection: the second head is counted afresh
    keep = "GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + "p" * 40 * 1024 + "\r\n\r\n"
    both = exchange(live.port, keep.encode(), head("/health", "X-Pad: " + "q" * 40 * 1024))
    assert both.count(b"HTTP/1.1 200 OK") == 2, both[:300]
    pipelined = exchange(live.port, (keep + keep).encode() + head())
    assert pipelined.count(b"HTTP/1.1 200 OK") == 3
    # a body is not part of the head, however large (this one is refused by the app, not by the bound)
    body = b'{"model": "nope", "input": "' + b"w" * 2 * MiB + b'"}'
    post = (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    assert status_of(exchange(live.port, post, body)) == 404
    with httpx.Client(base_url=live.url, timeout=5) as client:  # an ordinary client, keep-alive
        assert [client.get("/health").status_code for _ in range(3)] == [200, 200, 200]


def test_the_bound_is_lokal_max_header_bytes(tmp_path: Path) -> None:
    server = LiveServer(tmp_path, "--no-preload", env={"LOKAL_MAX_HEADER_BYTES": "4096"})
    try:
        assert status_of(exchange(server.port, head("/health", "X-Pad: " + "p" * 3000))) == 200
        refused = exchange(server.port, head("/health", "X-Pad: " + "p" * 5000))
        assert status_of(refused) == 431 and refused.endswith(b"larger than 4096 bytes (LOKAL_MAX_HEADER_BYTES)")
    finally:
        server.stop()
