"""What crosses from a replica to the ingress: a refusal keeps the runtime's error type and fields."""

from __future__ import annotations

import pickle

from lokal.runtime import errors
from lokal.scale.cluster import Scale
from lokal.scale.replica import Refused


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
