"""`lokal serve` on a GPU machine: /health names the CUDA backend, and a served model sits in VRAM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import LiveServer

pytestmark = pytest.mark.gpu


def serve_option(name: str) -> bool:
    help_text = subprocess.run([sys.executable, "-m", "lokal.cli.main", "serve", "--help"], capture_output=True,
                               text=True, env={**os.environ, "COLUMNS": "200"}).stdout
    return name in help_text


def test_health_reports_the_cuda_backend(tmp_path: Path) -> None:
    server = LiveServer(tmp_path, "--no-preload")
    try:
        health = httpx.get(server.url + "/health", timeout=10).json()
    finally:
        server.stop()
    if "backend" not in health:
        pytest.skip(f"/health has no backend field yet (issue 17 item 1): {health}")
    assert "cuda" in json.dumps(health["backend"]).lower(), health


def test_a_served_model_is_in_vram(tmp_path: Path) -> None:
    name, home = os.environ.get("LOKAL_GPU_MODEL_NAME"), os.environ.get("LOKAL_HOME")
    if not name or not home:
        pytest.skip("set LOKAL_GPU_MODEL_NAME and LOKAL_HOME to a store holding it (benchmarks/gpu/run.sh does)")
    if not serve_option("--gpu-layers"):
        pytest.skip("lokal serve has no --gpu-layers yet (issue 17 item 2)")
    server = LiveServer(Path(home), "--model", name, "--parallel", "4", "--ctx-size", "2048", "--keep-alive", "-1")
    try:
        ps = httpx.get(server.url + "/api/ps", timeout=10).json()
    finally:
        server.stop()
    loaded = {m["name"]: m for m in ps["models"]}
    assert name in loaded, ps
    assert loaded[name]["size_vram"] >= 0.9 * loaded[name]["size"], loaded[name]
