"""lokal as one Ray Serve application, for ``serve run``, ``serve deploy`` and KubeRay's
RayService: an ingress deployment (lokal's FastAPI app over a ``RemoteRuntime``, behind Serve's
HTTP proxy) and the replicas. ``lokal serve --ray`` runs the same ingress in its own process instead.

    serve run lokal.scale.application:build threads=1 parallel=4 replicas=2 default_model=smollm2:135m

Arguments are ``Settings`` fields (strings, as ``LOKAL_*`` variables are) plus ``replicas`` or
``autoscale`` (MIN:MAX)."""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.deployment import Application
from ray.serve.handle import DeploymentHandle

from lokal.config import Settings
from lokal.scale.cluster import Scale, replicas
from lokal.scale.ingress import ingress_app
from lokal.scale.remote import RemoteRuntime

INGRESS_NAME = "LokalIngress"


@serve.ingress()
class LokalIngress:
    """lokal's whole HTTP surface (adapters, UI, security, metrics) in a Serve deployment."""

    def __init__(self, settings: dict[str, Any], handle: DeploymentHandle) -> None:
        self.settings = Settings(**settings)
        self.runtime = RemoteRuntime(self.settings, handle, owns_replicas=False)

    def __serve_build_asgi_app__(self) -> Any:
        return ingress_app(self.settings, self.runtime)


def build(args: dict[str, str]) -> Application:
    """The application from ``serve run``/RayService arguments (module docstring)."""
    if "autoscale" in args:
        scale = Scale.parse_autoscale(args["autoscale"])
    else:
        scale = Scale(replicas=int(args.get("replicas", "1")))
    settings = Settings(**{k: v for k, v in args.items() if k in Settings.model_fields})  # type: ignore[arg-type]
    replica_app = replicas(settings, scale, [settings.default_model])
    ingress = serve.deployment(name=INGRESS_NAME, ray_actor_options={"num_cpus": 0})(LokalIngress)
    return ingress.bind(settings.model_dump(mode="json"), replica_app)
