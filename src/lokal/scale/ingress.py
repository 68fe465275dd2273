"""The ingress's app: lokal's app over a ``RemoteRuntime``, whose ``/metrics`` also has one set of
series per replica (a ``replica`` label) from what each replica last reported to the router.

The ingress's own series already add the replicas up: request, token and latency counters and
histograms are observed at the ingress as every generation's events pass (each client request
once, a retried one included), and the per-model engine gauges are summed over the replicas
(``lokal.scale.status``). The ``lokal_replica_*`` series say how that splits over replicas."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import FastAPI
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lokal.app import create_app
from lokal.config import Settings
from lokal.engine.engine import EngineStats
from lokal.scale.remote import RemoteRuntime
from lokal.scale.router import replica_status

# Per replica and model: (series, EngineStats field, help). Gauges, then counters (``_total``).
REPLICA_GAUGES = (
    ("lokal_replica_num_requests_running", "running", "sequences being prefilled or decoded on a replica"),
    ("lokal_replica_num_requests_waiting", "waiting", "sequences queued for a slot on a replica"),
    ("lokal_replica_slots", "slots", "sequences a replica's model can decode together"),
    ("lokal_replica_kv_cache_used_cells", "kv_cells_used", "KV-cache cells holding tokens on a replica"),
    ("lokal_replica_kv_cache_total_cells", "kv_cells_total", "KV-cache cells of a replica's model"),
    ("lokal_replica_generation_tokens_per_second", "tokens_per_second",
     "generated tokens per second over a replica engine's window"),
)
REPLICA_COUNTERS = (
    ("lokal_replica_prompt_tokens", "prompt_tokens", "prompt tokens a replica's engine read"),
    ("lokal_replica_cached_prompt_tokens", "cached_prompt_tokens",
     "of those, tokens a replica found in its prefix cache"),
    ("lokal_replica_generation_tokens", "generated_tokens", "tokens a replica's engine generated"),
    ("lokal_replica_preemptions", "preemptions", "sequences a replica put back in its queue (shared KV pool)"),
)


class ReplicaCollector(Collector):
    """The replicas' series at scrape time (each replica reports every second)."""

    def __init__(self, runtime: RemoteRuntime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        replicas = self.runtime.running_replicas()
        count = GaugeMetricFamily("lokal_replicas", "replicas running that the ingress routes to")
        count.add_metric([], len(replicas))
        info = GaugeMetricFamily("lokal_replica_info", "1 for each running replica: its Ray node and process",
                                 labels=["replica", "node", "pid"])
        rss = GaugeMetricFamily("lokal_replica_resident_memory_bytes", "a replica process's resident memory",
                                labels=["replica"])
        loaded = GaugeMetricFamily("lokal_replica_model_loaded", "1 for each model in a replica's memory",
                                   labels=["replica", "model"])
        memory = GaugeMetricFamily("lokal_replica_model_memory_bytes", "estimated memory of a replica's model",
                                   labels=["replica", "model"])
        gauges = [(GaugeMetricFamily(name, doc, labels=["replica", "model"]), field)
                  for name, field, doc in REPLICA_GAUGES]
        counters = [(CounterMetricFamily(name, doc, labels=["replica", "model"]), field)
                    for name, field, doc in REPLICA_COUNTERS]
        for replica in replicas:
            rid = replica.replica_id.unique_id
            stats = replica.routing_stats or {}
            info.add_metric([rid, str(replica.node_id), str(stats.get("pid", ""))], 1)
            if "rss" in stats:
                rss.add_metric([rid], stats["rss"])
            for status in replica_status(replica):
                labels = [rid, status.name]
                loaded.add_metric(labels, 1)
                memory.add_metric(labels, status.memory_bytes)
                for gauge, field in gauges:
                    gauge.add_metric(labels, _stat(status.engine, field))
                for counter, field in counters:
                    counter.add_metric(labels, _stat(status.engine, field))
        yield from (count, info, rss, loaded, memory, *(f for f, _ in gauges), *(f for f, _ in counters))


def _stat(stats: EngineStats, field: str) -> float:
    value: float = getattr(stats, field)
    return value


def ingress_app(settings: Settings, runtime: RemoteRuntime) -> FastAPI:
    """lokal's app over the replicas, with the per-replica metrics."""
    app = create_app(settings, runtime)
    app.state.metrics.registry.register(ReplicaCollector(runtime))
    return app
