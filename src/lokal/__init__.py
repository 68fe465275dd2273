"""lokal: a local LLM runtime."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lokal")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
