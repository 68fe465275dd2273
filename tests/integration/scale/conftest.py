"""A two-node Ray cluster on loopback (a head and a worker, one CPU each, in a temporary
directory) and ``lokal serve --ray`` in front of two replicas of smollm2:135m on it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import LiveServer, free_port

RAY = str(Path(sys.executable).parent / "ray")
REPLICA_TITLE = "ServeReplica:lokal:LokalReplica"
# Every process of the test cluster (nodes, ingress, serve run) without Ray's token auth, whether or
# not this machine has a ~/.ray/auth_token (a local ray.init() writes one).
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}


class RayCluster:
    """``ray start --block`` processes (stopping them stops everything they started)."""

    def __init__(self) -> None:
        self.temp = tempfile.mkdtemp(prefix="lokal-ray-")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        common = ["--num-cpus", "1", "--disable-usage-stats", "--block"]
        env = {**os.environ, **RAY_ENV}
        self.log = Path(self.temp) / "ray-start.log"
        out = self.log.open("w")
        head = ["--head", "--port", str(self.port), "--temp-dir", self.temp, "--include-dashboard=false"]
        self.head = subprocess.Popen([RAY, "start", *head, "--node-ip-address", "127.0.0.1", *common],
                                     env=env, stdout=out, stderr=subprocess.STDOUT)
        self._wait_for_head()
        self.worker = subprocess.Popen([RAY, "start", "--address", self.address, "--node-ip-address", "127.0.0.1",
                                        *common], env=env, stdout=out, stderr=subprocess.STDOUT)

    def _wait_for_head(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.head.poll() is not None:
                raise RuntimeError(f"ray start --head exited: {self.log.read_text()[-3000:]}")
            if "Ray runtime started" in self.log.read_text():
                return
            time.sleep(0.5)
        raise RuntimeError(f"the Ray head did not start: {self.log.read_text()[-3000:]}")

    def replica_pids(self) -> list[int]:
        """The replica actors' processes (the Ray workers running lokal's deployment)."""
        found = []
        for root in (self.head, self.worker):
            try:
                children = psutil.Process(root.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            for p in children:
                try:
                    if REPLICA_TITLE in " ".join(p.cmdline()):
                        found.append(p.pid)
                except psutil.Error:
                    continue
        return found

    def stop(self) -> None:
        for proc in (self.worker, self.head):
            proc.terminate()
        for proc in (self.worker, self.head):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    cluster = RayCluster()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def ingress(ray_cluster: RayCluster, model_home: Path) -> Iterator[LiveServer]:
    """``lokal serve --ray ADDRESS --replicas 2`` with 1 thread and 4 slots per replica; a request no
    replica takes within 1 s is a 503."""
    live = LiveServer(model_home, "--ray", ray_cluster.address, "--replicas", "2", "--threads", "1",
                      "--parallel", "4", "--ctx-size", "1024", "--max-queue", "64", "--keep-alive", "-1",
                      env={"LOKAL_AUDIT_LOG": "false", "LOKAL_RAY_ROUTE_TIMEOUT": "1", **RAY_ENV})
    yield live
    live.stop()
