"""GET /health: liveness with the loaded models, and the llama.cpp backend with its devices."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from lokal import __version__
from lokal.app import create_app
from lokal.config import Settings
from lokal.engine.devices import backend


def test_health_lists_the_backend_and_its_devices_beside_the_loaded_models(tmp_path: Path) -> None:
    with TestClient(create_app(Settings(home=tmp_path, audit_log=False))) as client:
        body = client.get("/health").json()
    found = backend()
    assert list(body) == ["status", "version", "loaded", "backend", "devices"]
    assert (body["status"], body["version"], body["loaded"]) == ("ok", __version__, [])
    assert body["backend"] == found.name
    assert [{k: v for k, v in d.items() if k != "memory_free"} for d in body["devices"]] == [
        {"name": d.name, "description": d.description, "kind": d.kind, "memory_total": d.memory_total}
        for d in found.devices
    ]
    assert all(0 < d["memory_free"] <= d["memory_total"] for d in body["devices"])
