"""Prometheus metrics of one service instance (its own registry, so apps in one process don't clash)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

from .inference.engine import BatchStats, EngineStats

ENGINE_COUNTERS = {  # EngineStats field → (metric name, help)
    "submitted": ("emoserve_engine_clips_submitted", "clips queued for the model"),
    "completed": ("emoserve_engine_clips_completed", "clips the model answered"),
    "failed": ("emoserve_engine_clips_failed", "clips that failed in the model (e.g. too large alone)"),
    "rejected": ("emoserve_engine_clips_rejected", "clips refused with 503 overloaded (queue full)"),
    "cancelled": ("emoserve_engine_clips_cancelled", "clips dropped before compute because the caller went away"),
    "oom_splits": ("emoserve_engine_oom_splits", "batches split in halves after running out of memory"),
}


class EngineCollector:
    """Exports the engine's running totals at scrape time (no double bookkeeping)."""

    def __init__(self, stats: Callable[[], EngineStats | None]):
        self.stats = stats

    def collect(self):
        stats = self.stats()
        for field, (name, description) in ENGINE_COUNTERS.items():
            family = CounterMetricFamily(name, description)
            family.add_metric([], getattr(stats, field) if stats is not None else 0)
            yield family

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
RATIO_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)


class ServiceMetrics:
    def __init__(self, engine_stats: Callable[[], EngineStats | None] = lambda: None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        r.register(EngineCollector(engine_stats))
        self.requests = Counter("emoserve_requests_total", "HTTP requests", ["route", "method", "status"], registry=r)
        self.latency = Histogram("emoserve_request_latency_seconds", "HTTP request latency", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.audio_seconds = Counter("emoserve_audio_seconds_total", "seconds of audio analysed", registry=r)
        self.batch_size = Histogram("emoserve_batch_size", "clips per model batch", buckets=BATCH_BUCKETS, registry=r)
        self.padding_ratio = Histogram("emoserve_batch_padding_ratio", "padded share of each batch's samples",
                                       buckets=RATIO_BUCKETS, registry=r)
        self.batch_latency = Histogram("emoserve_batch_latency_seconds", "model time per batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("emoserve_queue_depth", "clips waiting for the model", registry=r)
        self.gpu_memory = Gauge("emoserve_gpu_memory_bytes", "GPU memory allocated by the model", registry=r)
        self.model_ready = Gauge("emoserve_model_ready", "1 when the model is loaded and warmed up", registry=r)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_batch(self, stats: BatchStats) -> None:
        """An engine observer: called once per model batch."""
        self.batch_size.observe(stats.size)
        self.padding_ratio.observe(stats.padding_ratio)
        self.batch_latency.observe(stats.compute_s)

    def render(self, queue_depth: int, device_memory_bytes: int | None) -> bytes:
        self.queue_depth.set(queue_depth)
        if device_memory_bytes is not None:
            self.gpu_memory.set(device_memory_bytes)
        return generate_latest(self.registry)
