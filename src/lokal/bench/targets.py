"""Who is measured: lokal started by the bench, any OpenAI-compatible URL, Ollama's native API, local peers.

A target spec on the command line is one of:

- `lokal` or `lokal:MODEL`: `lokal serve` started by the bench on a free loopback port;
- `llama-server:PATH`: llama.cpp's `llama-server` binary at PATH, started with the bench model's GGUF;
- `llama-cpp-python`: llama-cpp-python's own server (`python -m llama_cpp.server`, the `bench` extra);
- `NAME=URL@MODEL`: a server you started; OpenAI-compatible (`/v1/chat/completions`) unless NAME is
  `ollama` (or starts with `ollama`) or URL starts with `ollama+`, which selects Ollama's `/api/chat`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx

Api = Literal["openai", "ollama"]


@dataclass
class Target:
    """One system under test: where to send requests, with which model name and API."""

    name: str
    url: str  # base URL without /v1
    model: str
    api: Api = "openai"
    kind: str = "url"  # lokal | llama-server | llama-cpp-python | url
    server: LocalServer | None = None  # set when the bench starts the process

    @property
    def pid(self) -> int | None:
        return self.server.proc.pid if self.server and self.server.proc else None


@dataclass
class LocalServer:
    """A server process on a loopback port: started on enter, stopped on exit."""

    name: str
    argv: list[str]
    port: int
    model: str  # the name to send in requests
    env: dict[str, str] = field(default_factory=dict)
    health: str = "/v1/models"
    log: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    startup_timeout: float = 300.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LocalServer:
        if port_in_use(self.port):  # else another server would answer our health check and be measured instead
            raise RuntimeError(f"port {self.port} is already in use")
        out = open(self.log, "wb") if self.log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(self.argv, env={**os.environ, **self.env}, stdout=out, stderr=subprocess.STDOUT)
        try:
            self._wait_ready()
        except BaseException:  # a timeout, a crash or Ctrl-C while it starts: never leave it running
            self.__exit__()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {' '.join(self.argv)}")
            try:
                if httpx.get(self.url + self.health, timeout=2).status_code == 200 and self.proc.poll() is None:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} did not answer on {self.url} within {self.startup_timeout:.0f} s")

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def rss_mib(self) -> float:
        """Resident memory of the server process and its children now."""
        from lokal.bench.memory import tree_rss_bytes

        assert self.proc is not None
        return tree_rss_bytes(self.proc.pid) / 2**20


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lokal_server(
    model: str, home: Path, threads: int, slots: int, ctx: int, port: int | None = None, prefix_cache: bool = True,
) -> LocalServer:
    port = port or free_port()
    argv = [sys.executable, "-m", "lokal.cli.main", "serve", "--port", str(port), "--model", model,
            "--parallel", str(slots), "--ctx-size", str(ctx), "--threads", str(threads), "--keep-alive", "-1"]
    env = {"LOKAL_HOME": str(home), "LOKAL_PREFIX_CACHE": "1" if prefix_cache else "0"}
    return LocalServer("lokal", argv, port, model, env, health="/health")


def llama_cpp_python(gguf: Path, threads: int, ctx: int, port: int | None = None) -> LocalServer:
    """llama-cpp-python's own server (`python -m llama_cpp.server`): one request at a time.

    `--interrupt_requests False`: by default a new request cuts off the one being streamed."""
    port = port or free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "bench",
            "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", str(ctx),
            "--host", "127.0.0.1", "--port", str(port), "--interrupt_requests", "False"]
    return LocalServer("llama-cpp-python", argv, port, "bench")


def llama_server(binary: str, gguf: Path, threads: int, slots: int, ctx: int, port: int | None = None) -> LocalServer:
    """llama.cpp's llama-server with `-np slots` and `ctx` tokens per slot (its -c is the total).

    `--threads-http 64`: its default (slots + 2) drops connections beyond that many clients."""
    port = port or free_port()
    argv = [binary, "-m", str(gguf), "-t", str(threads), "-tb", str(threads), "-np", str(slots),
            "-c", str(ctx * slots), "--host", "127.0.0.1", "--port", str(port), "--alias", "bench", "--no-webui",
            "--threads-http", "64"]
    return LocalServer("llama-server", argv, port, "bench", health="/health")


@dataclass
class LocalOptions:
    """What a target the bench starts itself needs: the model, its GGUF and the machine's share."""

    model: str
    home: Path
    threads: int
    slots: int
    ctx: int
    gguf: Path | None = None


class TargetSpecError(ValueError):
    """A --target string that cannot be understood."""


def parse_target(spec: str, local: LocalOptions) -> Target:
    """Turn one `--target` string into a Target (a started-by-us one carries its LocalServer, not yet entered)."""
    if "=" in spec and "://" in spec:
        name, rest = spec.split("=", 1)
        url, sep, model = rest.rpartition("@")
        if not sep or "://" not in url:
            url, model = rest, local.model
        api: Api = "ollama" if name.startswith("ollama") or url.startswith("ollama+") else "openai"
        url = url.removeprefix("ollama+").removeprefix("openai+").rstrip("/").removesuffix("/v1")
        if api == "ollama":
            url = url.removesuffix("/api")
        return Target(name=name, url=url, model=model or local.model, api=api)
    head, _, arg = spec.partition(":")
    if head == "lokal":
        srv = lokal_server(arg or local.model, local.home, local.threads, local.slots, local.ctx)
        return Target("lokal", srv.url, srv.model, kind="lokal", server=srv)
    if head == "llama-server":
        if not arg or local.gguf is None:
            raise TargetSpecError("llama-server:PATH needs the binary's path and a model in the store")
        srv = llama_server(arg, local.gguf, local.threads, local.slots, local.ctx)
        return Target("llama-server", srv.url, srv.model, kind="llama-server", server=srv)
    if head == "llama-cpp-python":
        if local.gguf is None:
            raise TargetSpecError("llama-cpp-python needs a model in the store")
        srv = llama_cpp_python(local.gguf, local.threads, local.ctx)
        return Target("llama-cpp-python", srv.url, srv.model, kind="llama-cpp-python", server=srv)
    raise TargetSpecError(
        f"bad target {spec!r}: use lokal[:MODEL], llama-server:PATH, llama-cpp-python or NAME=URL@MODEL"
    )
