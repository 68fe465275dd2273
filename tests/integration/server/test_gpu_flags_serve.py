"""`lokal serve --gpu-layers auto --kv-pool shared` on this CPU machine, with the real model: it
serves concurrent requests, `lokal ps` and /api/ps say where the model runs, and /metrics has the
pool's mode and its preemption counter."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import LiveServer

pytestmark = pytest.mark.slow
MODEL = "smollm2:135m"


def test_a_shared_pool_with_automatic_offload_serves(model_home: Path) -> None:
    server = LiveServer(model_home, "--model", MODEL, "--gpu-layers", "auto", "--kv-pool", "shared",
                        "--parallel", "4", "--ctx-size", "512", "--kv-cells", "1024", "--keep-alive", "-1")
    try:
        def ask(i: int) -> str:
            r = httpx.post(server.url + "/api/generate", timeout=120, json={
                "model": MODEL, "prompt": f"Count to {i + 3}:", "stream": False,
                "options": {"temperature": 0, "num_predict": 8}})
            assert r.status_code == 200, r.text
            return str(r.json()["response"])

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(ask, range(6)))
        assert all(answers)
        (ps,) = httpx.get(server.url + "/api/ps", timeout=10).json()["models"]
        assert ps["size_vram"] == 0 and ps["size"] > 50_000_000  # this llama.cpp build has no GPU backend
        cli = subprocess.run([sys.executable, "-m", "lokal.cli.main", "ps"], capture_output=True, text=True,
                             timeout=60, env={**os.environ, "LOKAL_HOME": str(model_home),
                                              "LOKAL_PORT": str(server.port)})
        assert cli.returncode == 0 and "100% CPU" in cli.stdout, cli.stdout + cli.stderr
        text = httpx.get(server.url + "/metrics", timeout=10).text
        found = {(s.name, tuple(sorted(s.labels.items()))): s.value
                 for family in text_string_to_metric_families(text) for s in family.samples}
        assert found[("lokal_kv_pool", (("kv_pool", "shared"), ("model", MODEL)))] == 1
        assert found[("lokal_kv_cache_total_cells", (("model", MODEL),))] == 1024
        assert ("lokal_preemptions_total", (("model", MODEL),)) in found
        assert found[("lokal_model_vram_bytes", (("model", MODEL),))] == 0
    finally:
        server.stop()
