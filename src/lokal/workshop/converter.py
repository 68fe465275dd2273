"""llama.cpp's Python converters (``convert_hf_to_gguf.py``, ``convert_lora_to_gguf.py``), run as
subprocesses.

They come from the llama-cpp-python sdist lokal is built from (its ``vendor/llama.cpp``), with that
sdist's own ``gguf-py`` and ``conversion/`` package, so the GGUF they write is the one the bundled
llama.cpp reads. ``scripts/install.sh`` extracts them (``scripts/extract_converters.sh``) into
``$LOKAL_CONVERTER_CACHE`` (``~/.cache/lokal/converters``) under ``llama-cpp-python-<version>/``
whenever it installs the ``convert`` extra (torch, transformers, safetensors, sentencepiece), which
the scripts import.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from lokal.config import Settings
from lokal.store.errors import StoreError

LLAMA_CPP_PYTHON = "0.3.36"  # the sdist scripts/install.sh extracts (its LLAMA_CPP_PYTHON)
INSTALL_HINT = "LOKAL_EXTRAS=convert scripts/install.sh (scripts/install.sh test includes it)"
# What the converters import beyond lokal's own dependencies (the ``convert`` extra).
_CONVERTER_MODULES = ("torch", "transformers", "safetensors", "sentencepiece")


class ConverterMissing(StoreError):
    """llama.cpp's converter scripts, or the packages they import, are not installed."""


@dataclass(frozen=True)
class LlamaCppConverter:
    """Where llama.cpp's converter scripts lie, and how to run one."""

    folder: Path
    python: str = sys.executable

    @property
    def hf_script(self) -> Path:
        """``convert_hf_to_gguf.py``: a Hugging Face model folder to GGUF."""
        return self.folder / "convert_hf_to_gguf.py"

    @property
    def lora_script(self) -> Path:
        """``convert_lora_to_gguf.py``: a PEFT LoRA adapter folder to a GGUF adapter."""
        return self.folder / "convert_lora_to_gguf.py"

    @property
    def gguf_py(self) -> Path:
        """The sdist's ``gguf-py``, which the scripts put first on their own ``sys.path``."""
        return self.folder / "gguf-py"

    def command(self, script: Path, *args: str) -> list[str]:
        """The command line that runs ``script`` with ``args`` in this interpreter."""
        return [self.python, str(script), *args]

    def environment(self) -> dict[str, str]:
        """This process's environment for a converter: no PYTHONPATH (lokal's modules and a
        user's path stay out of its imports), and not NO_LOCAL_GGUF, so that the sdist's
        ``gguf-py`` wins over the ``gguf`` package lokal itself pins."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NO_LOCAL_GGUF")}
        env["PYTHONUNBUFFERED"] = "1"  # its log lines arrive as they are written (progress)
        return env


def converter_folder(settings: Settings) -> Path:
    """Where ``scripts/install.sh`` puts the converters of the installed llama-cpp-python."""
    return Path(settings.converter_cache).expanduser() / f"llama-cpp-python-{_llama_cpp_version()}"


def find_converter(settings: Settings) -> LlamaCppConverter:
    """llama.cpp's converters for this install; raises :class:`ConverterMissing`, naming the
    install command, when the scripts or the packages they import are missing."""
    converter = LlamaCppConverter(converter_folder(settings))
    missing = [p.name for p in (converter.hf_script, converter.lora_script, converter.gguf_py) if not p.exists()]
    if missing:
        raise ConverterMissing(
            f"llama.cpp's converter is not installed ({', '.join(missing)} missing in {converter.folder}); "
            f"install it with: {INSTALL_HINT}"
        )
    absent = [m for m in _CONVERTER_MODULES if importlib.util.find_spec(m) is None]
    if absent:
        raise ConverterMissing(
            f"llama.cpp's converter needs {', '.join(absent)}, which is not installed; install it with: {INSTALL_HINT}"
        )
    return converter


def _llama_cpp_version() -> str:
    """The installed llama-cpp-python's public version (lokal's ``+lokal.N`` label dropped)."""
    try:
        return version("llama-cpp-python").split("+", 1)[0]
    except PackageNotFoundError:
        return LLAMA_CPP_PYTHON
