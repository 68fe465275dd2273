"""Closed-loop streaming load: c clients, each sending its requests back to back, one record per request."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from lokal.bench.scenarios import Prompt
from lokal.bench.targets import Target


@dataclass
class RequestRecord:
    """What one streamed request did. Times in seconds from the moment it was sent."""

    ttft: float | None = None
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)  # gaps between content chunks after the first
    tokens: int = 0  # completion tokens: the server's count when it gives one, else content chunks
    chunks: int = 0
    usage_tokens: int | None = None  # completion tokens the server reported (usage / eval_count)
    prompt_tokens: int | None = None
    cached_tokens: int | None = None  # of the prompt, read from a cached prefix (OpenAI's usage reports it)
    text: str = ""  # the answer's content as streamed (a later turn of the conversation sends it back)
    draft_tokens: int | None = None  # speculative tokens drafted / accepted, where the stream reports them
    draft_accepted: int | None = None  # (llama-server's timings.draft_n / draft_n_accepted)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RequestOptions:
    max_tokens: int
    seed: int = 0
    ignore_eos: bool = True  # cleared for servers that refuse the field


def _openai_body(target: Target, prompt: Prompt, opts: RequestOptions) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": target.model, "messages": prompt.messages, "stream": True, "temperature": 0,
        "max_tokens": opts.max_tokens, "seed": opts.seed, "stream_options": {"include_usage": True},
    }
    if opts.ignore_eos:
        body["ignore_eos"] = True
    return body


def _ollama_body(target: Target, prompt: Prompt, opts: RequestOptions) -> dict[str, Any]:
    return {"model": target.model, "messages": prompt.messages, "stream": True,
            "options": {"num_predict": opts.max_tokens, "temperature": 0, "seed": opts.seed}}


async def stream_request(
    client: httpx.AsyncClient, target: Target, prompt: Prompt, opts: RequestOptions
) -> RequestRecord:
    """Send one streaming chat request; never raises for server or network errors (they go in `error`)."""
    rec = RequestRecord()
    start = time.perf_counter()
    last = 0.0
    path, body = (("/api/chat", _ollama_body(target, prompt, opts)) if target.api == "ollama"
                  else ("/v1/chat/completions", _openai_body(target, prompt, opts)))
    try:
        async with client.stream("POST", target.url + path, json=body) as r:
            if r.status_code != 200:
                rec.error = f"HTTP {r.status_code}: {error_message(await r.aread())}"
            else:
                async for line in r.aiter_lines():
                    content, done = _parse_line(line, target.api, rec)
                    if content:
                        now = time.perf_counter()
                        if rec.ttft is None:
                            rec.ttft = now - start
                        else:
                            rec.itl.append(now - last)
                        last = now
                        rec.chunks += 1
                        rec.text += content
                    if done:
                        break
    except httpx.HTTPError as exc:
        rec.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    except (json.JSONDecodeError, ValueError) as exc:
        rec.error = f"bad response: {exc}"
    rec.latency = time.perf_counter() - start
    if rec.error is None and rec.ttft is None:
        rec.error = "no content streamed"
    rec.tokens = rec.usage_tokens if rec.usage_tokens is not None else rec.chunks
    return rec


def error_message(body: bytes) -> str:
    """The message of an OpenAI (`{"error": {"message": …}}`) or Ollama (`{"error": "…"}`) error body, else its text."""
    text = body.decode(errors="replace").strip()
    try:
        err = json.loads(text).get("error")
        text = str(err.get("message") if isinstance(err, dict) else err or text)
    except (json.JSONDecodeError, AttributeError):
        pass
    return " ".join(text.split())[:200]


def _parse_line(line: str, api: str, rec: RequestRecord) -> tuple[str, bool]:
    """The content of one stream line and whether the stream is over; usage counts land in `rec`."""
    if api == "ollama":
        if not line.strip():
            return "", False
        obj = json.loads(line)
        if obj.get("error"):
            raise ValueError(str(obj["error"]))
        if obj.get("done"):
            rec.usage_tokens = obj.get("eval_count")
            rec.prompt_tokens = obj.get("prompt_eval_count")
        return (obj.get("message") or {}).get("content") or "", bool(obj.get("done"))
    if not line.startswith("data:"):
        return "", False
    data = line[5:].strip()
    if data == "[DONE]":
        return "", True
    obj = json.loads(data)
    if obj.get("error"):
        raise ValueError(str(obj["error"]))
    timings = obj.get("timings")
    if isinstance(timings, dict) and "draft_n" in timings:
        rec.draft_tokens = int(timings["draft_n"])
        rec.draft_accepted = int(timings.get("draft_n_accepted") or 0)
    usage = obj.get("usage")
    if usage:
        rec.usage_tokens = usage.get("completion_tokens")
        rec.prompt_tokens = usage.get("prompt_tokens")
        rec.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    choices = obj.get("choices") or []
    return ((choices[0].get("delta") or {}).get("content") or "") if choices else "", False


async def run_closed_loop(
    target: Target,
    prompts: list[Prompt],
    concurrency: int,
    opts: RequestOptions,
    on_record: Callable[[RequestRecord], None] | None = None,
    timeout: float = 600.0,
) -> tuple[list[RequestRecord], float]:
    """`concurrency` clients share `prompts` (client w sends prompts w, w+c, w+2c, …); returns records and wall time."""
    # No connection reuse: llama-server closes idle keep-alive connections without notice, and a request
    # sent on one fails with 'Server disconnected'. A fresh loopback connection per request costs every
    # target the same ~1 ms.
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=0)
    tmo = httpx.Timeout(timeout, connect=10.0)
    async with httpx.AsyncClient(timeout=tmo, limits=limits) as client:
        async def client_loop(w: int) -> list[RequestRecord]:
            out = []
            for prompt in prompts[w::concurrency]:
                rec = await stream_request(client, target, prompt, opts)
                out.append(rec)
                if on_record:
                    on_record(rec)
            return out

        start = time.perf_counter()
        per_client = await asyncio.gather(*(client_loop(w) for w in range(concurrency)))
        wall = time.perf_counter() - start
    return [r for rs in per_client for r in rs], wall
