"""OpenAI's shapes for what ``n`` and ``logprobs`` add to a generation: several choices read from
one stream (their events carry ``index``), their summed usage, and token logprobs as chat
(``logprobs.content``) and completions (``tokens``/``token_logprobs``/``top_logprobs``/
``text_offset``) report them."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Any

from fastapi import Request

from lokal.engine.sequence import Usage
from lokal.runtime.events import Event, Finished, TokenLogprob, finished_choices
from lokal.server.generation import collect, unless_disconnected


async def collect_choices(stream: AsyncGenerator[Event, None], request: Request, n: int) -> list[Finished]:
    """Run an n-choice generation to its end: its ``Finished`` events in index order. Like
    ``collect``: a client that goes away cancels every choice; a failed one raises its error."""
    if n == 1:
        return [await collect(stream, request)]
    return await unless_disconnected(finished_choices(stream), stream, request)


def total_usage(usages: Sequence[Usage]) -> Usage:
    """n choices' usage as OpenAI counts it: the prompt once, the completions summed."""
    first = usages[0]
    return Usage(first.prompt_tokens, sum(u.completion_tokens for u in usages), first.cached_tokens)


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def chat_logprobs(logprobs: Sequence[TokenLogprob]) -> dict[str, Any]:
    """``choices[].logprobs`` of a chat completion (or of one chunk)."""
    return {
        "content": [
            {**_entry(lp.token, lp.logprob), "top_logprobs": [_entry(t, p) for t, p in lp.top]} for lp in logprobs
        ],
        "refusal": None,
    }


def completion_logprobs(logprobs: Sequence[TokenLogprob], offset: int) -> dict[str, Any]:
    """``choices[].logprobs`` of a text completion (or of one chunk); ``offset``: where the first
    token's text starts in the choice's text (after an echoed prompt)."""
    offsets = []
    for lp in logprobs:
        offsets.append(offset)
        offset += len(lp.token)
    return {
        "tokens": [lp.token for lp in logprobs],
        "token_logprobs": [lp.logprob for lp in logprobs],
        "top_logprobs": [dict(lp.top) for lp in logprobs],
        "text_offset": offsets,
    }
