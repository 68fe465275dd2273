"""Offline batch inference on the same engine as the server, without HTTP:

    from lokal import LLM
    results = LLM("smollm2:135m").generate(["Hi!", "What is 2+2?"], SamplingParams(max_tokens=32))
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any

from lokal.config import Settings
from lokal.engine.engine import Engine
from lokal.engine.sampling import SamplingParams
from lokal.engine.scheduler import QueueFull
from lokal.engine.sequence import FinishReason, Timings, Usage
from lokal.runtime.loaded_model import LoadedModel
from lokal.runtime.runtime import Runtime
from lokal.store.pull import pull_model


@dataclass(frozen=True)
class Generation:
    """One prompt's result."""

    text: str
    finish_reason: FinishReason
    usage: Usage
    timings: Timings


class LLM:
    """A model loaded in this process; `generate` batches all prompts through one engine.

    The engine is stepped on the caller's thread (no engine thread is started)."""

    def __init__(self, model: str = "smollm2:135m", settings: Settings | None = None, **overrides: Any) -> None:
        self.settings = settings or Settings(**overrides)
        runtime = Runtime(self.settings)
        pull_model(runtime.store, model)
        self._loaded: LoadedModel = runtime.load_sync(model, start_thread=False)
        self.engine: Engine = self._loaded.engine

    def generate(
        self,
        prompts: Seq[str | list[dict[str, Any]]],
        params: SamplingParams | None = None,
        chat: bool = True,
    ) -> list[Generation]:
        """Results in the order of prompts. A prompt is a user message (chat=True), a list of
        chat messages, or raw completion text (chat=False)."""
        params = params or self._loaded.sampling()
        seqs = []
        for p in prompts:
            if isinstance(p, list):
                tokens = self._loaded.chat_prompt(p)
            elif chat:
                tokens = self._loaded.chat_prompt([{"role": "user", "content": p}])
            else:
                tokens = self._loaded.text_prompt(p)
            seqs.append(self.engine.new_sequence(tokens, params))
        texts: dict[int, list[str]] = {s.id: [] for s in seqs}
        results: dict[int, Generation] = {}
        pending = list(seqs)
        while pending or self.engine.has_work():
            # Feed the queue no faster than it drains, so max_queue never refuses our own prompts.
            while pending:
                try:
                    self.engine.enqueue(pending[0])
                except QueueFull:
                    break
                pending.pop(0)
            for seq, delta in self.engine.step():
                texts[seq.id].append(delta.text)
                if delta.finish_reason is not None:
                    if delta.finish_reason is FinishReason.ERROR:
                        raise RuntimeError(delta.error or "generation failed")
                    assert delta.usage is not None and delta.timings is not None
                    results[seq.id] = Generation("".join(texts[seq.id]), delta.finish_reason, delta.usage,
                                                 delta.timings)
        return [results[s.id] for s in seqs]

    def close(self) -> None:
        self._loaded.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
