"""The hostile-input suite: templates, schemas, encodings, sizes and corrupt state sent to one
live server while /health is polled. Every answer is a 4xx (never a 5xx), /health answers within
1 s throughout, a normal generation still completes, and the server's RSS grows by less than
RSS_BOUND_MIB over the whole suite."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.integration.conftest import LiveServer
from tests.integration.security.conftest import MODEL
from tests.integration.server.test_ollama_api import own_home

pytestmark = pytest.mark.slow
RSS_BOUND_MIB = 300  # the model is loaded before the baseline; the host prefix tier is off
HEALTH_BOUND_S = 1.0


def nested(depth: int) -> dict[str, object]:
    node: dict[str, object] = {"type": "string"}
    for _ in range(depth):
        node = {"type": "object", "properties": {"a": node}}
    return node


def deep_params(depth: int) -> dict[str, object]:
    node: dict[str, object] = {}
    for _ in range(depth):
        node = {"a": node}
    return node


CHAT = [{"role": "user", "content": "hi"}]
LOOPS = "{% set s = '" + "x" * 40_000 + "' %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}"
CASES: list[tuple[str, str, str, object]] = [
    ("template: nested loops", "POST", "/api/generate",
     {"model": MODEL, "prompt": "hi", "stream": False, "template": LOOPS}),
    ("template: a gigabyte string", "POST", "/api/generate",
     {"model": MODEL, "prompt": "hi", "stream": False, "template": "{{ 'x'|center(1000000000) }}"}),
    ("schema: response_format 200 deep", "POST", "/v1/chat/completions",
     {"model": MODEL, "messages": CHAT, "response_format": {"type": "json_schema",
                                                            "json_schema": {"name": "x", "schema": nested(200)}}}),
    ("schema: format 200 deep", "POST", "/api/chat",
     {"model": MODEL, "messages": CHAT, "stream": False, "format": nested(200)}),
    ("schema: tool parameters 200 deep", "POST", "/v1/chat/completions",
     {"model": MODEL, "messages": CHAT, "tools": [{"type": "function", "function": {
         "name": "f", "parameters": nested(200)}}]}),
    ("encoding: lone surrogate model name", "POST", "/v1/chat/completions",
     {"model": "\ud800", "messages": CHAT}),
    ("ui: conversation params 900 deep", "POST", "/ui/api/conversations", {"title": "t", "params": deep_params(900)}),
    ("size: a 5 MB prompt", "POST", "/v1/completions", {"model": MODEL, "prompt": "word " * 1_000_000}),
    ("size: a 5 MB chat message", "POST", "/api/chat",
     {"model": MODEL, "stream": False, "messages": [{"role": "user", "content": "word " * 1_000_000}]}),
    ("options: a 400-digit seed", "POST", "/api/generate",
     {"model": MODEL, "prompt": "hi", "stream": False, "options": {"seed": 10**400}}),
    ("options: 65 stop strings", "POST", "/v1/chat/completions",
     {"model": MODEL, "messages": CHAT, "stop": [f"s{i}" for i in range(65)]}),
]


@pytest.fixture(scope="module")
def hostile_server(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = own_home(model_home, tmp_path_factory.mktemp("hostile-home"))
    live = LiveServer(home, "--model", MODEL, "--parallel", "2", "--ctx-size", "1024", "--keep-alive", "-1",
                      env={"LOKAL_PREFIX_CACHE_RAM_MIB": "0", "LOKAL_MAX_TOKENS_LIMIT": "16"})
    yield live
    live.stop()


class HealthWatch:
    """Polls /health every 0.1 s on its own thread and keeps the slowest answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.slowest = 0.0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    status = client.get(f"{self.url}/health").status_code
                    if status != 200:
                        self.failures.append(f"/health answered {status}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"/health failed: {exc!r}")
                self.slowest = max(self.slowest, time.perf_counter() - started)
                self._stop.wait(0.1)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def send(url: str, method: str, path: str, body: object) -> httpx.Response:
    data = json.dumps(body, ensure_ascii=True).encode()  # lone surrogates travel as \ud800 escapes
    return httpx.request(method, f"{url}{path}", content=data, headers={"content-type": "application/json"},
                         timeout=120)


def big_header(url: str, size: int) -> str:
    """Send a request whose one header is ``size`` bytes over a raw socket; the status line back."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = f"GET /health HTTP/1.1\r\nHost: {host}\r\nX-Big: ".encode()
        try:
            sock.sendall(head + b"a" * size + b"\r\n\r\n")
        except OSError:
            return "closed while sending"
        answer = sock.recv(256).decode("latin-1")
    return answer.split("\r\n", 1)[0] if answer else "closed"


def test_hostile_inputs_get_4xx_while_the_server_stays_responsive_and_bounded(hostile_server: LiveServer) -> None:
    url = hostile_server.url
    normal = {"model": MODEL, "messages": CHAT, "max_tokens": 8, "temperature": 0}
    assert httpx.post(f"{url}/v1/chat/completions", json=normal, timeout=120).status_code == 200  # warm
    process = psutil.Process(hostile_server.proc.pid)
    rss_before = process.memory_info().rss
    results: dict[str, int] = {}
    with HealthWatch(url) as watch:
        normal_result: list[int] = []
        background = threading.Thread(target=lambda: normal_result.append(
            httpx.post(f"{url}/v1/chat/completions", json=normal, timeout=120).status_code))
        background.start()
        for name, method, path, body in CASES:
            results[name] = send(url, method, path, body).status_code
        results["size: a 1 MB header"] = 431 if big_header(url, 1 << 20).split(" ")[1:2] == ["431"] else 0
        # A lone surrogate in UI text is stored as U+FFFD (the UI itself may cut an emoji in half).
        made = send(url, "POST", "/ui/api/conversations", {"title": "a\ud800b"})
        assert made.status_code == 201 and made.json()["title"] == "a\ufffdb"
        background.join(timeout=120)
        assert httpx.get(f"{url}/ui/api/conversations", timeout=30).status_code == 200
        assert httpx.get(f"{url}/ui/api/monitor", timeout=30).status_code == 200
        results["after: a normal generation"] = httpx.post(f"{url}/v1/chat/completions", json=normal,
                                                           timeout=120).status_code
    rss_growth_mib = (process.memory_info().rss - rss_before) / 2**20
    bad = {name: status for name, status in results.items()
           if not (400 <= status < 500) and not (name.startswith("after") and status == 200)}
    assert not bad, f"not a 4xx: {bad}"
    assert normal_result == [200], "a normal generation beside the hostile ones did not complete"
    assert not watch.failures, watch.failures[:3]
    assert watch.slowest < HEALTH_BOUND_S, f"/health took {watch.slowest:.2f} s"
    assert rss_growth_mib < RSS_BOUND_MIB, f"RSS grew by {rss_growth_mib:.0f} MiB"
