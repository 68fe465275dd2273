"""scripts/extract_converters.sh, which scripts/install.sh runs for the ``convert`` extra: llama.cpp's
converters out of the llama-cpp-python sdist (pip's cache), whole or not at all, where
lokal.workshop.converter finds them, and runnable there."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lokal.config import Settings
from lokal.workshop.converter import LLAMA_CPP_PYTHON, converter_folder, find_converter

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "extract_converters.sh"


def extract(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHON": sys.executable})


def test_install_sh_the_pin_and_the_converter_name_one_llama_cpp_python() -> None:
    install = re.search(r"^LLAMA_CPP_PYTHON=(\S+)$", (ROOT / "scripts" / "install.sh").read_text(), re.M)
    pin = re.search(r'"llama-cpp-python==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert install and pin and install.group(1) == pin.group(1) == LLAMA_CPP_PYTHON
    assert '"torch==2.13.0"' in (ROOT / "pyproject.toml").read_text()  # exact: a range would fetch CUDA torch


@pytest.mark.slow
def test_the_converters_are_extracted_where_lokal_finds_them_and_run(tmp_path: Path) -> None:
    settings = Settings(converter_cache=tmp_path / "converters")
    dest = converter_folder(settings)
    done = extract(LLAMA_CPP_PYTHON, str(dest))
    assert done.returncode == 0, done.stderr
    converter = find_converter(settings)
    assert sorted(p.name for p in dest.iterdir()) == [
        "conversion", "convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "gguf-py"]
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]  # no partial folder left beside it
    listed = subprocess.run(converter.command(converter.hf_script, "--print-supported-models"), cwd=dest,
                            env=converter.environment(), capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert "LlamaForCausalLM" in listed.stderr and "BertModel" in listed.stderr


def test_a_bad_sdist_leaves_the_converters_there_as_they_were(tmp_path: Path) -> None:
    dest = tmp_path / "converters" / f"llama-cpp-python-{LLAMA_CPP_PYTHON}"
    dest.mkdir(parents=True)
    (dest / "convert_hf_to_gguf.py").write_text("# the earlier extraction")
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tarball")
    assert extract(LLAMA_CPP_PYTHON, str(dest), str(bad)).returncode != 0
    assert (dest / "convert_hf_to_gguf.py").read_text() == "# the earlier extraction"
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]
