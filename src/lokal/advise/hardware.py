"""What this machine has: CPU, SIMD flags, RAM, disk under $LOKAL_HOME, NVIDIA GPUs.

Detection never raises: a missing /proc file, driver or library leaves a field empty. Tests
build a :class:`Hardware` by hand to simulate another machine.
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SIMD_FLAGS = ("avx", "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "f16c", "fma", "neon", "sve", "asimd")


@dataclass(frozen=True)
class Gpu:
    """One GPU: its memory (bytes) and, when NVML says, how busy it is."""

    name: str
    memory_total: int
    memory_free: int
    vendor: str = "nvidia"
    index: int = 0  # NVML's (PCI bus order; CUDA's is the same with CUDA_DEVICE_ORDER=PCI_BUS_ID)
    memory_used: int = 0
    utilization: float | None = None  # share of the last sample period a kernel ran, 0..1


@dataclass(frozen=True)
class Hardware:
    """The facts advise, cost and recommend plan with."""

    cpu_model: str
    cores: int  # logical CPUs this process may use
    physical_cores: int | None
    simd: tuple[str, ...]
    ram_total: int
    ram_available: int
    disk_free: int | None  # under $LOKAL_HOME (or the nearest existing parent)
    gpus: tuple[Gpu, ...] = field(default_factory=tuple)
    system: str = ""

    @property
    def gpu_memory_total(self) -> int:
        return sum(g.memory_total for g in self.gpus)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["simd"] = list(self.simd)
        data["gpus"] = [asdict(g) for g in self.gpus]
        return data


def detect_hardware(home: Path | None = None) -> Hardware:
    """This machine's facts; ``home`` is where models are stored (for free disk space)."""
    import psutil

    vm = psutil.virtual_memory()
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return Hardware(
        cpu_model=cpu_model(),
        cores=cores,
        physical_cores=psutil.cpu_count(logical=False),
        simd=simd_flags(),
        ram_total=int(vm.total),
        ram_available=int(vm.available),
        disk_free=disk_free(home) if home is not None else None,
        gpus=nvidia_gpus(),
        system=f"{platform.system()} {platform.machine()}",
    )


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``), else what the platform module says."""
    info = _cpuinfo()
    for key in ("model name", "Model", "Hardware", "cpu model"):
        if info.get(key):
            return info[key]
    return platform.processor() or platform.machine() or "unknown"


def simd_flags() -> tuple[str, ...]:
    """The SIMD extensions llama.cpp cares about, from /proc/cpuinfo's flags (x86) or Features (ARM);
    falling back to llama.cpp's own system_info line when /proc is not there."""
    info = _cpuinfo()
    words = set((info.get("flags") or info.get("Features") or "").split())
    if not words:
        words = _llama_cpp_flags()
    if platform.machine().lower() in ("arm64", "aarch64") and not words:
        words = {"neon"}  # every 64-bit ARM CPU has NEON (ASIMD)
    if "asimd" in words:
        words.add("neon")
    return tuple(flag for flag in SIMD_FLAGS if flag in words)


def disk_free(home: Path) -> int | None:
    """Free bytes on the filesystem that holds ``home`` (which may not exist yet)."""
    path = Path(home).expanduser()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def nvidia_gpus() -> tuple[Gpu, ...]:
    """NVIDIA GPUs through NVML (``nvidia-ml-py``); none, quietly, without a driver or the library."""
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return ()
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound, DriverNotLoaded, …: no NVIDIA GPU here
        return ()
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            try:
                utilization: float | None = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100
            except Exception:  # not supported on this device (some vGPUs, MIG instances)
                utilization = None
            gpus.append(Gpu(name=name.decode() if isinstance(name, bytes) else str(name),
                            memory_total=int(mem.total), memory_free=int(mem.free), index=i,
                            memory_used=int(getattr(mem, "used", mem.total - mem.free)), utilization=utilization))
        return tuple(gpus)
    except Exception:
        return ()
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def cuda_visible(gpus: tuple[Gpu, ...], visible: str | None = None) -> tuple[Gpu, ...]:
    """The GPUs CUDA (and so llama.cpp) sees, in its order: ``CUDA_VISIBLE_DEVICES`` (``visible``)
    as a list of NVML indices picks and orders them; unset, or given as UUIDs or MIG names (not
    matched here), all of them."""
    text = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    if text is None:
        return gpus
    by_index = {g.index: g for g in gpus}
    picked: list[Gpu] = []
    for part in text.split(","):
        part = part.strip()
        if not part.lstrip("-").isdigit():
            return gpus if part else tuple(picked)
        if int(part) not in by_index:
            break  # CUDA stops at the first invalid index
        picked.append(by_index[int(part)])
    return tuple(picked)


def _cpuinfo() -> dict[str, str]:
    """The first processor's block of /proc/cpuinfo as a dict ({} where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if info.get("flags") or info.get("Features"):
                break
            continue
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def _llama_cpp_flags() -> set[str]:
    """``AVX2 = 1 | AVX512 = 1 | NEON = 1`` from llama.cpp's system_info, lower-cased."""
    try:
        from lokal.engine.llama_model import system_info

        line = system_info()
    except Exception:
        return set()
    flags = set()
    for part in line.replace("CPU :", "|").split("|"):
        name, _, value = part.partition("=")
        if value.strip() == "1":
            flag = name.strip().lower()
            flags.add("avx512f" if flag == "avx512" else flag)
    return flags
