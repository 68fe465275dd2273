"""Which replica reads a request: Ray Serve's request-router extension point (``RequestRouter``).

Candidates are the replicas that have the request's model loaded (all of them when none has).
Among those, a conversation goes to the replica its prefix hashes to (rendezvous hashing: the
choice moves only when that replica goes away), so its prompt finds the replica's prefix cache;
when that replica has every slot busy while another has a free one, the least loaded gets it.
Ray then probes the first rank and, if that replica refuses (``max_ongoing_requests``), the next."""

from __future__ import annotations

import hashlib
import importlib
import json
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from lokal.runtime.request import GenerateRequest
from lokal.runtime.runtime import ModelStatus

R = TypeVar("R")
AFFINITY_CHARS = 2048  # how much of a conversation's opening picks its replica

# The routers in this process (Ray builds them inside the ingress's deployment handles); the
# ingress reads the replicas' reported status through them.
ROUTERS: weakref.WeakSet[PrefixAffinityRouter] = weakref.WeakSet()


def affinity_key(req: GenerateRequest) -> str:
    """The model and the opening of the conversation: the messages up to the first user turn (a
    later turn repeats them, so every turn of one conversation has the same key), or the prompt's
    first characters."""
    if req.messages is not None:
        opening: list[Any] = []
        for message in req.messages:
            opening.append(message)
            if message.get("role") == "user":
                break
        text = json.dumps(opening, sort_keys=True, default=str)
    else:
        text = json.dumps(req.prompt, default=str)
    return hashlib.sha256(f"{req.model}\n{text[:AFFINITY_CHARS]}".encode()).hexdigest()


def _score(key: str, replica_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{key}/{replica_id}".encode()).digest()[:8], "big")


def replica_status(replica: RunningReplica) -> list[ModelStatus]:
    """The status a replica last reported (``LokalReplica.record_routing_stats``)."""
    status = (replica.routing_stats or {}).get("status") or []
    return list(status)


def serves(replica: RunningReplica, model: str) -> bool:
    """Whether a replica has the model loaded; yes until it has first reported (a replica loads
    ``--model`` before it runs, and a candidate set that grows when reports arrive would move a
    conversation's replica)."""
    if not replica.routing_stats:
        return True
    return any(s.name == model for s in replica_status(replica))


class PrefixAffinityRouter(RequestRouter):
    """Model-aware, prefix-affine routing (module docstring). ``slots``: the sequences a replica
    decodes at once (its ``--parallel``), past which it counts as busy."""

    def initialize_state(self, slots: int = 1, **kwargs: Any) -> None:
        self.slots = max(1, slots)
        self.informed = False  # whether the controller has told it the running replicas yet
        # Ray may ship this class by value (a copy of this module): register in the imported one.
        importlib.import_module(__name__).ROUTERS.add(self)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        self.informed = True

    def _load(self, replica: RunningReplica) -> int:
        queued = self.replica_queue_len_cache.get(replica.replica_id)
        return queued if queued is not None else 0

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        kwargs = pending_request.kwargs if pending_request is not None else {}
        return rank(candidate_replicas, key=str(kwargs.get("affinity") or ""), slots=self.slots,
                    serves=lambda r: serves(r, str(kwargs.get("model") or "")),
                    load=self._load, name=lambda r: r.replica_id.unique_id)


def rank(replicas: list[R], *, key: str, slots: int, serves: Callable[[R], bool], load: Callable[[R], int],
         name: Callable[[R], str]) -> list[list[R]]:
    """Replicas in the order to try them (Ray probes the first rank, then the next): those that
    serve the model (all when none does); the one ``key`` hashes to first unless its ``slots``
    are all busy while another has a free one; then the others, least loaded first."""
    if not replicas:
        return []
    candidates = [r for r in replicas if serves(r)] or replicas
    by_load = sorted(candidates, key=load)
    if not key:
        return [by_load]
    preferred = max(candidates, key=lambda r: _score(key, name(r)))
    others = [r for r in by_load if r is not preferred]
    if others and load(preferred) >= slots and load(others[0]) < slots:
        return [others, [preferred]]
    return [[preferred], others] if others else [[preferred]]
