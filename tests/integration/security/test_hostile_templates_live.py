"""A request's ``template`` (and a Modelfile's TEMPLATE) is untrusted: a hostile one gets a 400 within
the render budget, while /health keeps answering and other generations complete; it cannot make
the server allocate gigabytes; `lokal create` refuses it in one line, in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lokal.store.model_store import ModelStore
from lokal.templates.chat_template import MAX_RENDER_S
from tests.integration.conftest import LiveServer
from tests.integration.security.conftest import MODEL
from tests.integration.server.test_ollama_api import own_home

pytestmark = pytest.mark.slow

NESTED_LOOPS = "{% set s = '" + "x" * 40_000 + "' %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}"
CENTER = "{{ 'x'|center(1000000000) }}"


@pytest.fixture(scope="module")
def live(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(own_home(model_home, tmp_path_factory.mktemp("hostile-home")), "--model", MODEL,
                        "--parallel", "2", "--ctx-size", "1024", "--keep-alive", "-1",
                        env={"LOKAL_AUDIT_LOG": "false"})
    yield server
    server.stop()


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


class HealthPoller(threading.Thread):
    """GET /health every 0.1 s; records how long each answer took (or that it failed)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.failures: list[str] = []

    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self.stop.is_set():
                started = time.perf_counter()
                try:
                    status = client.get(self.url + "/health").status_code
                    if status != 200:
                        self.failures.append(f"status {status}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self.latencies.append(time.perf_counter() - started)
                self.stop.wait(0.1)


def _normal_generation(url: str, result: dict[str, Any]) -> None:
    body = {"model": MODEL, "prompt": "Say hello.", "stream": False, "options": {"num_predict": 16, "temperature": 0}}
    try:
        r = httpx.post(url + "/api/generate", json=body, timeout=60)
        result["status"], result["body"] = r.status_code, r.json()
    except httpx.HTTPError as exc:
        result["error"] = repr(exc)


@pytest.mark.parametrize(("template", "error"), [(NESTED_LOOPS, "took longer than"), (CENTER, "needed more than")],
                         ids=["nested loops", "center a billion"])
def test_a_hostile_request_template_is_a_quick_400_and_nobody_else_waits(
        live: LiveServer, template: str, error: str) -> None:
    # the model answers first, so that the timings below are the hostile request's alone
    warm: dict[str, Any] = {}
    _normal_generation(live.url, warm)
    assert warm.get("status") == 200, warm
    peak = _peak_rss_mib(live.proc.pid)

    poller = HealthPoller(live.url)
    poller.start()
    time.sleep(0.3)
    normal: dict[str, Any] = {}
    other = threading.Thread(target=_normal_generation, args=(live.url, normal))
    body = {"model": MODEL, "prompt": "hi", "stream": False, "template": template}
    started = time.perf_counter()
    other.start()
    try:
        r = httpx.post(live.url + "/api/generate", json=body, timeout=30)
        took = time.perf_counter() - started
        other.join(timeout=60)
        time.sleep(0.3)
    finally:
        poller.stop.set()
        poller.join(timeout=10)

    assert r.status_code == 400, r.text
    assert list(r.json()) == ["error"] and error in r.json()["error"], r.json()  # Ollama's error shape
    assert took < MAX_RENDER_S + 2
    assert not poller.failures
    assert len(poller.latencies) >= 5 and max(poller.latencies) < 1.0, max(poller.latencies)  # polled throughout
    assert normal.get("status") == 200 and normal["body"]["response"], normal
    assert _peak_rss_mib(live.proc.pid) - peak < 100


def test_the_server_keeps_serving_a_normal_request_template_after_hostile_ones(live: LiveServer) -> None:
    body = {"model": MODEL, "prompt": "hi", "stream": False, "raw": False, "options": {"num_predict": 4},
            "template": "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                        "<|im_start|>assistant\n"}
    for template in (NESTED_LOOPS, CENTER):
        bad = httpx.post(live.url + "/api/generate", json={**body, "template": template}, timeout=30)
        assert bad.status_code == 400
    r = httpx.post(live.url + "/api/generate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["done"] is True


@pytest.mark.parametrize(("template", "error"), [(CENTER, "needed more than"), (NESTED_LOOPS, "took longer than")],
                         ids=["center a billion", "nested loops"])
def test_lokal_create_refuses_a_hostile_template_in_one_line_within_seconds(
        model_home: Path, tmp_path: Path, template: str, error: str) -> None:
    home = own_home(model_home, tmp_path / "home")
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f'FROM {MODEL}\nTEMPLATE """{template}"""\n')
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lokal.cli.main", "create", "hostile", "-f", str(modelfile)],
                          env={**os.environ, "LOKAL_HOME": str(home), "COLUMNS": "200"},
                          capture_output=True, text=True, timeout=60)
    took = time.perf_counter() - started
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: TEMPLATE:") and error in lines[0], done.stderr
    assert took < 15  # the CLI's start and the 2 s budget; it ran 90 s before
    assert not ModelStore(home).exists("hostile")
