"""lokal's llama-cpp-python build: sgemm off, flash attention patched to its per-row kernel
(scripts/install.sh + scripts/llama_cpp_patch.sh), and the engine turning flash attention on only
for that build."""

from __future__ import annotations

import subprocess
from pathlib import Path

import llama_cpp

from lokal.engine.llama_model import batch_invariant_flash_attention, system_info

ROOT = Path(__file__).resolve().parents[3]
PATCH = ROOT / "scripts" / "llama_cpp_patch.sh"
FA_LINE = "    const bool use_ref = params->use_ref;\n"


def test_the_installed_llama_cpp_is_lokals_build() -> None:
    assert "+lokal." in llama_cpp.__version__
    assert batch_invariant_flash_attention()
    assert "LLAMAFILE = 1" not in system_info()


def _tree(tmp_path: Path, ops_text: str) -> Path:
    ops = tmp_path / "vendor/llama.cpp/ggml/src/ggml-cpu/ops.cpp"
    ops.parent.mkdir(parents=True)
    ops.write_text(ops_text)
    init = tmp_path / "llama_cpp/__init__.py"
    init.parent.mkdir(parents=True)
    init.write_text('from .llama_cpp import *\n\n__version__ = "0.3.36"\n')
    return tmp_path


def test_patch_forces_the_per_row_kernel_and_labels_the_version(tmp_path: Path) -> None:
    src = _tree(tmp_path, "static void ggml_compute_forward_flash_attn_ext_f16(\n" + FA_LINE + "}\n")
    subprocess.run(["bash", str(PATCH), str(src), "lokal.9"], check=True, capture_output=True)
    ops = (src / "vendor/llama.cpp/ggml/src/ggml-cpu/ops.cpp").read_text()
    assert "params->use_ref" not in ops and "const bool use_ref = true;" in ops
    assert '__version__ = "0.3.36+lokal.9"' in (src / "llama_cpp/__init__.py").read_text()


def test_patch_fails_loudly_when_the_source_moved_on(tmp_path: Path) -> None:
    src = _tree(tmp_path, "static void ggml_compute_forward_flash_attn_ext_f16(\n    bool other;\n}\n")
    run = subprocess.run(["bash", str(PATCH), str(src), "lokal.9"], capture_output=True, text=True)
    assert run.returncode != 0 and "expected exactly one" in run.stderr
    assert '"0.3.36"' in (src / "llama_cpp/__init__.py").read_text()
