"""Prometheus metrics of one server instance.

Each :class:`Metrics` owns its own ``CollectorRegistry`` so that several servers (or tests) in
one process never collide; ``/metrics`` renders ``Metrics.registry``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics", "LATENCY_BUCKETS"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """All metric families; labels are model name and version (and protocol where it matters)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "modelyard_inference_requests", "Inference requests", ["model", "version", "protocol"], registry=r
        )
        self.errors = Counter(
            "modelyard_inference_errors", "Inference requests that failed", ["model", "version", "code"], registry=r
        )
        self.latency = Histogram(
            "modelyard_inference_latency_seconds", "End-to-end inference latency",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.load_seconds = Histogram(
            "modelyard_model_load_seconds", "Time to load a model version",
            ["model", "version"], buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60), registry=r,
        )
        self.loads = Counter("modelyard_model_loads", "Model version loads", ["model", "version"], registry=r)
        self.unloads = Counter(
            "modelyard_model_unloads", "Model version unloads", ["model", "version", "reason"], registry=r
        )
        self.loaded_models = Gauge("modelyard_loaded_models", "Model versions in memory", registry=r)
        self.memory_bytes = Gauge("modelyard_model_memory_bytes", "Estimated memory held by loaded versions", registry=r)
        self.queue_depth = Gauge("modelyard_queue_depth", "Requests waiting per version", ["model", "version"], registry=r)
        self.batch_size = Histogram(
            "modelyard_batch_size", "Rows per executed batch", ["model", "version"], buckets=_BATCH_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            "modelyard_queue_wait_seconds", "Time a request waited before its batch ran",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.compute = Histogram(
            "modelyard_compute_seconds", "Time spent running a batch", ["model", "version"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.rejections = Counter(
            "modelyard_rejections", "Requests refused for overload", ["model", "version", "reason"], registry=r
        )
        self.tokens = Counter(
            "modelyard_tokens", "Tokens processed by language and embedding models",
            ["model", "version", "kind"], registry=r,
        )
        self.shadow_results = Counter(
            "modelyard_shadow_results", "Shadow answers compared with the primary's (agree, disagree, error)",
            ["deployment", "result"], registry=r,
        )
        self.shadow_latency = Histogram(
            "modelyard_shadow_latency_seconds", "Latency of mirrored (shadow) requests",
            ["deployment"], buckets=LATENCY_BUCKETS, registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
