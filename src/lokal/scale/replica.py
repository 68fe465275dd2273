"""One Ray Serve replica: a whole lokal ``Runtime`` (its store, its engines) behind a deployment.

The ingress reaches it only through ``generate`` (a stream of runtime events) and ``call`` (one
runtime method by name). A refusal (a ``LokalError``) travels as a value, never as a Ray task
error, so the ingress raises the runtime's own error type and each API renders it as usual."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any

import psutil

from lokal.config import Settings
from lokal.runtime.errors import LokalError
from lokal.runtime.events import Delta, Event, Failed
from lokal.runtime.request import GenerateRequest
from lokal.runtime.runtime import Runtime
from lokal.scale.coalesce import coalesced

# The runtime methods the ingress may call by name (``call``); everything else stays on the replica.
REMOTE_METHODS = frozenset({"embed", "tokenize", "tokenize_chat", "token_pieces", "context_length", "unload",
                            "load", "prompt_tokens"})


class Refused:
    """A LokalError as it crosses to the ingress: its class and fields, rebuilt there as they were
    (pickling an exception calls its ``__init__`` with the message, which some of ours do not take)."""

    def __init__(self, error: LokalError) -> None:
        self.kind = type(error)
        self.fields = dict(vars(error))
        self.message = error.message

    def error(self) -> LokalError:
        error = self.kind.__new__(self.kind)
        Exception.__init__(error, self.message)
        vars(error).update(self.fields)
        return error


class Accepted:
    """A replica's first answer to ``generate``: it has the request (before any model load)."""


def portable(event: Event) -> Event | Refused:
    """An event as it crosses to the ingress (a ``Failed`` carries its error as a ``Refused``)."""
    return Refused(event.error) if isinstance(event, Failed) else event


def first_tokens() -> Callable[[Event], bool]:
    """Which events of one generation go to the ingress at once (``coalesced``'s ``urgent``):
    all but a ``Delta``, and each choice's first ``Delta`` (the client's time to first token)."""
    seen: set[int] = set()

    def urgent(event: Event) -> bool:
        if not isinstance(event, Delta):
            return True
        if event.index in seen:
            return False
        seen.add(event.index)
        return True

    return urgent


class LokalReplica:
    """The deployment's class (``deployment.py`` wraps it): settings arrive as a dict of
    ``Settings`` fields, so each replica builds the same configuration wherever Ray puts it."""

    async def __init__(self, settings: dict[str, Any], preload: list[str]) -> None:  # type: ignore[misc]
        """Ray Serve awaits it: the replica is ready (and gets requests) once ``preload`` is loaded."""
        self.settings = Settings(**settings)
        self.runtime = Runtime(self.settings)
        self.process = psutil.Process()
        for name in preload:
            await self.runtime.get(name)

    async def generate(self, req: GenerateRequest, affinity: str = "", model: str = "",
                       ) -> AsyncGenerator[Accepted | Event | Refused | list[Event | Refused], None]:
        """The events of one generation; a refusal before any event comes as one ``Refused``.
        ``affinity`` and ``model`` are for the router (``lokal.scale.router``). Closing the stream
        cancels the generation. ``Accepted`` comes first, then the events one by one
        (``ray_stream_window_ms`` 0) or in lists (``lokal.scale.coalesce``)."""
        yield Accepted()
        try:
            stream = await self.runtime.generate(req)
        except LokalError as exc:
            yield Refused(exc)
            return
        window_s = self.settings.ray_stream_window_ms / 1000
        try:
            if window_s <= 0:
                async for event in stream:
                    yield portable(event)
            else:
                async with aclosing(coalesced(stream, window_s, first_tokens())) as batches:
                    async for batch in batches:
                        yield [portable(event) for event in batch]
        finally:
            await stream.aclose()

    async def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], model: str = "") -> Any:
        """``Runtime.<method>(*args, **kwargs)``'s result, or a ``Refused`` (``model``: for the router)."""
        if method not in REMOTE_METHODS:
            raise ValueError(f"{method} is not a remote runtime method")
        try:
            return await getattr(self.runtime, method)(*args, **kwargs)
        except LokalError as exc:
            return Refused(exc)

    def record_routing_stats(self) -> dict[str, Any]:
        """What the router (in the ingress) knows of this replica: its loaded models' status, its
        pid and its resident memory (the ingress's per-replica metrics)."""
        return {"status": self.runtime.status(), "pid": os.getpid(), "rss": self.process.memory_info().rss}

    async def __del__(self) -> None:
        await self.runtime.close()
