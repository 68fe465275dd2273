"""``lokal serve --autoscale 1:2`` on a real two-node Ray cluster: Ray Serve's autoscaler adds the
second replica under sustained queued load, and no replica is ever given more than its slots plus
its queue (``max_ongoing_requests``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import LiveServer
from tests.integration.scale.conftest import RAY_ENV, RayCluster

pytestmark = pytest.mark.slow
MODEL = "smollm2:135m"
PARALLEL, QUEUE = 1, 2
CLIENTS = 8  # more than one replica takes (PARALLEL + QUEUE): the rest wait at the ingress


@pytest.fixture(scope="module")
def autoscaled(ray_cluster: RayCluster, model_home: Path) -> Iterator[LiveServer]:
    """1 to 2 replicas of 1 thread, 1 slot and a queue of 2, with Serve's autoscaling delays cut
    to seconds (LOKAL_RAY_*; the handle reports its queue every 0.5 s instead of 10 s)."""
    live = LiveServer(model_home, "--ray", ray_cluster.address, "--autoscale", "1:2", "--threads", "1",
                      "--parallel", str(PARALLEL), "--max-queue", str(QUEUE), "--ctx-size", "1024",
                      "--keep-alive", "-1",
                      env={"LOKAL_AUDIT_LOG": "false", "LOKAL_RAY_ROUTE_TIMEOUT": "120", "LOKAL_RAY_UPSCALE_DELAY": "1",
                           "LOKAL_RAY_AUTOSCALE_WINDOW": "3",
                           "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5", **RAY_ENV})
    yield live
    live.stop()


def _samples(metrics: str, name: str) -> dict[str, float]:
    """A per-replica series of the model: {replica: value}."""
    out = {}
    for line in metrics.splitlines():
        if line.startswith(name + "{") and f'model="{MODEL}"' in line:
            replica = line.split('replica="', 1)[1].split('"', 1)[0]
            out[replica] = float(line.rsplit(" ", 1)[1])
    return out


def _gauge(metrics: str, name: str) -> float:
    return next(float(line.split()[1]) for line in metrics.splitlines() if line.startswith(name + " "))


def test_queued_load_adds_a_replica_that_never_takes_more_than_its_slots_and_queue(autoscaled: LiveServer) -> None:
    statuses: list[int] = []
    most_on_one = 0
    replicas_seen = []

    async def client(http: httpx.AsyncClient, i: int, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            body = {"model": MODEL, "messages": [{"role": "user", "content": f"Tell story {i}.{n}."}],
                    "max_tokens": 32, "ignore_eos": True}
            r = await http.post("/v1/chat/completions", json=body)
            statuses.append(r.status_code)
            assert r.status_code == 200, r.text  # a replica given more than it takes would answer 503
            n += 1

    async def run() -> dict[str, float]:
        nonlocal most_on_one
        stop = asyncio.Event()
        async with httpx.AsyncClient(base_url=autoscaled.url, timeout=180) as http:
            tasks = [asyncio.create_task(client(http, i, stop)) for i in range(CLIENTS)]
            generated: dict[str, float] = {}
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and not any(t.done() for t in tasks):
                metrics = (await http.get("/metrics")).text
                replicas_seen.append(_gauge(metrics, "lokal_replicas"))
                running = _samples(metrics, "lokal_replica_num_requests_running")
                waiting = _samples(metrics, "lokal_replica_num_requests_waiting")
                most_on_one = max([most_on_one, *(running[r] + waiting.get(r, 0) for r in running)])
                generated = _samples(metrics, "lokal_replica_generation_tokens_total")
                # done once a second replica has served part of the load
                if len(generated) == 2 and all(v > 0 for v in generated.values()):
                    break
                await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*tasks)
            return generated

    started = time.monotonic()
    generated = asyncio.run(run())
    print(f"replicas seen: {sorted(set(replicas_seen))}, requests: {len(statuses)}, most on one replica: "
          f"{most_on_one}, tokens by replica: {generated}, {time.monotonic() - started:.0f} s")
    assert replicas_seen[0] <= 1 and max(replicas_seen) == 2
    assert len(generated) == 2 and all(v > 0 for v in generated.values())
    assert set(statuses) == {200}
    assert 0 < most_on_one <= PARALLEL + QUEUE
