"""A model in memory: its manifest, its chat template, and the engine that serves it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lokal.engine.async_engine import AsyncEngine
from lokal.engine.chat_template import ChatTemplate
from lokal.engine.embedder import Embedder, EmbedResult
from lokal.engine.engine import Engine
from lokal.engine.llama_model import ContextShape, LlamaModel
from lokal.engine.sampling import SamplingParams
from lokal.engine.sequence import Delta
from lokal.store.manifest import Manifest

# Sampling fields a manifest's parameters (Modelfile PARAMETER) may set as defaults.
_PARAM_ALIASES = {
    "num_predict": "max_tokens",
    "repeat_last_n": "repeat_last_n",
    "repeat_penalty": "repeat_penalty",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "stop": "stop",
    "max_tokens": "max_tokens",
}


@dataclass
class LoadedModel:
    """Prompt building and generation for one loaded model."""

    name: str
    manifest: Manifest
    model: LlamaModel
    engine: Engine
    runner: AsyncEngine | None  # the engine thread; None when the caller steps the engine itself
    template: ChatTemplate
    defaults: dict[str, Any] = field(default_factory=dict)
    embedder: Embedder | None = None  # its llama.cpp context is made on the first embed

    @classmethod
    def load(cls, name: str, manifest: Manifest, path: Path, shape: ContextShape,
             max_queue: int, prefix_cache: bool, start_thread: bool = True,
             prefix_cache_ram_mib: int = 0) -> LoadedModel:
        """Load weights and start the engine thread (blocking: call it off the event loop)."""
        model = LlamaModel(path, shape)
        source = manifest.template or model.chat_template()
        template = ChatTemplate.for_model(source, model.architecture, model.bos_text, model.eos_text)
        engine = Engine(model, max_queue=max_queue, prefix_cache=prefix_cache,
                        host_prefix_bytes=prefix_cache_ram_mib * 2**20)
        runner = AsyncEngine(engine, name=f"engine:{name}") if start_thread else None
        defaults = {
            _PARAM_ALIASES[k]: v for k, v in (manifest.parameters or {}).items() if k in _PARAM_ALIASES
        }
        if isinstance(defaults.get("max_tokens"), int) and defaults["max_tokens"] <= 0:
            del defaults["max_tokens"]  # Modelfile num_predict -1/-2/0: no limit, as in Ollama's runner
        return cls(name, manifest, model, engine, runner, template, defaults, Embedder(model))

    @property
    def context_length(self) -> int:
        return self.model.shape.slot_ctx

    def sampling(self, **request: Any) -> SamplingParams:
        """Request values over the model's defaults over lokal's; None means 'not given'."""
        merged = dict(self.defaults)
        merged.update({k: v for k, v in request.items() if v is not None})
        if merged.get("max_tokens") is not None and merged["max_tokens"] < 0:
            merged["max_tokens"] = None  # Ollama's num_predict -1: no limit
        return SamplingParams(**merged)

    def chat_prompt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]:
        """Render messages through the chat template and tokenize (special tokens parsed)."""
        if self.manifest.system and not any(m.get("role") == "system" for m in messages):
            messages = [{"role": "system", "content": self.manifest.system}, *messages]
        if self.manifest.messages:  # Modelfile MESSAGE turns: after the system message, before the chat
            lead = 1 if messages and messages[0].get("role") == "system" else 0
            messages = [*messages[:lead], *self.manifest.messages, *messages[lead:]]
        text = self.template.render(messages, add_generation_prompt=True, tools=tools)
        add_bos = self.model.add_bos and not (self.model.bos_text and text.startswith(self.model.bos_text))
        return self.model.tokenize(text, add_special=add_bos, parse_special=True)

    def text_prompt(self, text: str) -> list[int]:
        """Tokenize a raw completion prompt (BOS added if the model wants one)."""
        return self.model.tokenize(text, add_special=True, parse_special=False)

    def submit(self, prompt: list[int], params: SamplingParams) -> AsyncIterator[Delta]:
        """Queue a request (errors raise here, at once) and return its delta stream."""
        if self.runner is None:
            raise RuntimeError("this model is stepped by its owner; it has no engine thread")
        return self.runner.submit(prompt, params)

    def embed(self, texts: Sequence[str | Sequence[int]], truncate: bool = True,
              normalize: bool = True) -> EmbedResult:
        """Pooled embeddings of texts (or token id lists), L2-normalized unless asked otherwise.
        Blocking, and safe beside generation: call it off the event loop. Raises InputTooLong
        (truncate=False) or ValueError (an empty input, an unknown token id)."""
        if self.embedder is None:
            self.embedder = Embedder(self.model)
        return self.embedder.embed(texts, truncate=truncate, normalize=normalize)

    def close(self) -> None:
        if self.embedder is not None:
            self.embedder.close()  # before the model it borrows is freed
        if self.runner is not None:
            self.runner.close()  # stops the thread, then frees the model
        else:
            self.model.close()
