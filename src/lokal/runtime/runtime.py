"""The runtime: resolves model names through the store and keeps loaded engines."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

import psutil

from lokal.config import Settings
from lokal.engine.llama_model import ContextShape
from lokal.runtime.loaded_model import LoadedModel
from lokal.runtime.sizing import auto_parallel
from lokal.store.gguf_facts import GgufFacts
from lokal.store.model_store import ModelStore
from lokal.store.names import parse_model_name


class Runtime:
    """Loads models on first use (one engine thread each) and unloads the least recently used
    idle one when more than ``max_loaded`` are in memory."""

    def __init__(self, settings: Settings, store: ModelStore | None = None) -> None:
        self.settings = settings
        self.store = store or ModelStore(settings.home)
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self._last_used: dict[str, float] = {}

    def shape(self, facts: GgufFacts) -> ContextShape:
        """The KV layout for a model: ``--parallel`` slots, or as many as memory allows (0)."""
        s = self.settings
        slots = s.parallel or auto_parallel(facts, s.ctx_size, psutil.virtual_memory().available)
        return ContextShape(slot_ctx=s.ctx_size, n_slots=slots, n_batch=max(s.batch_size, 2 * slots),
                            n_threads=s.threads)

    def load_sync(self, name: str, start_thread: bool = True) -> LoadedModel:
        """Load a model in this thread (the CLI's `run` and the offline LLM use this)."""
        key = str(parse_model_name(name))
        manifest = self.store.get(key)
        path = self.store.gguf_path(key)
        return LoadedModel.load(
            key,
            manifest,
            path,
            self.shape(manifest.facts),
            self.settings.max_queue,
            self.settings.prefix_cache,
            start_thread,
        )

    async def get(self, name: str) -> LoadedModel:
        """The loaded model for name, loading it on first use. Raises the store's errors."""
        key = str(parse_model_name(name))
        loaded = self._loaded.get(key)
        if loaded is None:
            self.store.get(key)  # ModelNotFound before taking a lock
            lock = self._locks.setdefault(key, asyncio.Lock())
            async with lock:
                loaded = self._loaded.get(key)
                if loaded is None:
                    loaded = await asyncio.to_thread(self.load_sync, key)
                    self._loaded[key] = loaded
                    await self._evict_beyond_limit(keep=key)
        self._loaded.move_to_end(key)
        self._last_used[key] = time.time()
        return loaded

    def loaded(self) -> list[LoadedModel]:
        return list(self._loaded.values())

    async def unload(self, name: str) -> bool:
        key = str(parse_model_name(name))
        loaded = self._loaded.pop(key, None)
        if loaded is None:
            return False
        await asyncio.to_thread(loaded.close)
        return True

    async def _evict_beyond_limit(self, keep: str) -> None:
        for key in list(self._loaded):
            if len(self._loaded) <= self.settings.max_loaded_models:
                return
            model = self._loaded[key]
            if key != keep and not model.engine.has_work():
                await self.unload(key)

    async def close(self) -> None:
        for key in list(self._loaded):
            await self.unload(key)
