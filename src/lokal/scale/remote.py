"""The ingress's runtime: the ``Runtime`` interface the API adapters use, answered by replicas.

Generations, embeddings and tokenization go to a replica through a Ray Serve deployment handle
(streams with ``stream=True``); the router (``lokal.scale.router``) picks the replica. The
ingress's own subscribers (metrics, rate limits, audit, the monitor) see every event as if the
generation ran here. The model store is answered locally: ``/api/tags``, ``/v1/models``, show,
pull, create and delete read and write the store on the ingress's machine (on one machine, the
replicas' store; on a cluster each node pulls what its replicas load)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from ray.exceptions import NodeDiedError, RayActorError, RayError, WorkerCrashedError
from ray.serve.exceptions import DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from ray.serve.request_router import RunningReplica

from lokal.config import Settings
from lokal.engine.embedder import EmbedResult
from lokal.runtime import errors
from lokal.runtime.events import Delta, Event, Failed, Finished, FirstToken, GenerationRecord, Queued, result_only
from lokal.runtime.loaded_model import LoadedModel
from lokal.runtime.request import GenerateRequest
from lokal.runtime.runtime import RETRY_AFTER_S, ModelStatus, Runtime
from lokal.scale.cluster import undeploy
from lokal.scale.replica import Accepted, Refused
from lokal.scale.router import ROUTERS, affinity_key, replica_status
from lokal.scale.status import combined
from lokal.store.errors import StoreError

log = logging.getLogger(__name__)

# What a replica that died, or could not be reached, raises at the ingress (a RayTaskError, an
# exception in lokal's own code on the replica, is not retried).
REPLICA_LOST = (RayActorError, WorkerCrashedError, NodeDiedError)


def replica_lost(exc: BaseException) -> errors.GenerationFailed:
    return errors.GenerationFailed(f"the replica serving this request failed: {type(exc).__name__}",
                                   code="replica_failed")


def replica_error(exc: RayError) -> errors.GenerationFailed:
    """Any other Ray failure (a bug in the replica's code): the request fails, with its cause logged."""
    log.error("replica request failed: %s", exc)
    return errors.GenerationFailed(f"the replica failed: {type(exc).__name__}")


def route_name(name: str) -> str:
    """The model's canonical name for the router; a name that does not parse is left to the
    replica to refuse."""
    try:
        return Runtime.canonical_name(name)
    except StoreError:
        return name


def _unwrap(value: Any) -> Any:
    if isinstance(value, Refused):
        raise value.error()
    return value


def observe(record: GenerationRecord, event: Event) -> None:
    """Fill in the ingress's record of a generation from a replica's events (what the runtime's
    pipeline does from the engine's deltas on a single lokal)."""
    now = time.perf_counter()
    if isinstance(event, Queued):
        record.prompt_tokens = event.prompt_tokens
    elif isinstance(event, FirstToken):
        record.ttft_s = now - record.arrived
    elif isinstance(event, Delta):
        record.completion_tokens += len(event.token_ids)
        if record.last_token is not None:
            record.inter_token_s.append(now - record.last_token)
        record.last_token = now
    elif isinstance(event, Finished):
        record.prompt_tokens = event.usage.prompt_tokens if event.index == 0 else 0
        record.completion_tokens = event.usage.completion_tokens
        record.outcome = event.reason.value
        record.duration_s = now - record.arrived
    elif isinstance(event, Failed):
        record.outcome = "error"
        record.duration_s = now - record.arrived


class ReplicaStream:
    """A generation's Ray stream at the ingress, read one item at a time: a replica sends its
    events alone or in lists (``lokal.scale.coalesce``), and each list is read out in order."""

    def __init__(self, remote: DeploymentResponseGenerator[Any]) -> None:
        self.remote = remote
        self.pending: deque[Any] = deque()  # the rest of the last list

    async def next(self) -> Any:
        """The next item (StopAsyncIteration at the end; a Ray error once the items before it are read)."""
        if self.pending:
            return self.pending.popleft()
        item = await self.remote.__anext__()
        if isinstance(item, list):
            self.pending.extend(item)
            return self.pending.popleft()
        return item

    def cancel(self) -> None:
        """Stop the generation on the replica."""
        self.remote.cancel()


class RemoteRuntime(Runtime):
    """A ``Runtime`` whose models live on Ray Serve replicas (``handle``: the replica deployment's)."""

    def __init__(self, settings: Settings, handle: DeploymentHandle, owns_replicas: bool = True) -> None:
        """``owns_replicas``: closing deletes the Serve application (``lokal serve --ray``; not a
        Serve-managed ingress, ``lokal.scale.application``)."""
        super().__init__(settings)
        self.handle = handle
        self.owns_replicas = owns_replicas
        self._generate: DeploymentHandle | None = None  # the handle's streaming ``generate``, made once

    def _streaming(self) -> DeploymentHandle:
        """The handle for ``LokalReplica.generate`` streams (each ``options`` call and attribute
        of a handle builds a new one: once, not per request)."""
        if self._generate is None:
            self._generate = self.handle.options(method_name="generate", stream=True)
        return self._generate

    # ---- replicas ------------------------------------------------------------------------------
    def replica_count(self) -> int | None:
        """Running replicas as the router knows them (None before Serve's controller has told it:
        a router is built by the first request, and learns the replicas shortly after)."""
        routers = [r for r in ROUTERS if r.informed]
        return max(len(r.curr_replicas) for r in routers) if routers else None

    @staticmethod
    def running_replicas() -> list[RunningReplica]:
        """The running replicas as the router knows them, each with what it last reported."""
        routers = list(ROUTERS)
        return list(routers[0].curr_replicas.values()) if routers else []

    def _check_healthy(self) -> None:
        """ServerBusy when no replica runs now (until the router knows, Serve holds a request
        until one does, up to ``ray_route_timeout``)."""
        if self.replica_count() == 0:
            raise errors.ServerBusy("no healthy replica is serving; try again shortly", retry_after_s=RETRY_AFTER_S)

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A runtime method on one replica (one serving the model: ``args[0]``, a name or a
        request); retried once (on another replica) if it dies."""
        self._check_healthy()
        first = args[0]
        model = route_name(first.model if isinstance(first, GenerateRequest) else str(first))
        for attempt in (1, 2):
            try:
                return _unwrap(await self.handle.call.remote(method, args, kwargs, model=model))
            except REPLICA_LOST as exc:
                if attempt == 2:
                    raise errors.ServerBusy(f"the replica failed twice: {type(exc).__name__}",
                                            retry_after_s=RETRY_AFTER_S) from exc
                log.warning("replica failed during %s (%s): retrying on another", method, type(exc).__name__)
            except RayError as exc:
                raise replica_error(exc) from exc
        raise AssertionError("unreachable")

    async def _each(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """A runtime method on every running replica at once (Serve's broadcast; for control calls:
        load, unload): their results. A replica lost meanwhile is left out (its models went with
        it); a refusal is raised."""
        self._check_healthy()
        try:
            outcomes = await self.handle.broadcast("call", method, args, kwargs).results_async(return_exceptions=True)
        except DeploymentUnavailableError as exc:
            raise errors.ServerBusy("no healthy replica is serving; try again shortly",
                                    retry_after_s=RETRY_AFTER_S) from exc
        results = []
        for outcome in outcomes:
            if isinstance(outcome, REPLICA_LOST):
                log.warning("a replica was lost during %s (%s)", method, type(outcome).__name__)
            elif isinstance(outcome, RayError):
                raise replica_error(outcome) from outcome
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                results.append(_unwrap(outcome))
        return results

    # ---- the service ---------------------------------------------------------------------------
    async def generate(self, req: GenerateRequest) -> AsyncGenerator[Event, None]:
        """A generation on the replica the router picks. A replica that dies before the first event
        is replaced by another (once). One that dies midway: a stream read for its result alone
        (``events.result_only``: a non-streaming response) starts again on another replica (once);
        a stream read by a client ends with ``Failed``. With n > 1, a restart answers the choices
        that had not finished."""
        self._check_healthy()
        arrived = time.perf_counter()
        model = route_name(req.model)
        first, remote = await self._start(req, model)
        record = GenerationRecord(model=model, caller=req.caller, arrived=arrived)
        return self._relay(req, model, first, remote, record)

    async def _start(self, req: GenerateRequest, model: str) -> tuple[Event, ReplicaStream]:
        """The first event of a generation on a replica and the replica's stream, or the
        runtime's refusal raised."""
        for attempt in (1, 2):
            remote = ReplicaStream(self._streaming().remote(  # type: ignore[arg-type]
                req, affinity=affinity_key(req), model=model))
            try:
                await self._accepted(remote)
                first = await remote.next()
            except REPLICA_LOST as exc:
                remote.cancel()
                if attempt == 2:
                    raise errors.ServerBusy(f"the replica failed twice: {type(exc).__name__}",
                                            retry_after_s=RETRY_AFTER_S) from exc
                log.warning("replica failed before a generation began (%s): retrying on another", type(exc).__name__)
                continue
            except RayError as exc:
                remote.cancel()
                raise replica_error(exc) from exc
            except StopAsyncIteration as exc:
                raise errors.GenerationFailed("the replica ended the generation without an event") from exc
            if isinstance(first, Refused):
                remote.cancel()
                raise first.error()
            return first, remote
        raise AssertionError("unreachable")

    async def _accepted(self, remote: ReplicaStream) -> None:
        """Wait for a replica to take the request (``Accepted``); ServerBusy (503) after
        ``ray_route_timeout``: no replica runs (they are being replaced) or every one is full."""
        try:
            taken = await asyncio.wait_for(remote.next(), self.settings.ray_route_timeout)
        except TimeoutError:
            remote.cancel()
            raise errors.ServerBusy(f"no replica took the request within {self.settings.ray_route_timeout:g} s "
                                    "(none is running, or all are full)", retry_after_s=RETRY_AFTER_S) from None
        if not isinstance(taken, Accepted):
            raise errors.GenerationFailed(f"the replica answered {type(taken).__name__} before accepting")

    async def _relay(self, req: GenerateRequest, model: str, first: Event, remote: ReplicaStream,
                     record: GenerationRecord) -> AsyncGenerator[Event, None]:
        """The replica's events, each published to the ingress's subscribers. Closing it cancels
        the generation on the replica."""
        ended = False
        restarted = False
        done: set[int] = set()  # the choices that have finished (n > 1: a restart drops them again)
        try:
            event: Event | Refused = first
            while True:
                if isinstance(event, Refused):
                    event = Failed(event.error())
                # a restart's copy of a choice already answered is left out
                if not (isinstance(event, Delta | Finished) and event.index in done):
                    if isinstance(event, Finished):
                        done.add(event.index)
                    observe(record, event)
                    self._publish(record, event)
                    yield event
                try:
                    event = await remote.next()
                except StopAsyncIteration:
                    ended = True
                    return
                except RayError as exc:
                    lost = isinstance(exc, REPLICA_LOST)
                    if lost and result_only.get() and not restarted:
                        restarted = True
                        log.warning("replica failed during a generation (%s): starting it again on another",
                                    type(exc).__name__)
                        try:
                            event, remote = await self._start(req, model)
                            continue
                        except errors.LokalError as refused:
                            event = Failed(refused)
                    else:
                        event = Failed(replica_lost(exc) if lost else replica_error(exc))
                    ended = True
                    observe(record, event)
                    self._publish(record, event)
                    yield event
                    return
        finally:
            if not ended:
                remote.cancel()

    async def embed(self, model: str, inputs: Sequence[str | Sequence[int]], *, truncate: bool = True,
                    normalize: bool = True, keep_alive: float | None = None, dimensions: int | None = None,
                    param: str = "input") -> tuple[EmbedResult, int, float]:
        """On one replica; no inputs (Ollama's load request) loads the model on every replica, as ``load``."""
        kwargs = {"truncate": truncate, "normalize": normalize, "keep_alive": keep_alive, "dimensions": dimensions,
                  "param": param}
        if not inputs:
            loaded: list[tuple[EmbedResult, int, float]] = await self._each("embed", model, [], **kwargs)
            if loaded:
                return loaded[0]
        result: tuple[EmbedResult, int, float] = await self._call("embed", model, list(inputs), **kwargs)
        return result

    async def tokenize(self, model: str, text: str, *, special: bool = True, keep_alive: float | None = None,
                       parse_special: bool | None = None) -> list[int]:
        ids: list[int] = await self._call("tokenize", model, text, special=special, keep_alive=keep_alive,
                                          parse_special=parse_special)
        return ids

    async def tokenize_chat(self, model: str, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True,
                            keep_alive: float | None = None) -> list[int]:
        ids: list[int] = await self._call("tokenize_chat", model, messages,
                                          add_generation_prompt=add_generation_prompt, keep_alive=keep_alive)
        return ids

    async def token_pieces(self, model: str, tokens: list[int], keep_alive: float | None = None,
                           special: bool = True) -> list[bytes]:
        pieces: list[bytes] = await self._call("token_pieces", model, tokens, keep_alive, special)
        return pieces

    async def context_length(self, model: str) -> int:
        length: int = await self._call("context_length", model)
        return length

    async def prompt_tokens(self, req: GenerateRequest) -> int:
        """Counted on a replica that serves the model (any: they render and tokenize alike)."""
        count: int = await self._call("prompt_tokens", req)
        return count

    async def load(self, name: str, keep_alive: float | None = None) -> str:
        """Loads it on every replica, with this keep_alive: the next request is fast wherever the
        router sends it (a replica started later loads only ``--model``)."""
        names: list[str] = await self._each("load", name, keep_alive)
        return names[0] if names else self.canonical_name(name)

    async def model(self, name: str, keep_alive: float | None = None) -> LoadedModel:
        """There is no model in the ingress's process: every adapter goes through the methods
        above. A caller that needs one gets InvalidRequest (after the model is loaded on the replicas)."""
        await self.load(name, keep_alive)
        raise errors.InvalidRequest("this request needs the model in the ingress's process, which lokal serve --ray "
                                    "does not have", code="not_supported_on_ray")

    def status(self) -> list[ModelStatus]:
        """The replicas' loaded models as they last reported them to the router, one entry per
        model (``lokal.scale.status.combined``)."""
        return combined([s for r in self.running_replicas() for s in replica_status(r)])

    def is_loaded(self, name: str) -> bool:
        key = self.canonical_name(name)
        return any(s.name == key for s in self.status())

    async def close(self) -> None:
        """The ingress is going: its replicas go too (the Serve application is deleted)."""
        await super().close()
        if self.owns_replicas:
            await asyncio.to_thread(undeploy)

    async def unload(self, name: str) -> bool:
        """Unloads it on every replica (``ollama stop``, keep_alive 0): whether one had it."""
        return any(await self._each("unload", name))
