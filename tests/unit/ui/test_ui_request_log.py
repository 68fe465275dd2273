"""The monitor's request log: one record per generation, from the runtime's events."""

from __future__ import annotations

from lokal.engine.sequence import FinishReason, Timings, Usage
from lokal.runtime.errors import RequestTimedOut
from lokal.runtime.events import Caller, Delta, Failed, Finished, FirstToken, GenerationRecord, Queued
from lokal.ui.monitor import throughput_history
from lokal.ui.request_log import RequestLog


def finished(record: GenerationRecord) -> Finished:
    usage = Usage(record.prompt_tokens, record.completion_tokens)
    return Finished(FinishReason.STOP, usage, Timings(0.0, record.ttft_s, 1.0, None), "x", "x")


def test_a_generation_is_recorded_once_when_it_ends_with_the_records_figures() -> None:
    log = RequestLog()
    record = GenerationRecord(model="m:1", caller=Caller("/v1/chat/completions"), prompt_tokens=7)
    for event in (Queued(0, 0.0), FirstToken(0.2), Delta("Hel", (1,)), Delta("lo", (2,))):
        log.observe(record, event)
    assert log.recent() == []  # nothing until it ends
    record.ttft_s, record.completion_tokens, record.duration_s, record.outcome = 0.2, 5, 1.2, "stop"
    log.observe(record, finished(record))
    [row] = log.recent()
    assert (row["path"], row["model"], row["status"]) == ("/v1/chat/completions", "m:1", "stop")
    assert (row["ttft_s"], row["prompt_tokens"], row["completion_tokens"], row["duration_s"]) == (0.2, 7, 5, 1.2)
    assert row["tokens_per_second"] == 4 / 1.0  # tokens after the first over the time after it


def test_a_failed_generation_is_recorded_with_its_outcome_and_the_log_is_bounded() -> None:
    log = RequestLog(capacity=2)
    for i in range(3):
        record = GenerationRecord(model=f"m{i}", caller=Caller("cli"), outcome="timeout", duration_s=2.0)
        log.observe(record, Failed(RequestTimedOut("request timed out")))
    assert [r["model"] for r in log.recent()] == ["m1", "m2"] and log.total == 3
    assert {r["status"] for r in log.recent()} == {"timeout"}


def test_throughput_history_spreads_tokens_over_the_generation_time() -> None:
    record = {"started_at": 100.0, "ttft_s": 1.0, "duration_s": 3.0, "completion_tokens": 20}
    history = dict((int(t), v) for t, v in throughput_history([record], now=105.0, seconds=6))
    assert history == {99: 0.0, 100: 0.0, 101: 10.0, 102: 10.0, 103: 0.0, 104: 0.0}
