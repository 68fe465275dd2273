"""The KubeRay RayService manifest in docs/scale-out.md: valid YAML, a serve config that names
lokal's application with arguments it builds from, and pods with the CPUs its replicas ask for."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import ray
import yaml
from ray.serve.deployment import Application

from lokal.scale.application import INGRESS_NAME, build
from lokal.scale.cluster import DEPLOYMENT_NAME

DOC = Path(__file__).parents[3] / "docs" / "scale-out.md"


def manifest() -> dict[str, Any]:
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)]
    services = [b for b in blocks if isinstance(b, dict) and b.get("kind") == "RayService"]
    assert len(services) == 1, "docs/scale-out.md should have one RayService manifest"
    return services[0]


def test_the_rayservice_manifest_names_lokals_application_and_it_builds() -> None:
    service = manifest()
    assert service["apiVersion"] == "ray.io/v1" and service["metadata"]["name"]
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    (app,) = serve_config["applications"]
    module, _, attr = app["import_path"].partition(":")
    assert (module, attr) == ("lokal.scale.application", "build")
    assert all(isinstance(v, str) for v in app["args"].values()), "args reach Settings as strings"
    built = build(app["args"])
    assert isinstance(built, Application) and built._bound_deployment.name == INGRESS_NAME
    replicas = built._bound_deployment.init_args[1]._bound_deployment
    assert replicas.name == DEPLOYMENT_NAME
    assert replicas.num_replicas == int(app["args"]["replicas"])
    assert replicas.ray_actor_options["num_cpus"] == int(app["args"]["threads"])
    assert replicas.init_args[0]["default_model"] == app["args"]["default_model"]


def test_the_manifests_worker_pods_hold_every_replica_and_mount_the_models() -> None:
    service = manifest()
    args = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    (group,) = cluster["workerGroupSpecs"]
    cpus = int(group["rayStartParams"]["num-cpus"])
    per_pod = cpus // int(args["threads"])
    assert per_pod >= 1 and per_pod * group["maxReplicas"] >= int(args["replicas"])
    (container,) = group["template"]["spec"]["containers"]
    assert int(container["resources"]["limits"]["cpu"]) >= cpus
    assert any(m["mountPath"] == args["home"] for m in container["volumeMounts"])
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # no replica on the head
    ports = {p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert {6379, 8265, 8000} <= ports
