"""`lokal --version` names llama.cpp's build and the backend it computes on."""

from __future__ import annotations

import os
import subprocess
import sys

import llama_cpp

from lokal import __version__
from lokal.advise.hardware import nvidia_gpus
from lokal.engine.devices import backend


def test_version_names_the_llama_cpp_build_and_its_backend_devices() -> None:
    run = subprocess.run([sys.executable, "-m", "lokal.cli.main", "--version"],
                         env={**os.environ, "COLUMNS": "80"}, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    first, *rest = run.stdout.splitlines()
    found = backend()
    assert first == f"lokal {__version__} · llama.cpp {llama_cpp.__version__} · backend {found.summary()}"
    # a CPU-only build beside NVIDIA GPUs, or a GPU build without one, says so (Backend.note)
    note = found.note(tuple(g.name for g in nvidia_gpus()))
    assert rest == ([f"note: {note}"] if note else [])
