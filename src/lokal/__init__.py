"""lokal: a local LLM runtime."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lokal")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["LLM", "SamplingParams", "__version__"]


def __getattr__(name: str) -> object:
    # Lazy: `import lokal` stays cheap (the CLI starts fast); llama.cpp loads on first use.
    if name == "LLM":
        from lokal.llm import LLM

        return LLM
    if name == "SamplingParams":
        from lokal.engine.sampling import SamplingParams

        return SamplingParams
    raise AttributeError(name)
