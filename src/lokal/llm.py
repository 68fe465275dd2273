"""Offline batch inference through the same runtime as the server, without HTTP:

    from lokal import LLM
    results = LLM("smollm2:135m").generate(["Hi!", "What is 2+2?"], SamplingParams(max_tokens=32))
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any

from lokal.config import Settings
from lokal.engine.engine import Engine
from lokal.engine.sampling import SamplingParams
from lokal.engine.sequence import FinishReason, Timings, Usage
from lokal.runtime.events import Caller, Finished, finished
from lokal.runtime.keep_alive import FOREVER
from lokal.runtime.request import GenerateRequest
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
    """A model loaded in this process; ``generate`` sends all prompts to its engine at once, so
    they are decoded together (continuous batching), and returns when all are done."""

    def __init__(self, model: str = "smollm2:135m", settings: Settings | None = None, **overrides: Any) -> None:
        self.settings = settings or Settings(**overrides)
        self.runtime = Runtime(self.settings)
        pull_model(self.runtime.store, model)
        self.model = model
        self.engine: Engine = asyncio.run(self.runtime.model(model, keep_alive=FOREVER)).engine

    def generate(
        self,
        prompts: Seq[str | list[dict[str, Any]]],
        params: SamplingParams | None = None,
        chat: bool = True,
    ) -> list[Generation]:
        """Results in the order of prompts. A prompt is a user message (chat=True), a list of
        chat messages, or raw completion text (chat=False). ``params`` replace the model's
        defaults (its Modelfile parameters) entirely; None keeps them."""
        requests = [self._request(p, params, chat) for p in prompts]
        return asyncio.run(self._generate_all(requests))

    def _request(self, prompt: str | list[dict[str, Any]], params: SamplingParams | None, chat: bool
                 ) -> GenerateRequest:
        options = params.model_dump(exclude={"grammar"}) if params is not None else {}
        shape: dict[str, Any]
        if isinstance(prompt, list):
            shape = {"messages": prompt}
        elif chat:
            shape = {"messages": [{"role": "user", "content": prompt}]}
        else:
            shape = {"prompt": prompt}
        return GenerateRequest(model=self.model, **shape, options=options,
                               grammar=params.grammar if params is not None else None,
                               keep_alive=FOREVER, caller=Caller("python"))

    async def _generate_all(self, requests: list[GenerateRequest]) -> list[Generation]:
        # No more in flight than the engine queues, so max_queue never refuses our own prompts.
        room = asyncio.Semaphore(max(1, self.settings.max_queue))

        async def one(req: GenerateRequest) -> Generation:
            async with room:
                done: Finished = await finished(await self.runtime.generate(req))
            return Generation(done.text, done.reason, done.usage, done.timings)

        return list(await asyncio.gather(*(one(r) for r in requests)))

    def close(self) -> None:
        asyncio.run(self.runtime.close())

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
