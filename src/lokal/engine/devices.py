"""Which llama.cpp backend this process runs on: ggml's device registry (CPU, CUDA0, ...) and
whether the build offloads to a GPU.

The registry is read through ctypes from the libggml that llama.cpp loaded: the wheel holds copies
(not links) of each library, and ``llama_cpp._ggml`` opens another copy with a registry of its own.
A CUDA device's memory query (cudaMemGetInfo) makes its CUDA context if llama.cpp has not yet.
NVML's view of the GPUs (no context, also without a CUDA build) is ``lokal.advise.hardware``."""

from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# ggml_backend_dev_type (ggml-backend.h), in order
DEVICE_KINDS = ("cpu", "gpu", "igpu", "accel", "meta")


@dataclass(frozen=True)
class Device:
    """One ggml device: ``name`` is ggml's ("CPU", "CUDA0"), ``description`` the hardware's
    ("NVIDIA H100 80GB HBM3", the CPU's model name); memory in bytes as ggml reports it (a CPU's
    free memory is its total: ggml does not track it)."""

    name: str
    description: str
    kind: str  # one of DEVICE_KINDS
    memory_total: int
    memory_free: int


@dataclass(frozen=True)
class Backend:
    """The llama.cpp build in use: ``name`` "cpu", or the GPU backend's ("cuda"), and its devices."""

    name: str
    gpu_offload: bool  # llama_supports_gpu_offload()
    devices: tuple[Device, ...]

    def summary(self) -> str:
        """``cuda (CUDA0: NVIDIA H100 80GB HBM3)``: the backend and the devices it computes on."""
        kinds = ("cpu",) if self.name == "cpu" else ("gpu", "igpu")
        shown = [d for d in self.devices if d.kind in kinds]
        return f"{self.name} ({', '.join(f'{d.name}: {d.description}' for d in shown) or 'no devices'})"

    def note(self, nvidia_gpus: tuple[str, ...]) -> str:
        """What to do when this build and the machine's NVIDIA GPUs (NVML's names) disagree, or ""."""
        if self.gpu_offload and self.name == "cpu":
            return ("this llama.cpp is built for GPUs but finds none: check nvidia-smi, the driver's CUDA "
                    "version and CUDA_VISIBLE_DEVICES")
        if not self.gpu_offload and nvidia_gpus:
            return cpu_build_note(nvidia_gpus)
        return ""

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.name, "gpu_offload": self.gpu_offload, "devices": [asdict(d) for d in self.devices]}


def cpu_build_note(nvidia_gpus: tuple[str, ...]) -> str:
    """The one line lokal says wherever NVIDIA GPUs sit beside a CPU-only llama.cpp build."""
    return (f"{', '.join(sorted(set(nvidia_gpus)))} found, but this llama.cpp build is CPU-only: the GPUs are "
            "not used; reinstall with LOKAL_GPU=cuda scripts/install.sh (docs/gpu.md)")


def gpu_offload_supported() -> bool:
    """Whether the installed llama.cpp can put layers on a GPU (a CUDA build, found GPU or not)."""
    try:
        import llama_cpp as C

        return bool(C.llama_supports_gpu_offload())
    except Exception:  # no llama_cpp, or one without the function
        return False


def backend() -> Backend:
    """This process's llama.cpp backend and devices, memory as of now. Never raises: without
    llama.cpp or its registry, the "cpu" backend with the devices that could be read."""
    try:

        from lokal.engine.llama_model import init_backend

        init_backend()  # llama.cpp's logging quieted before the registry initialises the backends
        offload = gpu_offload_supported()
    except Exception:
        return Backend("cpu", False, ())
    devices: list[Device] = []
    gpu_backend = ""
    try:
        lib = _ggml()
        for i in range(lib.ggml_backend_dev_count() if lib is not None else 0):
            dev = lib.ggml_backend_dev_get(i)
            kind_id = lib.ggml_backend_dev_type(dev)
            kind = DEVICE_KINDS[kind_id] if 0 <= kind_id < len(DEVICE_KINDS) else str(kind_id)
            free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
            lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
            devices.append(Device(name=_text(lib.ggml_backend_dev_name(dev)),
                                  description=_text(lib.ggml_backend_dev_description(dev)),
                                  kind=kind, memory_total=total.value, memory_free=free.value))
            if kind in ("gpu", "igpu") and not gpu_backend:
                gpu_backend = _text(lib.ggml_backend_reg_name(lib.ggml_backend_dev_backend_reg(dev))).lower()
    except Exception:
        pass  # the devices read so far
    return Backend(gpu_backend or "cpu", offload, tuple(devices))


@functools.cache
def _ggml() -> Any:
    """The libggml llama.cpp loaded, with the registry functions typed; None where it is not found."""
    import llama_cpp as C

    no_load = getattr(os, "RTLD_NOLOAD", None)
    if no_load is None:
        return None
    for path in sorted((Path(C.__file__).parent / "lib").glob("libggml.so*")):
        try:
            lib = ctypes.CDLL(str(path), mode=no_load)  # only the copy that is loaded opens
        except OSError:
            continue
        dev, text = ctypes.c_void_p, ctypes.c_char_p
        size_p = ctypes.POINTER(ctypes.c_size_t)
        for name, restype, argtypes in (
            ("ggml_backend_dev_count", ctypes.c_size_t, []),
            ("ggml_backend_dev_get", dev, [ctypes.c_size_t]),
            ("ggml_backend_dev_name", text, [dev]),
            ("ggml_backend_dev_description", text, [dev]),
            ("ggml_backend_dev_type", ctypes.c_int, [dev]),
            ("ggml_backend_dev_memory", None, [dev, size_p, size_p]),
            ("ggml_backend_dev_backend_reg", ctypes.c_void_p, [dev]),
            ("ggml_backend_reg_name", text, [ctypes.c_void_p]),
        ):
            fn = getattr(lib, name)  # libggml-base's, found through libggml's dependencies
            fn.restype, fn.argtypes = restype, argtypes
        return lib
    return None


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", "replace") if raw else ""
