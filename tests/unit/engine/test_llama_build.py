"""lokal's llama-cpp-python build (scripts/install.sh + scripts/llama_cpp_patch.py): llamafile's sgemm
on, and ggml's CPU kernels chosen per llama_decode by the calling thread (prompt or decode mode)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import llama_cpp

from lokal.engine.llama_model import batch_invariant_flash_attention, kernel_modes, system_info

ROOT = Path(__file__).resolve().parents[3]
PATCH = ROOT / "scripts" / "llama_cpp_patch.py"


def test_the_installed_llama_cpp_is_lokals_build() -> None:
    assert "+lokal." in llama_cpp.__version__
    assert batch_invariant_flash_attention()
    assert kernel_modes() is not None  # the exported lokal_ggml_set_prompt_mode
    assert "LLAMAFILE = 1" in system_info()


def test_patch_fails_loudly_when_the_source_moved_on(tmp_path: Path) -> None:
    header = tmp_path / "vendor/llama.cpp/ggml/include/ggml-cpu.h"
    header.parent.mkdir(parents=True)
    header.write_text("struct ggml_cplan { bool other; };\n")
    init = tmp_path / "llama_cpp/__init__.py"
    init.parent.mkdir(parents=True)
    init.write_text('from .llama_cpp import *\n\n__version__ = "0.3.36"\n')
    run = subprocess.run([sys.executable, str(PATCH), str(tmp_path), "lokal.9"], capture_output=True, text=True)
    assert run.returncode != 0 and "expected exactly one" in run.stderr
    assert '"0.3.36"' in init.read_text()  # the version is labelled only once every edit applied
