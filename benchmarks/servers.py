"""Start OpenAI-compatible servers for benchmarks: lokal, llama-cpp-python's server, llama.cpp's llama-server.

Each launcher returns a `Server` (a context manager) that starts the process on a loopback port, waits
until it answers, and stops it on exit. All of them serve the same GGUF with the same threads.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


@dataclass
class Server:
    name: str
    argv: list[str]
    port: int
    model: str  # the name to send in requests
    env: dict[str, str] = field(default_factory=dict)
    health: str = "/v1/models"
    log: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        out = open(self.log, "wb") if self.log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(self.argv, env={**os.environ, **self.env}, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {' '.join(self.argv)}")
            try:
                if httpx.get(self.url + self.health, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise TimeoutError(f"{self.name} did not answer on {self.url}")

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def rss_mib(self) -> float:
        """Resident memory of the server process and its children."""
        import psutil

        assert self.proc is not None
        p = psutil.Process(self.proc.pid)
        return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]) / 2**20


def lokal(
    model: str, home: Path, threads: int, slots: int, ctx: int, port: int = 11481, prefix_cache: bool = True,
) -> Server:
    argv = [sys.executable, "-m", "lokal.cli.main", "serve", "--port", str(port), "--model", model,
            "--parallel", str(slots), "--ctx-size", str(ctx), "--threads", str(threads)]
    env = {"LOKAL_HOME": str(home), "LOKAL_PREFIX_CACHE": "1" if prefix_cache else "0"}
    return Server("lokal", argv, port, model, env, health="/health")


def llama_cpp_python(gguf: Path, threads: int, ctx: int, port: int = 11482) -> Server:
    """llama-cpp-python's own server (`python -m llama_cpp.server`): one request at a time.

    `--interrupt_requests False`: by default a new request cuts off the one being streamed."""
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "bench",
            "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", str(ctx),
            "--host", "127.0.0.1", "--port", str(port), "--interrupt_requests", "False"]
    return Server("llama-cpp-python server", argv, port, "bench")


def llama_server(binary: str, gguf: Path, threads: int, slots: int, ctx: int, port: int = 11483) -> Server:
    """llama.cpp's llama-server with `-np slots` and `ctx` tokens per slot (its -c is the total).

    `--threads-http 64`: its default (slots + 2 here) drops connections beyond that many clients."""
    argv = [binary, "-m", str(gguf), "-t", str(threads), "-tb", str(threads), "-np", str(slots),
            "-c", str(ctx * slots), "--host", "127.0.0.1", "--port", str(port), "--alias", "bench", "--no-webui",
            "--threads-http", "64"]
    return Server("llama-server", argv, port, "bench", health="/health")
