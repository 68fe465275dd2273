"""What every API surface's adapter shares: who is asking (for the runtime's subscribers), and
running a generation to its end for a non-streaming response."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Coroutine
from typing import Any, TypeVar

from fastapi import Request

from lokal.options import OptionError
from lokal.runtime.errors import ClientDisconnected, InvalidRequest
from lokal.runtime.events import Caller, Event, Finished, finished
from lokal.runtime.runtime import Runtime
from lokal.server.security.tracking import current_request, identity

DISCONNECT_POLL_S = 0.25
T = TypeVar("T")


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def caller(request: Request) -> Caller:
    """Who is asking, for the runtime's subscribers: the route, and (from the tracking
    middleware's facts) the rate-limit identity and the request id."""
    facts = current_request.get()
    if facts is None:
        return Caller(request.url.path)
    return Caller(request.url.path, identity(facts), facts.request_id)


def option_error(exc: OptionError) -> InvalidRequest:
    return InvalidRequest(str(exc), param=exc.key)


async def collect(stream: AsyncGenerator[Event, None], request: Request | None = None) -> Finished:
    """Run a generation to its end. If the HTTP client goes away first, the stream is closed, which
    cancels the generation and frees its slot (streaming responses get this from Starlette).
    Raises the LokalError of a failed generation."""
    if request is None:
        return await finished(stream)
    return await unless_disconnected(finished(stream), stream, request)


async def unless_disconnected(work: Coroutine[Any, Any, T], stream: AsyncGenerator[Event, None],
                              request: Request) -> T:
    """Await ``work`` (which reads ``stream``) while the client is there; if it goes away, cancel
    the work and close the stream, which cancels the generation, and raise ClientDisconnected."""
    task = asyncio.ensure_future(work)
    while not task.done():
        done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
        if not done and await request.is_disconnected():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await stream.aclose()
            raise ClientDisconnected("client disconnected")
    return task.result()


def openai_finish_reason(finished: Finished) -> str:
    if finished.tool_calls:
        return "tool_calls"
    return "length" if finished.reason.value == "length" else "stop"
