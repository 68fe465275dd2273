"""SIGTERM during a stream: the stream finishes, new connections are refused, the process exits 0;
a second signal exits at once."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import LiveServer
from tests.integration.security.conftest import MODEL
from tests.integration.server.test_ollama_api import own_home

pytestmark = pytest.mark.slow


def start(model_home: Path, home: Path, grace: str) -> LiveServer:
    return LiveServer(own_home(model_home, home), "--model", MODEL, "--parallel", "2", "--ctx-size", "1024",
                      env={"LOKAL_SHUTDOWN_GRACE": grace, "LOKAL_AUDIT_LOG": "false"})


def stream_in_thread(url: str, max_tokens: int, first_chunk: threading.Event, result: dict[str, object]) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a long story."}], "stream": True,
            "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0}
    chunks, finish = 0, None
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as r:
            for line in r.iter_lines():
                if line == "data: [DONE]":
                    result["done"] = True
                elif line.startswith("data: {"):
                    chunks += 1
                    first_chunk.set()
                    finish = json.loads(line[6:])["choices"][0]["finish_reason"] or finish
    except httpx.HTTPError as exc:
        result["error"] = repr(exc)
    finally:
        first_chunk.set()
        result["chunks"], result["finish"] = chunks, finish


def refuses_connections(url: str, within_s: float = 10.0) -> bool:
    """True once the server no longer accepts connections (it stops listening at the signal)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/health", timeout=2)
        except httpx.ConnectError:
            return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def test_sigterm_lets_a_running_stream_finish_then_exits_cleanly(model_home: Path, tmp_path: Path) -> None:
    live = start(model_home, tmp_path, "90")
    first, result = threading.Event(), {}
    reader = threading.Thread(target=stream_in_thread, args=(live.url, 40, first, result))
    reader.start()
    assert first.wait(60)
    live.proc.send_signal(signal.SIGTERM)
    assert refuses_connections(live.url)
    reader.join(120)
    assert result.get("done") is True and "error" not in result, (result, live.log.read_text()[-3000:])
    assert result["finish"] == "length" and int(result["chunks"]) >= 40  # type: ignore[call-overload]
    assert live.proc.wait(60) == 0
    log = live.log.read_text()
    assert "finishing running requests" in log and "Traceback" not in log


def test_a_second_signal_exits_at_once(model_home: Path, tmp_path: Path) -> None:
    live = start(model_home, tmp_path, "120")
    first, result = threading.Event(), {}
    reader = threading.Thread(target=stream_in_thread, args=(live.url, 100_000, first, result))
    reader.start()
    assert first.wait(60)
    live.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert live.proc.poll() is None  # still finishing the stream (grace 120 s)
    started = time.monotonic()
    live.proc.send_signal(signal.SIGINT)
    live.proc.wait(10)
    assert time.monotonic() - started < 5
    assert live.proc.returncode != 0
    reader.join(30)
