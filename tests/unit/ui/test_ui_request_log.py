"""The monitor's request log: TTFT and tokens/s read off OpenAI SSE and Ollama NDJSON responses."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from lokal.ui.monitor import throughput_history
from lokal.ui.request_log import RequestLog, RequestLogMiddleware, RequestRecord


def run(app_chunks: list[bytes], path: str, body: dict[str, Any], delay: float = 0.01) -> RequestLog:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for chunk in app_chunks:
            await asyncio.sleep(delay)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    log = RequestLog(capacity=3)
    middleware = RequestLogMiddleware(app, log)
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path}
    asyncio.run(middleware(scope, receive, send))
    assert b"".join(m.get("body", b"") for m in sent) == b"".join(app_chunks)  # passed through unchanged
    return log


def sse(obj: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def test_openai_stream_counts_tokens_and_times_the_first_one() -> None:
    chunks = [sse({"choices": [{"delta": {"role": "assistant", "content": ""}}]})]
    chunks += [sse({"choices": [{"delta": {"content": w}}]}) for w in ["Hel", "lo", " there"]]
    chunks += [sse({"choices": [], "usage": {"completion_tokens": 4}}), b"data: [DONE]\n\n"]
    [record] = run(chunks, "/v1/chat/completions", {"model": "m:1"}).recent()
    assert record["model"] == "m:1" and record["status"] == 200 and record["completion_tokens"] == 4
    assert 0.015 < record["ttft_s"] < record["duration_s"]  # the empty role chunk is not a token
    assert record["tokens_per_second"] > 0


def test_ollama_ndjson_uses_eval_count_and_eval_duration_split_across_chunks() -> None:
    lines = [json.dumps({"message": {"content": "Hi"}, "done": False}),
             json.dumps({"done": True, "eval_count": 10, "eval_duration": 500_000_000})]
    blob = ("\n".join(lines) + "\n").encode()
    [record] = run([blob[:7], blob[7:30], blob[30:]], "/api/chat", {"model": "m:2"}).recent()
    assert record["completion_tokens"] == 10 and record["tokens_per_second"] == 20.0


def test_other_paths_are_not_recorded_and_the_log_is_bounded() -> None:
    assert run([b"{}"], "/api/tags", {}).recent() == []
    log = RequestLog(capacity=2)
    for i in range(3):
        log.add(RequestRecord("/v1/completions", f"m{i}", 200, float(i), 1.0, 0.1, 5, 5.0))
    assert [r["model"] for r in log.recent()] == ["m1", "m2"] and log.total == 3


def test_throughput_history_spreads_tokens_over_the_generation_time() -> None:
    record = {"started_at": 100.0, "ttft_s": 1.0, "duration_s": 3.0, "completion_tokens": 20}
    history = dict((int(t), v) for t, v in throughput_history([record], now=105.0, seconds=6))
    assert history == {99: 0.0, 100: 0.0, 101: 10.0, 102: 10.0, 103: 0.0, 104: 0.0}
