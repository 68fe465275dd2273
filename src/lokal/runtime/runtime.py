"""The runtime: resolves model names through the store and keeps loaded engines, each for its
keep_alive after its last request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psutil

from lokal.config import Settings
from lokal.engine.llama_model import ContextShape
from lokal.runtime.keep_alive import FOREVER
from lokal.runtime.loaded_model import LoadedModel
from lokal.runtime.sizing import auto_parallel, kv_bytes_per_token
from lokal.store.gguf_facts import GgufFacts
from lokal.store.model_store import ModelStore
from lokal.store.names import parse_model_name

log = logging.getLogger(__name__)

REAP_INTERVAL_S = 0.25  # how often idle models are checked against their keep_alive
_FOREVER_SPAN = timedelta(days=365 * 290)  # what "never expires" reads as (Ollama: now + max duration)


@dataclass
class Residency:
    """How long a loaded model stays: ``keep_alive_s`` (the latest request's, ``math.inf`` =
    forever) counted from ``idle_since``, the last moment it had work (monotonic clock)."""

    keep_alive_s: float
    idle_since: float

    def expires_at(self, busy: bool) -> datetime:
        """When the model will unload if no request comes (counted from now while it is busy)."""
        if self.keep_alive_s == FOREVER:
            return datetime.now(UTC) + _FOREVER_SPAN
        idle_for = 0.0 if busy else time.monotonic() - self.idle_since
        return datetime.now(UTC) + timedelta(seconds=max(0.0, self.keep_alive_s - idle_for))


class ModelHold:
    """A request's claim on a loaded model: it is not unloaded for keep_alive or to make room
    until released (once; releasing again does nothing)."""

    def __init__(self, runtime: Runtime, name: str) -> None:
        self._runtime = runtime
        self.name = name
        self._released = False

    async def release(self) -> None:
        if not self._released:
            self._released = True
            await self._runtime._release(self.name)

    def drop(self) -> None:
        """Release without waiting (from a finalizer): a keep_alive of 0 then unloads at the
        reaper's next round instead of at once."""
        if not self._released:
            self._released = True
            self._runtime._release_nowait(self.name)


class Runtime:
    """Loads models on first use (one engine thread each), unloads each when its keep_alive
    has passed since its last request, and the least recently used idle one when more than
    ``max_loaded_models`` are in memory. A model with running or waiting sequences is never
    unloaded."""

    def __init__(self, settings: Settings, store: ModelStore | None = None) -> None:
        self.settings = settings
        self.store = store or ModelStore(settings.home)
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self._last_used: dict[str, float] = {}
        self._residency: dict[str, Residency] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._holds: dict[str, int] = {}

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
            self.settings.prefix_cache_ram_mib,
        )

    async def get(self, name: str, keep_alive: float | None = None) -> LoadedModel:
        """The loaded model for name, loading it on first use. Raises the store's errors.

        ``keep_alive`` (seconds, ``math.inf`` = forever; None = the server's default) replaces
        the model's current one, as in Ollama where the latest request decides."""
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
        seconds = self.settings.keep_alive_s if keep_alive is None else keep_alive
        self._residency[key] = Residency(keep_alive_s=seconds, idle_since=time.monotonic())
        self._start_reaper()
        return loaded

    def loaded(self) -> list[LoadedModel]:
        return list(self._loaded.values())

    def is_loaded(self, name: str) -> bool:
        return str(parse_model_name(name)) in self._loaded

    def residency(self, name: str) -> Residency | None:
        """The keep_alive state of a loaded model (None if it is not loaded)."""
        key = str(parse_model_name(name))
        return self._residency.get(key) if key in self._loaded else None

    def expires_at(self, loaded: LoadedModel) -> datetime:
        residency = self._residency.get(loaded.name)
        if residency is None:
            return datetime.now(UTC) + _FOREVER_SPAN
        return residency.expires_at(busy=self._in_use(loaded.name, loaded))

    @staticmethod
    def memory_bytes(loaded: LoadedModel) -> int:
        """Weights plus the KV cache of every slot (f16 estimate from the GGUF facts)."""
        shape = loaded.model.shape
        per_token = kv_bytes_per_token(loaded.manifest.facts) or 0
        return loaded.manifest.size + per_token * shape.slot_ctx * shape.n_slots

    def hold(self, name: str) -> ModelHold:
        """Claim a loaded model for one request (call right after get, with no await between)."""
        key = str(parse_model_name(name))
        self._holds[key] = self._holds.get(key, 0) + 1
        return ModelHold(self, key)

    def _in_use(self, key: str, loaded: LoadedModel) -> bool:
        return self._holds.get(key, 0) > 0 or loaded.engine.has_work()

    def _release_nowait(self, key: str) -> None:
        held = self._holds.get(key, 0) - 1
        if held > 0:
            self._holds[key] = held
        else:
            self._holds.pop(key, None)
        residency = self._residency.get(key)
        if residency is not None:
            residency.idle_since = time.monotonic()

    async def _release(self, key: str) -> None:
        """A request has ended: the keep_alive counts from now, and a keep_alive of 0 unloads
        the model at once unless other requests are still using it."""
        self._release_nowait(key)
        residency = self._residency.get(key)
        loaded = self._loaded.get(key)
        if residency is not None and loaded is not None and residency.keep_alive_s <= 0 \
                and not self._in_use(key, loaded):
            await self.unload(key)

    async def unload(self, name: str) -> bool:
        key = str(parse_model_name(name))
        loaded = self._loaded.pop(key, None)
        self._residency.pop(key, None)
        if loaded is None:
            return False
        log.info("unloading %s", key)
        await asyncio.to_thread(loaded.close)
        return True

    async def unload_expired(self) -> None:
        """Unload every idle model whose keep_alive has passed; busy ones restart their clock."""
        now = time.monotonic()
        for key, loaded in list(self._loaded.items()):
            residency = self._residency.get(key)
            if residency is None:
                continue
            if self._in_use(key, loaded):
                residency.idle_since = now
            elif now - residency.idle_since >= residency.keep_alive_s:
                await self.unload(key)

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap(), name="keep-alive")

    async def _reap(self) -> None:
        while self._loaded:
            await asyncio.sleep(REAP_INTERVAL_S)
            try:
                await self.unload_expired()
            except Exception:  # one failed unload must not stop keep_alive for the others
                log.exception("unloading an expired model failed")

    async def _evict_beyond_limit(self, keep: str) -> None:
        for key in list(self._loaded):
            if len(self._loaded) <= self.settings.max_loaded_models:
                return
            model = self._loaded[key]
            if key != keep and not self._in_use(key, model):
                await self.unload(key)

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for key in list(self._loaded):
            await self.unload(key)
