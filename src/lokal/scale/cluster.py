"""Joining or starting a Ray cluster and deploying lokal's replicas on it with Ray Serve."""

from __future__ import annotations

import socket
from dataclasses import dataclass

import ray
from ray import serve
from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
from ray.serve.config import AutoscalingConfig, RequestRouterConfig
from ray.serve.deployment import Application
from ray.serve.handle import DeploymentHandle

from lokal.config import Settings
from lokal.runtime.sizing import MAX_AUTO_SLOTS
from lokal.scale.replica import LokalReplica
from lokal.scale.router import PrefixAffinityRouter

APP_NAME = "lokal"
DEPLOYMENT_NAME = "LokalReplica"
ROUTING_STATS_PERIOD_S = 1.0  # how often each replica tells the router its loaded models
HEALTH_CHECK_PERIOD_S = 2.0
PROBE_TIMEOUT_S = 5.0


class ClusterUnreachable(Exception):
    """The Ray cluster at an address could not be joined."""


@dataclass(frozen=True)
class Scale:
    """How many replicas: ``replicas`` fixed, or from ``min_replicas`` to ``max_replicas`` on load."""

    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None

    @classmethod
    def parse_autoscale(cls, text: str) -> Scale:
        """``MIN:MAX`` with 1 <= MIN <= MAX (ValueError otherwise). No scale to zero: the ingress
        answers 503 while no replica runs, and a model's load is too slow to wait for."""
        low, sep, high = text.partition(":")
        if not sep or not low.isdigit() or not high.isdigit() or not 1 <= int(low) <= int(high):
            raise ValueError(f"--autoscale takes MIN:MAX with 1 <= MIN <= MAX, not {text!r}")
        return cls(min_replicas=int(low), max_replicas=int(high))


def _probe(address: str) -> None:
    """ClusterUnreachable unless something listens at ``host:port`` (``ray.init`` would retry a
    dead address for minutes)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and other forms: ray.init fails fast on its own
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise ClusterUnreachable(f"cannot reach the Ray cluster at {address}: {exc}") from exc


def connect(address: str) -> None:
    """Join the cluster at ``address`` (``auto``, ``host:port`` or ``ray://host:port``), or start a
    new one on this machine (``local``). ClusterUnreachable when it cannot be joined."""
    _probe(address)
    if address != "local":
        # As `ray start` does, and ray.init(address=...) does not in Ray 2.60: a token in
        # RAY_AUTH_TOKEN(_PATH) or ~/.ray/auth_token means the cluster wants it (RAY_AUTH_MODE unset).
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    try:
        ray.init(address=address, log_to_driver=False, ignore_reinit_error=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterUnreachable(f"cannot join the Ray cluster at {address}: {exc}") from exc


def slots(settings: Settings) -> int:
    """The sequences one replica decodes at once (``--parallel``; automatic: its ceiling)."""
    return settings.parallel or MAX_AUTO_SLOTS


def replicas(settings: Settings, scale: Scale, preload: list[str]) -> Application:
    """The replicas as a Serve application: each a ``LokalReplica`` with these settings and
    ``settings.threads`` CPUs, routed by lokal's router, taking at most its slots and queue."""
    most = slots(settings) + settings.max_queue
    if scale.max_replicas is not None:
        autoscaling: AutoscalingConfig | None = AutoscalingConfig(
            min_replicas=scale.min_replicas or 1, max_replicas=scale.max_replicas,
            target_ongoing_requests=slots(settings), upscale_delay_s=settings.ray_upscale_delay,
            downscale_delay_s=settings.ray_downscale_delay, look_back_period_s=settings.ray_autoscale_window)
        count: int | None = None
    else:
        autoscaling, count = None, scale.replicas
    router = RequestRouterConfig(
        request_router_class=f"{PrefixAffinityRouter.__module__}.{PrefixAffinityRouter.__name__}",  # type: ignore[arg-type]
        request_router_kwargs={"slots": slots(settings)},
        request_routing_stats_period_s=ROUTING_STATS_PERIOD_S,  # type: ignore[arg-type]
    )
    deployment = serve.deployment(
        name=DEPLOYMENT_NAME,
        num_replicas=count,
        autoscaling_config=autoscaling,
        max_ongoing_requests=most,
        ray_actor_options={"num_cpus": settings.threads},
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
        request_router_config=router,
    )(LokalReplica)
    return deployment.bind(settings.model_dump(mode="json"), preload)


def deploy(settings: Settings, scale: Scale, preload: list[str]) -> DeploymentHandle:
    """Deploy the replicas and return their handle. No Serve HTTP proxy: the ingress is lokal's
    own app in this process."""
    serve.start(http_options={"location": "NoServer"})
    return serve.run(replicas(settings, scale, preload), name=APP_NAME, route_prefix=None)


def undeploy() -> None:
    """Delete lokal's Serve application (its replicas stop); the cluster stays."""
    serve.delete(APP_NAME)
