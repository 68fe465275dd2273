"""Prometheus metrics at ``GET /metrics``.

HTTP request counters and latency histograms are observed when a request ends (a
TrackingMiddleware sink); generation figures (TTFT, inter-token gaps, tokens) when a generation
ends (a subscriber of the runtime's events, the same figures the web UI's monitor shows).
Engine state (running/waiting sequences, KV cells, loaded models and their memory) and each
GPU's memory and utilisation (NVML) are read at scrape time by collectors, so they are never
stale and cost nothing between scrapes. Each app has its own registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lokal import __version__
from lokal.advise.hardware import Gpu, nvidia_gpus
from lokal.runtime.events import Event, Failed, Finished, GenerationRecord
from lokal.runtime.runtime import Runtime
from lokal.server.security.tracking import RequestFacts

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1, 2.5)
SKIPPED_PATHS = ("/ui/static/",)

disable_created_metrics()  # the *_created series double the output and no dashboard reads them


class EngineCollector(Collector):
    """Gauges read from the runtime at scrape time, one series per loaded model."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=["model"])

        loaded = gauge("lokal_model_loaded", "1 for each model in memory")
        memory = gauge("lokal_model_memory_bytes", "estimated memory of a loaded model: weights, KV cache, compute")
        vram = gauge("lokal_model_vram_bytes", "of that estimate, the bytes on GPUs (its offload plan)")
        pool = GaugeMetricFamily("lokal_kv_pool", "1 for a loaded model's KV cache layout: per-slot or shared",
                                 labels=["model", "kv_pool"])
        running = gauge("lokal_num_requests_running", "sequences being prefilled or decoded")
        waiting = gauge("lokal_num_requests_waiting", "sequences queued for a slot")
        slots = gauge("lokal_slots", "sequences a model can decode together")
        kv_used = gauge("lokal_kv_cache_used_cells", "KV-cache cells holding tokens (running and cached prefixes)")
        kv_total = gauge("lokal_kv_cache_total_cells", "KV-cache cells of a model")
        kv_usage = gauge("lokal_kv_cache_usage_ratio", "KV-cache cells used, 0..1")
        tps = gauge("lokal_generation_tokens_per_second", "generated tokens per second over the engine's window")
        host_n = gauge("lokal_prefix_cache_host_entries", "prefixes evicted from slots and kept in host memory")
        host_b = gauge("lokal_prefix_cache_host_bytes", "host memory held by those prefixes")
        drafted = CounterMetricFamily("lokal_speculative_drafted_tokens", "speculative draft tokens fed to the model",
                                      labels=["model"])
        accepted = CounterMetricFamily("lokal_speculative_accepted_tokens",
                                       "speculative draft tokens the greedy pick confirmed", labels=["model"])
        preempted = CounterMetricFamily("lokal_preemptions",
                                        "sequences put back in the queue because the shared KV pool ran out",
                                        labels=["model"])
        for m in self.runtime.status():
            s = m.engine
            name = [m.name]
            loaded.add_metric(name, 1)
            memory.add_metric(name, m.memory_bytes)
            vram.add_metric(name, m.vram_bytes)
            pool.add_metric([m.name, s.kv_pool], 1)
            running.add_metric(name, s.running)
            waiting.add_metric(name, s.waiting)
            slots.add_metric(name, s.slots)
            kv_used.add_metric(name, s.kv_cells_used)
            kv_total.add_metric(name, s.kv_cells_total)
            kv_usage.add_metric(name, s.kv_cells_used / s.kv_cells_total if s.kv_cells_total else 0.0)
            tps.add_metric(name, s.tokens_per_second)
            host_n.add_metric(name, s.host_prefixes)
            host_b.add_metric(name, s.host_prefix_bytes)
            drafted.add_metric(name, s.drafted_tokens)
            accepted.add_metric(name, s.accepted_tokens)
            preempted.add_metric(name, s.preemptions)
        yield from (loaded, memory, vram, pool, running, waiting, slots, kv_used, kv_total, kv_usage, tps, host_n,
                    host_b, drafted, accepted, preempted)


class GpuCollector(Collector):
    """Each NVIDIA GPU's memory and utilisation at scrape time (NVML; no series without a GPU)."""

    def __init__(self, read: Callable[[], tuple[Gpu, ...]] = nvidia_gpus) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        labels = ["device", "name"]
        used = GaugeMetricFamily("lokal_gpu_memory_used_bytes", "GPU memory in use, by every process", labels=labels)
        total = GaugeMetricFamily("lokal_gpu_memory_total_bytes", "GPU memory", labels=labels)
        busy = GaugeMetricFamily("lokal_gpu_utilization_ratio", "share of the last sample period a kernel ran, 0..1",
                                 labels=labels)
        for g in self.read():
            device = [str(g.index), g.name]
            used.add_metric(device, g.memory_used)
            total.add_metric(device, g.memory_total)
            if g.utilization is not None:
                busy.add_metric(device, g.utilization)
        yield from (used, total, busy)


class Metrics:
    """lokal's metrics in their own registry."""

    def __init__(self, runtime: Runtime, read_gpus: Callable[[], tuple[Gpu, ...]] = nvidia_gpus) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("lokal_http_requests", "HTTP requests by route template, method and status",
                                ["route", "method", "status"], registry=r)
        self.request_latency = Histogram("lokal_http_request_duration_seconds", "HTTP request time, end to end",
                                         ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("lokal_time_to_first_token_seconds", "request received to first generated token",
                              ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("lokal_inter_token_latency_seconds", "time between two generated tokens of a stream",
                             ["model"], buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram("lokal_e2e_request_latency_seconds", "generation request received to last token",
                             ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("lokal_prompt_tokens", "prompt tokens read", ["model"], registry=r)
        self.generation_tokens = Counter("lokal_generation_tokens", "tokens generated", ["model"], registry=r)
        self.generations = Counter("lokal_generation_requests",
                                   "generations by model and how they ended (stop, length, cancelled, timeout, error)",
                                   ["model", "outcome"], registry=r)
        r.register(EngineCollector(runtime))
        r.register(GpuCollector(read_gpus))
        ProcessCollector(registry=r)  # process_resident_memory_bytes, CPU seconds, open fds
        Info("lokal", "lokal's version", registry=r).info({"version": __version__})

    def observe(self, facts: RequestFacts) -> None:
        """Sink for TrackingMiddleware: one HTTP request."""
        if facts.path.startswith(SKIPPED_PATHS):
            return
        self.requests.labels(facts.route, facts.method, str(facts.status)).inc()
        self.request_latency.labels(facts.route).observe(facts.latency_s)

    def observe_generation(self, record: GenerationRecord, event: Event) -> None:
        """Runtime subscriber: one generation, when it ends."""
        if not isinstance(event, Finished | Failed):
            return
        model = record.model
        self.generations.labels(model, record.outcome).inc()
        self.prompt_tokens.labels(model).inc(record.prompt_tokens)
        self.generation_tokens.labels(model).inc(record.completion_tokens)
        if record.ttft_s is not None:
            self.ttft.labels(model).observe(record.ttft_s)
        itl = self.itl.labels(model)
        for gap in record.inter_token_s:
            itl.observe(gap)
        if record.duration_s is not None:
            self.e2e.labels(model).observe(record.duration_s)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


router = APIRouter(tags=["lokal"])


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics (text exposition format)."""
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
