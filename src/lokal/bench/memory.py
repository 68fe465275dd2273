"""Peak memory of local targets: RSS of a process tree (by PID, or found by its loopback port), GPU memory."""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlsplit

import psutil


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its children, in bytes (0 once it is gone)."""
    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            pass
    return total


def pid_for_url(url: str) -> int | None:
    """The PID listening on a loopback URL's port, when it is this machine's and visible to us."""
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1", "0.0.0.0"):
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return int(conn.pid)
    except (psutil.Error, OSError):
        return None
    return None


def gpu_used_mib(pids: set[int]) -> float | None:
    """GPU memory used by these processes (all GPUs), or None without NVIDIA's NVML (`nvidia-ml-py`)."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver, no GPU
        return None
    try:
        used = 0
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid in pids and proc.usedGpuMemory:
                    used += proc.usedGpuMemory
        return used / 2**20
    finally:
        pynvml.nvmlShutdown()


def _tree_pids(pid: int) -> set[int]:
    try:
        p = psutil.Process(pid)
        return {pid, *(c.pid for c in p.children(recursive=True))}
    except psutil.Error:
        return set()


class MemorySampler:
    """Samples the RSS (and GPU memory) of some process trees in a thread; keeps each one's peak."""

    def __init__(self, pids: dict[str, int], interval: float = 0.25) -> None:
        self.pids = pids
        self.interval = interval
        self.peak_rss: dict[str, int] = {name: 0 for name in pids}
        self.peak_gpu: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-memory", daemon=True)

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def sample(self) -> None:
        for name, pid in self.pids.items():
            self.peak_rss[name] = max(self.peak_rss[name], tree_rss_bytes(pid))
        for name, pid in self.pids.items():
            gpu = gpu_used_mib(_tree_pids(pid))
            if gpu is not None:
                self.peak_gpu[name] = max(self.peak_gpu.get(name, 0.0), gpu)

    def _loop(self) -> None:
        gpu_every = 8  # NVML init per sample is slow; look at the GPU every 8th sample
        n = 0
        while not self._stop.wait(self.interval):
            for name, pid in self.pids.items():
                self.peak_rss[name] = max(self.peak_rss[name], tree_rss_bytes(pid))
            n += 1
            if n % gpu_every == 0:
                for name, pid in self.pids.items():
                    gpu = gpu_used_mib(_tree_pids(pid))
                    if gpu is not None:
                        self.peak_gpu[name] = max(self.peak_gpu.get(name, 0.0), gpu)

    def result(self, name: str) -> dict[str, Any]:
        rss = self.peak_rss.get(name)
        return {"pid": self.pids.get(name), "peak_rss_mib": rss / 2**20 if rss else None,
                "peak_gpu_mib": self.peak_gpu.get(name)}
