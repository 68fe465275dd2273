"""``lokal serve --ray``: the replicas on Ray Serve and the ingress's runtime over them."""

from __future__ import annotations

from lokal.config import Settings
from lokal.scale.cluster import ClusterUnreachable, Scale, connect, deploy
from lokal.scale.remote import RemoteRuntime


class ScaleError(Exception):
    """A scale-out setting or cluster that cannot be used (the CLI prints it as one line)."""


def ray_runtime(settings: Settings, address: str, replicas: int, autoscale: str | None,
                preload: list[str]) -> RemoteRuntime:
    """Join the Ray cluster at ``address`` (``local``: start one), deploy ``replicas`` (or ``autoscale`` MIN:MAX)
    replicas with these settings, and return the ingress's runtime over them."""
    try:
        scale = Scale.parse_autoscale(autoscale) if autoscale is not None else Scale(replicas=replicas)
    except ValueError as exc:
        raise ScaleError(str(exc)) from None
    try:
        connect(address)
    except ClusterUnreachable as exc:
        raise ScaleError(str(exc)) from None
    return RemoteRuntime(settings, deploy(settings, scale, preload))
