"""The runtime: the one service every API, the CLI and the ``LLM`` class go through.

``generate`` (a ``GenerateRequest`` in, typed events out), ``embed``, ``tokenize``,
``detokenize`` and ``status``; subscribers get every generation's events. Underneath, it
resolves model names through the store and keeps loaded engines, each for its keep_alive after
its last request. See docs/architecture.md."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import psutil

from lokal.advise.hardware import Gpu, cuda_visible, nvidia_gpus
from lokal.advise.memory import EstimateError, estimate_memory, model_shape
from lokal.advise.offload import (
    VRAM_MARGIN_BYTES,
    OffloadPlan,
    fallback_layers,
    gpu_offload_supported,
    plan_for,
    reserve,
)
from lokal.config import Settings
from lokal.engine.async_engine import EngineStopped, Submission
from lokal.engine.devices import cpu_build_note
from lokal.engine.draft import DraftMismatch
from lokal.engine.embedder import EmbedResult, InputTooLong
from lokal.engine.engine import EngineStats, PromptTooLong
from lokal.engine.llama_model import ContextShape, ModelLoadError, Offload
from lokal.engine.sampling import SamplingParams
from lokal.engine.scheduler import QueueFull
from lokal.engine.sequence import ImageSpan
from lokal.runtime import errors
from lokal.runtime.events import Event, Failed, FirstToken, GenerationRecord, Queued, Started, Subscriber
from lokal.runtime.keep_alive import FOREVER, REAP_INTERVAL_S, Reaper
from lokal.runtime.loaded_model import LoadedModel
from lokal.runtime.pipeline import events, prepare
from lokal.runtime.request import GenerateRequest
from lokal.runtime.sizing import (
    GROW_SHARE_OF_FREE_RAM,
    SHARED_AUTO_SEQUENCES_CPU,
    SHARED_AUTO_SEQUENCES_GPU,
    auto_context,
    auto_parallel,
    auto_pool_cells,
    model_estimate,
    model_memory_bytes,
)
from lokal.runtime.speech import SpeechModels
from lokal.store import errors as store_errors
from lokal.store.gguf_facts import GgufFacts
from lokal.store.kinds import EMBEDDING_KINDS, GENERATING_KINDS, ModelKind
from lokal.store.manifest import Manifest
from lokal.store.model_store import ModelStore
from lokal.store.names import parse_model_name
from lokal.templates.chat_template import TemplateError

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1
EMBEDDING_CTX = 8192  # the longest input of a model that only embeds, when it was trained on more
_FOREVER_SPAN = timedelta(days=365 * 290)  # what "never expires" reads as (Ollama: now + max duration)
T = TypeVar("T")


@dataclass(frozen=True)
class ModelStatus:
    """A loaded model as the monitor, /metrics, /api/ps and /health show it."""

    name: str
    memory_bytes: int  # lokal's estimate: weights, KV cache of every slot, compute, overhead
    context_length: int  # per slot
    expires_at: datetime
    engine: EngineStats
    manifest: Manifest
    offload: OffloadPlan | None = None  # where its bytes are (VRAM, RAM)

    @property
    def vram_bytes(self) -> int:
        return self.offload.vram_bytes if self.offload is not None else 0


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

    def __init__(self, settings: Settings, store: ModelStore | None = None,
                 load_model: Callable[..., LoadedModel] | None = None,
                 devices: Callable[[], tuple[Gpu, ...]] | None = None) -> None:
        """``load_model`` (LoadedModel.load's parameters) and ``devices`` (GPUs that can take layers)
        stand in for llama.cpp's load and NVML in tests."""
        self.settings = settings
        self.store = store or ModelStore(settings.home)
        self._load_model = load_model or LoadedModel.load
        self._devices = devices
        self._said_cpu_build = False
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self._last_used: dict[str, float] = {}
        self._residency: dict[str, Residency] = {}
        self._reaper = Reaper("keep-alive", self.unload_expired, lambda: bool(self._loaded))
        self._holds: dict[str, int] = {}
        self._subscribers: list[Subscriber] = []
        self._embedding_turn: asyncio.Lock | None = None
        self.speech = SpeechModels(settings, self.store, self.check_kind)  # speech-to-text, text-to-speech

    # ---- the service ---------------------------------------------------------------------------
    def subscribe(self, subscriber: Subscriber) -> None:
        """Call ``subscriber(record, event)`` for every event of every generation (on the event
        loop; it must not block, and its errors are logged, never raised into the request)."""
        self._subscribers.append(subscriber)

    def _publish(self, record: GenerationRecord, event: Event) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(record, event)
            except Exception:  # observing a request must never break serving it
                log.exception("generation subscriber %r failed", subscriber)

    async def generate(self, req: GenerateRequest) -> AsyncGenerator[Event, None]:
        """Start one generation and return its events (``Queued`` first, ``Finished`` or ``Failed``
        last). Everything that can be refused is refused here, before any event, as a LokalError:
        an unknown model, a bad option, template or prompt, a prompt too long, a full queue.
        Closing the stream (or dropping it) cancels the generation and frees its slot."""
        arrived = time.perf_counter()
        self.check_kind(req.model, GENERATING_KINDS, "generate text")
        loaded = await self.model(req.model, req.keep_alive)
        wanted = self._wanted_context(loaded, req.options)
        if wanted is not None:
            loaded = await self._grow_context(loaded, wanted)
        load_s = time.perf_counter() - arrived
        hold = self.hold(loaded.name)
        try:
            # Templates are rendered and prompts tokenized off the event loop: a slow one stalls
            # only its own request.
            prepared = await asyncio.to_thread(prepare, loaded, req, self.settings)
            submissions = self._submit(loaded, prepared.prompt, prepared.params, req.n, prepared.images)
        except BaseException:
            await hold.release()
            raise
        holds = [hold, *(self.hold(loaded.name) for _ in submissions[1:])]  # one per choice's events
        # n > 1: the prompt is read once, so only choice 0's record counts it (metrics, rate limits)
        records = [GenerationRecord(model=loaded.name, caller=req.caller, arrived=arrived,
                                    prompt_tokens=len(prepared.prompt) if i == 0 else 0)
                   for i in range(len(submissions))]
        queued = Queued(position=submissions[0].position, load_s=load_s,
                        dropped_messages=prepared.dropped_messages, prompt_tokens=len(prepared.prompt))
        timeout_s = self.settings.request_timeout if req.timeout_s is None else req.timeout_s
        choices = [events(loaded, req, prepared.prompt, sub.deltas, record, timeout_s, self._publish, h.release,
                          prepared.think_open, index=i)
                   for i, (sub, record, h) in enumerate(zip(submissions, records, holds, strict=True))]
        stream = _first(queued, choices[0] if len(choices) == 1 else _merged(choices))
        self._publish(records[0], queued)
        # A stream dropped before it is read has no frame to run its finally: release the holds then.
        for h in holds:
            weakref.finalize(stream, h.drop)
        return stream

    @staticmethod
    def _submit(loaded: LoadedModel, prompt: list[int], params: SamplingParams, n: int = 1,
                images: tuple[ImageSpan, ...] = ()) -> list[Submission]:
        if loaded.runner is None:
            raise RuntimeError("this model is stepped by its owner; it has no engine thread")
        try:
            return loaded.runner.submit_group(prompt, params, n, images, loaded.adapters)
        except PromptTooLong as exc:
            raise errors.ContextLengthExceeded(str(exc), param="messages") from exc
        except QueueFull as exc:
            raise errors.ServerBusy(str(exc), retry_after_s=RETRY_AFTER_S) from exc
        except EngineStopped as exc:
            raise errors.ServerBusy(str(exc), retry_after_s=RETRY_AFTER_S) from exc
        except ValueError as exc:  # a token id outside the vocabulary, a grammar llama.cpp refuses
            raise errors.InvalidRequest(str(exc)) from exc

    async def embed(self, model: str, inputs: Sequence[str | Sequence[int]], *, truncate: bool = True,
                    normalize: bool = True, keep_alive: float | None = None, dimensions: int | None = None,
                    param: str = "input") -> tuple[EmbedResult, int, float]:
        """Pooled embeddings of texts or token lists: (result, the model's dimensions, seconds spent
        loading it). ``dimensions``: the size the caller needs (InvalidRequest if the model's
        differs). An empty list only loads the model (Ollama's way to preload one). One
        embedding runs at a time; the others wait on the event loop, not in a worker thread."""
        started = time.perf_counter()
        self.check_kind(model, EMBEDDING_KINDS, "embed text")
        loaded = await self.model(model, keep_alive)
        load_s = time.perf_counter() - started
        if dimensions is not None and dimensions != loaded.embedding_length:
            raise errors.InvalidRequest(f"model `{model}` produces {loaded.embedding_length}-dimensional embeddings; "
                                        f"dimensions={dimensions} is not supported", param="dimensions")
        hold = self.hold(loaded.name)
        try:
            if self._embedding_turn is None:
                self._embedding_turn = asyncio.Lock()
            async with self._embedding_turn:
                result = await asyncio.to_thread(loaded.embed, inputs, truncate, normalize)
        except InputTooLong as exc:
            raise errors.ContextLengthExceeded(str(exc), param=param) from exc
        except ValueError as exc:
            raise errors.InvalidRequest(str(exc), param=param) from exc
        except RuntimeError as exc:
            raise errors.GenerationFailed(f"embedding failed: {exc}") from exc
        finally:
            await hold.release()
        return result, loaded.embedding_length, load_s

    async def tokenize(self, model: str, text: str, *, special: bool = True, keep_alive: float | None = None,
                       parse_special: bool | None = None) -> list[int]:
        """Token ids of text with the model's tokenizer (``special``: BOS added if the model
        wants one; ``parse_special``, by default ``special``: special-token text such as
        ``<|im_end|>`` read as that token)."""
        loaded = await self.model(model, keep_alive)
        if parse_special is None or parse_special == special:
            return loaded.formatted_prompt(text) if special else loaded.plain_tokens(text)
        return loaded.model.tokenize(text, add_special=special and loaded.model.add_bos, parse_special=parse_special)

    async def tokenize_chat(self, model: str, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True,
                            keep_alive: float | None = None) -> list[int]:
        """Token ids of a chat as the model reads it: rendered through its chat template (its
        system prompt and Modelfile turns included), as ``generate`` would (InvalidRequest if the
        template fails)."""
        loaded = await self.model(model, keep_alive)
        try:
            return await asyncio.to_thread(loaded.chat_prompt, messages, add_generation_prompt=add_generation_prompt)
        except TemplateError as exc:
            raise errors.InvalidRequest(str(exc), param="messages", code="template_error") from exc
        except ValueError as exc:
            raise errors.InvalidRequest(str(exc), param="messages") from exc

    async def detokenize(self, model: str, tokens: list[int], keep_alive: float | None = None,
                         special: bool = False) -> str:
        """Text of token ids (InvalidRequest for an id outside the vocabulary); ``special``:
        special tokens as their text (``<|im_end|>``) rather than as nothing."""
        return b"".join(await self.token_pieces(model, tokens, keep_alive, special)).decode("utf-8", errors="replace")

    async def token_pieces(self, model: str, tokens: list[int], keep_alive: float | None = None,
                           special: bool = True) -> list[bytes]:
        """The bytes each token stands for (one token can be part of a UTF-8 character)."""
        loaded = await self.model(model, keep_alive)
        bad = next((t for t in tokens if not loaded.model.valid_token(t)), None)
        if bad is not None:
            raise errors.InvalidRequest(f"token id {bad} is outside the vocabulary", param="tokens")
        piece = loaded.model.token_text if special else loaded.model.piece
        return [piece(t) for t in tokens]

    async def context_length(self, model: str) -> int:
        """The context one sequence of a model gets (loading it if needed)."""
        return (await self.model(model)).context_length

    async def load(self, name: str, keep_alive: float | None = None) -> str:
        """Load a model without generating (Ollama's load request); its canonical name."""
        return (await self.model(name, keep_alive)).name

    async def prompt_tokens(self, req: GenerateRequest) -> int:
        """The tokens ``req``'s prompt takes, rendered and tokenized as ``generate`` would (its
        system prompt, tools and template included); nothing is generated."""
        loaded = await self.model(req.model, req.keep_alive)
        hold = self.hold(loaded.name)
        try:
            prepared = await asyncio.to_thread(prepare, loaded, req, self.settings)
        finally:
            await hold.release()
        return len(prepared.prompt)

    def status(self) -> list[ModelStatus]:
        """Every loaded model with its memory figure, engine state and keep_alive expiry."""
        return [
            ModelStatus(m.name, self.memory_bytes(m), m.context_length, self.expires_at(m), m.engine.stats(),
                        m.manifest, m.plan)
            for m in self.loaded()
        ]

    async def model(self, name: str, keep_alive: float | None = None) -> LoadedModel:
        """``get``, with the store's and llama.cpp's failures as LokalErrors."""
        try:
            return await self.get(name, keep_alive)
        except store_errors.InvalidModelName as exc:
            raise errors.InvalidModelName(str(exc), param="model") from exc
        except store_errors.ModelNotFound as exc:
            raise errors.ModelNotFound(name, str(exc)) from exc
        except (store_errors.StoreError, ModelLoadError) as exc:
            raise errors.ModelLoadFailed(f"could not load model `{name}`: {exc}") from exc

    def check_kind(self, name: str, kinds: frozenset[ModelKind], task: str) -> None:
        """WrongModelKind, before anything loads, when the stored model's kind is not one of
        ``kinds`` (those that can do ``task``); a name the store lacks is left to ``model``."""
        try:
            key = str(parse_model_name(name))
            loaded = self._loaded.get(key)
            kind = (loaded.manifest if loaded is not None else self.store.get(key)).kind
        except store_errors.StoreError:
            return
        if kind not in kinds:
            can = " or ".join(sorted(kinds))
            raise errors.WrongModelKind(f"model `{key}` is a{'n' if kind[0] in 'aeiou' else ''} {kind} model "
                                        f"and cannot {task}; use a {can} model", param="model")

    def check_images(self, name: str, param: str) -> None:
        """InvalidRequest, before any image is fetched or decoded, when the stored model has no
        vision projector; a name the store lacks is left to ``model``."""
        try:
            key = str(parse_model_name(name))
            loaded = self._loaded.get(key)
            manifest = loaded.manifest if loaded is not None else self.store.get(key)
        except store_errors.StoreError:
            return
        if manifest.projector is None:
            raise errors.InvalidRequest(f"model {key} does not accept images", param=param,
                                        code="images_not_supported")

    @staticmethod
    def canonical_name(name: str) -> str:
        """The name a model is known by once loaded (``smollm2:135m`` for ``SmolLM2:135M``)."""
        return str(parse_model_name(name))

    def check_name(self, name: str) -> str:
        """The stored model's canonical name, or InvalidModelName / ModelNotFound."""
        try:
            return self.store.get(name).name
        except store_errors.InvalidModelName as exc:
            raise errors.InvalidModelName(str(exc), param="model") from exc
        except store_errors.ModelNotFound as exc:
            raise errors.ModelNotFound(name, str(exc)) from exc

    def shape(self, facts: GgufFacts, slot_ctx: int | None = None, free_bytes: int | None = None,
              on_gpu: bool = False) -> ContextShape:
        """The KV layout for a model: ``slot_ctx`` tokens per slot (None: ``--ctx-size``, or the
        automatic context when that is 0) and ``--parallel`` slots, or as many as memory allows (0).
        A shared pool (``--kv-pool shared``): ``--parallel`` sequences at most (0: 128 with the KV
        cache on a GPU, ``on_gpu``, else 32) taking ``--kv-cells`` cells (0: as many as memory allows).
        ``free_bytes``: the memory the KV cache goes to (None: the RAM available now)."""
        s = self.settings
        free = psutil.virtual_memory().available if free_bytes is None else free_bytes
        ctx = slot_ctx or s.ctx_size or auto_context(facts, free)
        if s.kv_pool == "shared":
            seqs = s.parallel or (SHARED_AUTO_SEQUENCES_GPU if on_gpu else SHARED_AUTO_SEQUENCES_CPU)
            cells = s.kv_cells or auto_pool_cells(facts, ctx, seqs, free)
            return ContextShape(slot_ctx=ctx, n_slots=seqs, n_batch=max(s.batch_size, 2 * seqs), n_threads=s.threads,
                                kv_pool="shared", pool_cells=cells)
        slots = s.parallel or auto_parallel(facts, ctx, free)
        return ContextShape(slot_ctx=ctx, n_slots=slots, n_batch=max(s.batch_size, 2 * slots), n_threads=s.threads)

    # ---- GPUs: where a model's layers go (lokal.advise.offload) ---------------------------------
    @property
    def can_offload(self) -> bool:
        """Whether this llama.cpp build can put layers on a GPU (simulated GPUs always can)."""
        return self._devices is not None or gpu_offload_supported()

    def gpus(self) -> tuple[Gpu, ...]:
        """The NVIDIA GPUs llama.cpp sees (CUDA_VISIBLE_DEVICES) and their free memory now (NVML);
        says once in the log when there are some but this llama.cpp build cannot use them."""
        if self._devices is not None:
            return self._devices()
        found = cuda_visible(nvidia_gpus())
        if found and not self._said_cpu_build and not self.can_offload:
            self._said_cpu_build = True
            log.warning("%s", cpu_build_note(tuple(g.name for g in found)))
        return found

    def gpu_layers(self, manifest: Manifest) -> int | None:
        """The layers to offload (None: as many as fit): ``--gpu-layers``, else the Modelfile's
        ``PARAMETER num_gpu`` (Ollama's name; negative: automatic)."""
        if self.settings.gpu_layer_count is not None:
            return self.settings.gpu_layer_count
        own = (manifest.parameters or {}).get("num_gpu")
        if isinstance(own, int) and not isinstance(own, bool) and own >= 0:
            return own
        return None

    def offload_plan(self, manifest: Manifest, shape: ContextShape, gpus: tuple[Gpu, ...] | None = None,
                     gpu_layers: int | None | str = "configured", draft: str | None = None) -> OffloadPlan:
        """Where a model loaded with ``shape`` goes: its layers on ``gpus`` (None: those there now) per
        ``gpu_layers`` ("configured": ``gpu_layers(manifest)``), leaving room for its ``draft`` model,
        which follows a target that is all on the GPUs (engine/draft.py). ModelLoadError for
        impossible settings (``--main-gpu`` beyond the GPUs, a split that leaves them all out)."""
        s = self.settings
        layers = self.gpu_layers(manifest) if gpu_layers == "configured" else gpu_layers
        assert layers is None or isinstance(layers, int)
        model = model_shape(manifest, self.store.home)
        devices = self.gpus() if gpus is None else gpus
        try:
            plan = plan_for(model, model_estimate(model, shape), devices, layers, s.tensor_shares, s.main_gpu,
                            self.can_offload)
            if draft is not None and plan.verdict == "gpu":
                drafts = model_memory_bytes(self.store.get(draft), shape, self.store.home)
                plan = plan_for(model, model_estimate(model, shape), reserve(devices, drafts), layers,
                                s.tensor_shares, s.main_gpu, self.can_offload)
            return plan
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from exc

    def kv_room(self, manifest: Manifest, ram_free: int | None = None,
                freed: OffloadPlan | None = None) -> tuple[int, bool]:
        """The free memory a model's KV cache would go to, and whether it is VRAM: what its GPUs have
        left (less the margin) once its weights and compute buffers are there, when all of them fit
        there; else the RAM available. ``freed``: a plan whose memory is about to be released."""
        ram = psutil.virtual_memory().available if ram_free is None else ram_free
        gpus = self.gpus()
        if freed is not None and len(freed.device_bytes) == len(gpus):
            gpus = tuple(replace(g, memory_free=g.memory_free + b) for g, b in zip(gpus, freed.device_bytes,
                                                                                   strict=True))
        if not gpus or not self.can_offload or self.gpu_layers(manifest) == 0:
            return ram, False
        try:
            model = model_shape(manifest, self.store.home)
            batch = self.settings.batch_size
            bare = estimate_memory(model, batch, 1, batch=batch, cells=batch)  # weights, compute, one batch of KV
            plan = plan_for(model, bare, gpus, self.gpu_layers(manifest), self.settings.tensor_shares,
                            self.settings.main_gpu, True)
        except (EstimateError, ModelLoadError, ValueError):
            return ram, False
        if plan.verdict != "gpu" or not plan.fits:
            return ram, False
        room = sum(max(0, g.memory_free - VRAM_MARGIN_BYTES) for g, share in zip(gpus, plan.tensor_split, strict=True)
                   if share > 0)
        return max(0, room - plan.vram_bytes), True

    def planned_context(self, manifest: Manifest) -> int:
        """The context of one slot of a stored model: its loaded one, else the one it would load with."""
        loaded = self._loaded.get(manifest.name)
        return loaded.context_length if loaded is not None else self.load_shape(manifest).slot_ctx

    def load_shape(self, manifest: Manifest) -> ContextShape:
        """The shape a stored model is loaded with: in automatic mode its Modelfile's ``num_ctx``
        (clamped to the trained length) when it has one, as Ollama loads it; else ``shape``."""
        if manifest.kind not in GENERATING_KINDS:
            # It never generates: one slot of its trained context for the engine, which stays idle
            # (embeddings run in the Embedder's own context).
            ctx = min(manifest.facts.context_length or EMBEDDING_CTX, self.settings.ctx_size or EMBEDDING_CTX)
            return ContextShape(slot_ctx=ctx, n_slots=1, n_batch=self.settings.batch_size,
                                n_threads=self.settings.threads)
        free, on_gpu = self.kv_room(manifest)
        num_ctx = (manifest.parameters or {}).get("num_ctx")
        if self.settings.ctx_size or not isinstance(num_ctx, int) or isinstance(num_ctx, bool) or num_ctx < 64:
            return self.shape(manifest.facts, free_bytes=free, on_gpu=on_gpu)
        trained = manifest.facts.context_length
        return self.shape(manifest.facts, slot_ctx=min(num_ctx, trained) if trained else num_ctx, free_bytes=free,
                          on_gpu=on_gpu)

    def load_sync(self, name: str, start_thread: bool = True, shape: ContextShape | None = None) -> LoadedModel:
        """Load a model in this thread (the CLI's `run` and the offline LLM use this)."""
        key = str(parse_model_name(name))
        manifest = self.store.get(key)
        path = self.store.gguf_path(key)
        draft = self.draft_model(key, manifest)
        try:
            draft_path = self.store.gguf_path(draft) if draft is not None else None
        except store_errors.StoreError as exc:
            raise ModelLoadError(f"its draft model `{draft}` cannot be used: {exc}") from exc
        shape = shape or self.load_shape(manifest)
        gpus = self.gpus()

        def load(offload: Offload) -> LoadedModel:
            return self._load_model(
                key,
                manifest,
                path,
                shape,
                self.settings.max_queue,
                self.settings.prefix_cache,
                start_thread,
                self.settings.prefix_cache_ram_mib,
                self.settings.speculate,
                draft_path,
                offload=offload,
                projector=self.store.blob_path(manifest.projector) if manifest.projector else None,
                adapters=self._adapter_files(manifest),
            )

        def replan(layers: int) -> OffloadPlan:
            return self.offload_plan(manifest, shape, gpus, layers)

        try:
            loaded, plan = load_with_fallback(key, self.offload_plan(manifest, shape, gpus, draft=draft), load,
                                              replan)
        except DraftMismatch as exc:
            raise DraftMismatch(f"`{draft}` cannot draft for it: {exc}") from exc
        loaded.plan = plan
        loaded.memory_bytes = plan.total_bytes
        if draft is not None:  # the draft model has the same KV layout as its target
            loaded.memory_bytes += model_memory_bytes(self.store.get(draft), shape, self.store.home)
        if manifest.projector is not None:  # the vision projector's weights (its compute buffer is small)
            loaded.memory_bytes += self.store.blob_path(manifest.projector).stat().st_size
        return loaded

    def draft_model(self, key: str, manifest: Manifest) -> str | None:
        """The model that drafts for a stored model: its Modelfile's ``PARAMETER draft``, else
        ``--draft`` (``LOKAL_DRAFT``) for the default model; None: no draft model."""
        own = (manifest.parameters or {}).get("draft")
        if isinstance(own, str) and own:
            return own
        if self.settings.draft and key == str(parse_model_name(self.settings.default_model)):
            return self.settings.draft
        return None

    async def get(self, name: str, keep_alive: float | None = None) -> LoadedModel:
        """The loaded model for name, loading it on first use. Raises the store's errors.

        ``keep_alive`` (seconds, ``math.inf`` = forever; None = the server's default) replaces
        the model's current one, as in Ollama where the latest request decides."""
        key = str(parse_model_name(name))
        loaded = self._loaded.get(key)
        lock = self._locks.get(key)
        if loaded is not None and lock is not None and lock.locked():
            async with lock:  # it is being reloaded with a larger context: wait for the new one
                loaded = self._loaded.get(key)
        if loaded is None:
            self.store.get(key)  # ModelNotFound before taking a lock
            lock = self._locks.setdefault(key, asyncio.Lock())
            async with lock:
                loaded = self._loaded.get(key)
                if loaded is None:
                    loaded = await self._load(key)
                    self._loaded[key] = loaded
                    await self._evict_beyond_limit(keep=key)
        self._loaded.move_to_end(key)
        self._last_used[key] = time.time()
        seconds = self.settings.keep_alive_s if keep_alive is None else keep_alive
        self._residency[key] = Residency(keep_alive_s=seconds, idle_since=time.monotonic())
        self._reaper.start()
        return loaded

    async def _load(self, key: str) -> LoadedModel:
        """Load a stored model; a LoRA model over weights that are loaded already (its base's, or
        another LoRA model's over the same base) shares them and their engine: only its adapters load."""
        manifest = self.store.get(key)
        host = await self._adapter_host(manifest) if manifest.adapters else None
        if host is None:
            return await asyncio.to_thread(self.load_sync, key)
        log.info("loading %s: its LoRA adapters over %s's weights", key, host.name)
        return await asyncio.to_thread(LoadedModel.guest, key, manifest, host, self._adapter_files(manifest))

    async def _adapter_host(self, manifest: Manifest) -> LoadedModel | None:
        """The loaded model whose weights a LoRA model shares: one over the same weights blob, loaded
        (its stored base is loaded for it when none is); None when no stored model without adapters
        has these weights (the LoRA model then loads them itself, and others may share them)."""
        for loaded in self._loaded.values():
            if loaded.host is None and loaded.manifest.digest == manifest.digest and loaded.runner is not None:
                return loaded
        base = next((m.name for m in self.store.list() if m.digest == manifest.digest and not m.adapters), None)
        return await self.get(base) if base is not None else None

    def _adapter_files(self, manifest: Manifest) -> list[tuple[Path, float]]:
        return [(self.store.blob_path(a.digest), a.scale) for a in manifest.adapters]

    def _guests(self, host: LoadedModel) -> list[str]:
        """The loaded LoRA models that share ``host``'s weights and engine."""
        return [key for key, loaded in self._loaded.items() if loaded.host is host]

    # ---- a request's num_ctx (Ollama's): reload with a larger context ---------------------------
    def _wanted_context(self, loaded: LoadedModel, options: dict[str, object]) -> int | None:
        """The larger context a request's num_ctx (or the model's Modelfile one) asks for, up to
        the model's trained length; None when the slot is large enough or ``--ctx-size`` fixes it."""
        if self.settings.ctx_size or loaded.host is not None or self._guests(loaded):
            # a fixed context, or one LoRA models share: a larger num_ctx is clamped to it (pipeline)
            return None
        num_ctx = loaded.options(dict(options)).get("num_ctx")
        if not isinstance(num_ctx, int) or isinstance(num_ctx, bool) or num_ctx <= loaded.context_length:
            return None
        trained = loaded.manifest.facts.context_length or loaded.model.n_ctx_train
        wanted = min(num_ctx, trained) if trained else num_ctx
        return wanted if wanted > loaded.context_length else None

    async def _grow_context(self, loaded: LoadedModel, wanted: int) -> LoadedModel:
        """Reload the model with ``wanted`` tokens per slot once it is idle (requests arriving
        meanwhile wait for the new one, as Ollama's scheduler makes them wait), if memory allows;
        otherwise keep it as it is (the request's num_ctx is then clamped to the slot)."""
        key = loaded.name
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            current = self._loaded.get(key)
            if current is not None and current.context_length < wanted:
                shape = await asyncio.to_thread(self._grown_shape, current, wanted)
                if shape is not None:
                    return await self._reload(key, current, shape)
        return current if current is not None else await self.get(key)

    def _grown_shape(self, current: LoadedModel, wanted: int) -> ContextShape | None:
        """The shape with ``wanted`` tokens per slot, if it fits in the memory the model would
        have once the current one is freed; None (and a warning in the log) if it does not."""
        held = current.plan.host_bytes if current.plan is not None else self.memory_bytes(current)
        free, on_gpu = self.kv_room(current.manifest, psutil.virtual_memory().available + held, current.plan)
        shape = self.shape(current.manifest.facts, slot_ctx=wanted, free_bytes=free, on_gpu=on_gpu)
        estimate = model_estimate(model_shape(current.manifest, self.store.home), shape)
        needed = estimate.kv_cache if on_gpu else estimate.total  # VRAM room is counted after the weights
        if needed > free * GROW_SHARE_OF_FREE_RAM:
            log.warning("num_ctx %d for %s needs %d MiB, more than free memory allows: its context stays %d",
                        wanted, current.name, needed >> 20, current.context_length)
            return None
        return shape

    async def _reload(self, key: str, current: LoadedModel, shape: ContextShape) -> LoadedModel:
        """Wait until no request uses ``current``, then load the model again with ``shape``
        (the caller holds the model's lock)."""
        while self._in_use(key, current):
            await asyncio.sleep(REAP_INTERVAL_S / 5)
        log.warning("reloading %s with a context of %d tokens per slot (was %d) for a request's num_ctx",
                 key, shape.slot_ctx, current.context_length)
        if self._loaded.get(key) is current:  # not unloaded meanwhile (keep_alive, eviction)
            self._loaded.pop(key)
            await asyncio.to_thread(current.close)
        try:
            grown = await asyncio.to_thread(self.load_sync, key, True, shape)
        except (store_errors.StoreError, ModelLoadError) as exc:
            self._residency.pop(key, None)
            raise errors.ModelLoadFailed(f"could not reload model `{key}` with a context of {shape.slot_ctx}: "
                                         f"{exc}") from exc
        self._loaded[key] = grown
        self._residency.setdefault(key, Residency(self.settings.keep_alive_s, time.monotonic()))
        self._reaper.start()
        return grown

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

    def memory_bytes(self, loaded: LoadedModel) -> int:
        """lokal's one memory figure for a loaded model (the same estimate ``lokal advise``
        makes for its shape: weights, KV cache of every slot, compute, overhead; VRAM and RAM
        together when it is offloaded, ``loaded.plan`` splits them)."""
        if loaded.memory_bytes is None:  # reads the GGUF's header once per load
            if loaded.plan is not None:
                loaded.memory_bytes = loaded.plan.total_bytes
            else:
                loaded.memory_bytes = model_memory_bytes(loaded.manifest, loaded.model.shape, self.store.home)
        return loaded.memory_bytes

    def planned_memory_bytes(self, manifest: Manifest) -> int:
        """The memory figure of a stored model as this runtime would load it (its slots and
        context): the loaded model's own figure when it is loaded, so every page shows one number."""
        loaded = self._loaded.get(manifest.name)
        if loaded is not None:
            return self.memory_bytes(loaded)
        if manifest.format != "gguf":  # a speech model: its weights (lokal.runtime.speech)
            return manifest.size
        return model_memory_bytes(manifest, self.load_shape(manifest), self.store.home)

    def hold(self, name: str) -> ModelHold:
        """Claim a loaded model for one request (call right after get, with no await between)."""
        key = str(parse_model_name(name))
        self._holds[key] = self._holds.get(key, 0) + 1
        return ModelHold(self, key)

    def _in_use(self, key: str, loaded: LoadedModel) -> bool:
        """Requests hold it, or its engine has work; a base is in use while LoRA models share it."""
        if loaded.host is not None:  # its engine is the base's: the base's work is not its own
            return self._holds.get(key, 0) > 0
        return self._holds.get(key, 0) > 0 or loaded.engine.has_work() or bool(self._guests(loaded))

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
            return await self.speech.unload(key)  # a speech model (Ollama's keep_alive 0, lokal stop)
        for guest in self._guests(loaded):  # LoRA models over its weights go first
            await self.unload(guest)
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

    async def _evict_beyond_limit(self, keep: str) -> None:
        for key in list(self._loaded):
            # LoRA models sharing a base's weights count as the base (and go with it)
            if sum(1 for m in self._loaded.values() if m.host is None) <= self.settings.max_loaded_models:
                return
            model = self._loaded.get(key)
            if model is not None and model.host is None and key != keep and not self._in_use(key, model):
                await self.unload(key)

    async def close(self) -> None:
        await self._reaper.stop()
        for key in list(self._loaded):
            await self.unload(key)
        await self.speech.close()


def load_with_fallback(name: str, plan: OffloadPlan, load: Callable[[Offload], T],
                       replan: Callable[[int], OffloadPlan]) -> tuple[T, OffloadPlan]:
    """``load`` with ``plan``; when llama.cpp fails with layers on a GPU (out of memory, a GPU
    gone), again with half the layers (``replan``), then on the CPU, with one warning each. The
    last ModelLoadError is raised only when even the CPU load fails."""
    try:
        return load(plan.offload()), plan
    except ModelLoadError as exc:
        if plan.gpu_layers == 0:
            raise
        error = exc
    for layers in fallback_layers(plan.gpu_layers):
        where = f"{layers} layers on the GPU" if layers else "the CPU only"
        log.warning("loading %s with %d layers on the GPU failed (%s): trying %s", name, plan.gpu_layers, error, where)
        plan = replan(layers)
        if layers == 0:
            plan = replace(plan, description="CPU only: loading on the GPU failed")
        try:
            return load(plan.offload()), plan
        except ModelLoadError as exc:
            if layers == 0:
                raise
            error = exc
    raise AssertionError("unreachable: fallback_layers ends with the CPU")


async def _merged(choices: list[AsyncGenerator[Event, None]]) -> AsyncGenerator[Event, None]:
    """The events of an n > 1 request's choices as they come (their ``Delta`` and ``Finished``
    carry ``index``; ``Started`` and ``FirstToken`` only from choice 0); a ``Failed`` ends them
    all. Closing it closes every choice."""
    pending = {asyncio.ensure_future(anext(c)): i for i, c in enumerate(choices)}
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in sorted(done, key=pending.__getitem__):
                i = pending.pop(future)
                try:
                    event = future.result()
                except StopAsyncIteration:
                    continue
                if i == 0 or not isinstance(event, Started | FirstToken):
                    yield event
                if isinstance(event, Failed):
                    return
                pending[asyncio.ensure_future(anext(choices[i]))] = i
    finally:
        for future in pending:
            future.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for choice in choices:
            await choice.aclose()


async def _first(event: Event, rest: AsyncGenerator[Event, None]) -> AsyncGenerator[Event, None]:
    """``event``, then ``rest``; closing it closes ``rest``."""
    try:
        yield event
        async for e in rest:
            yield e
    finally:
        await rest.aclose()
