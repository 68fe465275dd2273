"""What crosses from a replica to the ingress: a refusal keeps the runtime's error type and fields;
events go one by one or in lists, the same events either way."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

from lokal.config import Settings
from lokal.engine.sequence import FinishReason, Timings, Usage
from lokal.runtime import errors
from lokal.runtime.events import Delta, Finished, FirstToken, Queued, Started
from lokal.runtime.request import GenerateRequest
from lokal.scale.cluster import Scale
from lokal.scale.replica import Accepted, LokalReplica, Refused, first_tokens


def test_a_refusal_comes_back_as_the_same_error() -> None:
    error = pickle.loads(pickle.dumps(Refused(errors.ModelNotFound("x:1b", "pull it")))).error()
    assert type(error) is errors.ModelNotFound
    assert (error.message, str(error), error.name, error.param, error.code) == (
        "The model `x:1b` does not exist. pull it", "The model `x:1b` does not exist. pull it", "x:1b", "model",
        "model_not_found")
    busy = pickle.loads(pickle.dumps(Refused(errors.ServerBusy("busy", retry_after_s=3)))).error()
    assert isinstance(busy, errors.ServerBusy) and busy.retry_after_s == 3


def test_autoscale_is_min_colon_max() -> None:
    assert Scale.parse_autoscale("1:4") == Scale(min_replicas=1, max_replicas=4)
    for bad in ("4:1", "0:0", "0:2", "2", "a:b", "-1:2"):
        try:
            Scale.parse_autoscale(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")


def test_replicas_take_their_slots_and_queue_at_most_and_autoscale_on_slots() -> None:
    from lokal.config import Settings
    from lokal.scale.cluster import replicas

    settings = Settings(threads=2, parallel=4, max_queue=16)
    fixed = replicas(settings, Scale(replicas=3), ["m:1"])._bound_deployment
    assert (fixed.num_replicas, fixed.max_ongoing_requests, fixed.ray_actor_options) == (3, 20, {"num_cpus": 2})
    assert fixed.init_args == (settings.model_dump(mode="json"), ["m:1"])
    scaled = replicas(settings, Scale(min_replicas=1, max_replicas=3), [])._bound_deployment
    autoscaling = scaled._deployment_config.autoscaling_config  # no public accessor in Ray 2.60
    assert (autoscaling.min_replicas, autoscaling.max_replicas, autoscaling.target_ongoing_requests) == (1, 3, 4)
    assert (autoscaling.upscale_delay_s, autoscaling.downscale_delay_s, autoscaling.look_back_period_s) == (30, 600, 30)
    quick = Settings(parallel=1, ray_upscale_delay=1, ray_downscale_delay=5, ray_autoscale_window=12)
    tuned = replicas(quick, Scale(min_replicas=1, max_replicas=2), [])._bound_deployment._deployment_config
    assert (tuned.autoscaling_config.upscale_delay_s, tuned.autoscaling_config.downscale_delay_s,
            tuned.autoscaling_config.look_back_period_s, tuned.max_ongoing_requests) == (1, 5, 12, 1 + quick.max_queue)


def test_a_replica_holds_back_only_the_tokens_after_each_choices_first() -> None:
    urgent = first_tokens()
    finished = Finished(FinishReason.STOP, Usage(1, 2), Timings(0.0, 0.1, 0.2, None), "ab", "ab")
    stream = [Queued(0, 0.0), Started(0), FirstToken(0.1), Delta("a"), Delta("b"), Delta("x", index=1),
              Delta("y", index=1), Delta("c"), finished]
    assert [urgent(e) for e in stream] == [True, True, True, True, False, True, False, False, True]


async def _replica_events(home: Path, window_ms: float) -> tuple[list[Any], list[Any]]:
    """A replica (no Ray: its class, as Serve runs it) generating 24 greedy tokens: its stream
    items, and the events in them."""
    settings = Settings(home=home, threads=1, parallel=1, ctx_size=512, ray_stream_window_ms=window_ms)
    replica = LokalReplica.__new__(LokalReplica)
    await replica.__init__(settings.model_dump(mode="json"), ["smollm2:135m"])  # type: ignore[misc]
    try:
        req = GenerateRequest(model="smollm2:135m", prompt="The capital of France is",
                              options={"temperature": 0, "max_tokens": 24, "ignore_eos": True})
        items = [item async for item in replica.generate(req)]
    finally:
        await replica.runtime.close()
    assert isinstance(items[0], Accepted)
    return items[1:], [e for item in items[1:] for e in (item if isinstance(item, list) else [item])]


def _what(event: Any) -> tuple[Any, ...]:
    """An event without its timings."""
    if isinstance(event, Delta):
        return ("delta", event.text, event.token_ids, event.index)
    if isinstance(event, Finished):
        return ("finished", event.reason, event.text, event.usage.completion_tokens)
    return (type(event).__name__,)


@pytest.mark.filterwarnings("ignore:coroutine .LokalReplica.__del__. was never awaited")  # Ray awaits it
async def test_a_replica_sends_the_same_events_in_fewer_items_with_a_window(model_home: Path) -> None:
    single, one_by_one = await _replica_events(model_home, 0)
    assert not any(isinstance(item, list) for item in single)
    batched, coalesced = await _replica_events(model_home, 200)
    assert [_what(e) for e in coalesced] == [_what(e) for e in one_by_one]
    assert sum(isinstance(e, Delta) for e in coalesced) == 24
    assert len(batched) < len(single) / 2  # 24 tokens in far fewer than 24 items
