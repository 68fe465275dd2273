"""lokal as one Ray Serve application (``lokal.scale.application:build``, what a RayService runs):
the same routes behind Serve's own HTTP proxy."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.integration.conftest import free_port
from tests.integration.scale.conftest import RAY_ENV, RayCluster

pytestmark = pytest.mark.slow
SERVE = str(Path(sys.executable).parent / "serve")


@pytest.fixture(scope="module")
def serve_app(ray_cluster: RayCluster, model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``serve run`` of a config like a RayService's serveConfigV2: one replica, 1 thread."""
    port = free_port()
    config = tmp_path_factory.mktemp("serve") / "lokal.yaml"
    config.write_text(yaml.safe_dump({
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [{"name": "lokal-app", "route_prefix": "/", "import_path": "lokal.scale.application:build",
                          "args": {"replicas": "1", "threads": "1", "parallel": "2", "ctx_size": "1024",
                                   "home": str(model_home), "audit_log": "false"}}],
    }))
    log = config.with_suffix(".log")
    proc = subprocess.Popen([SERVE, "run", "--address", ray_cluster.address, str(config)],
                            env={**os.environ, **RAY_ENV}, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    else:
        raise RuntimeError(f"the Serve application did not come up: {log.read_text()[-3000:]}")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_the_serve_application_answers_like_lokal(serve_app: str) -> None:
    client = openai.OpenAI(base_url=serve_app + "/v1", api_key="none")
    messages = [{"role": "user", "content": "Say hello."}]
    chunks = list(client.chat.completions.create(model="smollm2:135m", messages=messages,  # type: ignore[arg-type]
                                                 max_tokens=6, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model:1b", messages=messages)  # type: ignore[arg-type]
    assert missing.value.code == "model_not_found"
