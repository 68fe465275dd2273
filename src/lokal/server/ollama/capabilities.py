"""What ``/api/show`` says a model can do, from its GGUF and its chat template (as Ollama does):

- ``completion``: every chat model (``lokal.store.kinds``);
- ``embedding``: an embedding model alone (a chat model embeds too, but Ollama does not say so);
- ``tools``: the chat template renders ``tools`` itself (lokal still answers a tools request to
  any other model, through its fallback block: see docs/api.md, "Tools without native support");
- ``insert``: the vocabulary has llama.cpp's fill-in-the-middle tokens (prefix, suffix, middle);
- ``thinking``: the template is a thinking model's (``lokal.runtime.reasoning.supports_thinking``:
  the same test that decides whether ``think: true`` is accepted);
- ``vision``: the model has a vision projector (a second FROM in its Modelfile) and accepts images.
"""

from __future__ import annotations

import mmap
import struct
from functools import lru_cache
from pathlib import Path

from lokal.runtime.reasoning import supports_thinking
from lokal.runtime.tools import has_native_tools
from lokal.store.gguf_facts import GgufFacts
from lokal.store.kinds import kind_from_facts
from lokal.templates.chat_template import CHATML_TEMPLATE, FALLBACK_BY_ARCHITECTURE

# llama.cpp's FIM tokens: the GGUF keys that name them, else the token texts it recognizes
# (llama-vocab.cpp): Qwen, StarCoder/SantaCoder, DeepSeek, CodeLlama, CodeGemma/GLM.
FIM_KEYS = (("tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.fim_mid_token_id"),
            ("tokenizer.ggml.prefix_token_id", "tokenizer.ggml.suffix_token_id", "tokenizer.ggml.middle_token_id"))
FIM_TEXTS = (
    ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>", "<|code_prefix|>"),
    ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>", "<|code_suffix|>"),
    ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>", "<|code_middle|>"),
)
VOCAB_SCAN_BYTES = 64 * 2**20  # the vocabulary sits in the header, well inside this


def template_source(template: str | None, facts: GgufFacts) -> str:
    """The chat template lokal renders for this model (the one ``LoadedModel`` uses)."""
    return template or facts.chat_template or FALLBACK_BY_ARCHITECTURE.get(facts.architecture or "", CHATML_TEMPLATE)


def capabilities(facts: GgufFacts, template: str | None, gguf: Path | None, vision: bool = False) -> list[str]:
    """Ollama's capability names for a model, in Ollama's order (``vision``: it has a projector)."""
    kind = kind_from_facts(facts)
    if kind != "chat":
        return ["embedding"] if kind == "embedding" else []
    caps = ["completion"]
    source = template_source(template, facts)
    if has_native_tools(source):
        caps.append("tools")
    if has_fim(facts, gguf):
        caps.append("insert")
    if vision:
        caps.append("vision")
    if supports_thinking(source):
        caps.append("thinking")
    return caps


def has_fim(facts: GgufFacts, gguf: Path | None) -> bool:
    """Whether llama.cpp will find prefix, suffix and middle FIM tokens in this model's vocabulary."""
    if any(all(isinstance(facts.metadata.get(k), int) for k in keys) for keys in FIM_KEYS):
        return True
    if gguf is None:
        return False
    try:
        stat = gguf.stat()
    except OSError:
        return False
    return _vocab_has_fim(str(gguf), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _vocab_has_fim(path: str, size: int, mtime_ns: int) -> bool:
    """Look for each FIM token's text as a GGUF string (u64 length, then the bytes) in the header."""
    del size, mtime_ns  # part of the cache key: a replaced file is scanned again
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            end = min(len(buf), VOCAB_SCAN_BYTES)
            return all(any(buf.find(_gguf_string(t), 0, end) >= 0 for t in texts) for texts in FIM_TEXTS)
    except (OSError, ValueError):
        return False


def _gguf_string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data
