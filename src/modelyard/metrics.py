"""Prometheus metrics of one server instance.

Each :class:`Metrics` owns its own ``CollectorRegistry`` so that several servers (or tests) in
one process never collide; ``/metrics`` renders ``Metrics.registry``.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from itertools import accumulate
from typing import Generic, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample

from modelyard.statistics import StatisticsBook, StatisticsSnapshot, VersionStatistics

__all__ = ["Metrics", "LATENCY_BUCKETS", "LoopCounter", "LoopHistogram"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)


class _LoopCount:
    """A counter child: a plain number (see :class:`LoopCounter`)."""

    __slots__ = ("value", "created")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up; use a gauge for values that go down")
        self.value += amount


class _LoopObservations:
    """A histogram child: counts per bucket and a sum (see :class:`LoopHistogram`)."""

    __slots__ = ("bounds", "counts", "sum", "created")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: over every bound (+Inf)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


C = TypeVar("C")


class _LoopFamily(Generic[C]):
    """Labelled children made on first use; a collector for the registry it joins."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], C] = {}
        registry.register(self)

    def _child(self, values: tuple[str, ...], make: Callable[[], C]) -> C:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            child = self._children[values] = make()
        return child

    def get(self, *values: str) -> C | None:
        """The child of ``values`` if it was made, without making it."""
        return self._children.get(values)


class LoopCounter(_LoopFamily[_LoopCount]):
    """A labelled counter for the per-request path, exposed like ``prometheus_client.Counter``
    (``_total`` and ``_created``). A child is a plain number without a lock: with the histogram's
    observation, about a fifth of prometheus_client's pair (``bench/hot_path.py``). Update its children from one thread (the event loop)."""

    def labels(self, *values: str) -> _LoopCount:
        return self._child(values, _LoopCount)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            family.add_metric(values, child.value, created=child.created)
        yield family


class LoopHistogram(_LoopFamily[_LoopObservations]):
    """A labelled histogram for the per-request path, exposed like
    ``prometheus_client.Histogram`` (``_bucket``, ``_count``, ``_sum``, ``_created``). An
    observation is a bisection and two additions, without a lock. Update its children from one
    thread (the event loop)."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], *, buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        super().__init__(name, documentation, labelnames, registry)
        self.bounds = tuple(float(b) for b in buckets)
        # each bucket's ``le`` label as prometheus_client writes it (``0.5``, ``1.0``, ``+Inf``)
        self._les = [repr(b) for b in self.bounds] + ["+Inf"]

    def labels(self, *values: str) -> _LoopObservations:
        return self._child(values, partial(_LoopObservations, self.bounds))

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        created = Metric(self.name + "_created", self.documentation, "gauge")
        for values, child in list(self._children.items()):
            cumulative = [float(n) for n in accumulate(child.counts)]
            family.add_metric(values, list(zip(self._les, cumulative)), child.sum)
            created.samples.append(
                Sample(self.name + "_created", dict(zip(self.labelnames, values)), child.created)
            )
        yield family
        if created.samples:
            yield created


class Metrics:
    """All metric families. Labels: the tenant (its name; empty for a built-in model every tenant
    shares), the model's name and version (and protocol where it matters), so two tenants' models
    of one name are two series."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        # the server process's own: CPU seconds, resident memory, open files (process_*), the
        # garbage collector's passes (python_gc_*) and the Python version (python_info), read
        # when scraped
        ProcessCollector(registry=r)
        GCCollector(registry=r)
        PlatformCollector(registry=r)
        # The two families every request updates: loop-local (see LoopCounter, LoopHistogram).
        self.requests = LoopCounter(
            "modelyard_inference_requests", "Inference requests", ["tenant", "model", "version", "protocol"], registry=r
        )
        self.errors = Counter(
            "modelyard_inference_errors", "Inference requests that failed", ["tenant", "model", "version", "code"], registry=r
        )
        self.latency = LoopHistogram(
            "modelyard_inference_latency_seconds", "End-to-end inference latency",
            ["tenant", "model", "version"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.load_seconds = Histogram(
            "modelyard_model_load_seconds", "Time to load a model version",
            ["tenant", "model", "version"], buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60), registry=r,
        )
        self.loads = Counter("modelyard_model_loads", "Model version loads", ["tenant", "model", "version"], registry=r)
        self.unloads = Counter(
            "modelyard_model_unloads", "Model version unloads", ["tenant", "model", "version", "reason"], registry=r
        )
        self.loaded_models = Gauge("modelyard_loaded_models", "Model versions in memory", registry=r)
        self.memory_bytes = Gauge("modelyard_model_memory_bytes", "Estimated memory held by loaded versions", registry=r)
        self.memory_budget = Gauge(
            "modelyard_memory_budget_bytes", "The model manager's memory budget for loaded versions", registry=r
        )
        self.quota_used = Gauge(
            "modelyard_quota_used", "Used of a tenant's quota in its current window (requests, tokens, hours)",
            ["tenant", "quota"], registry=r,
        )
        self.quota_limit = Gauge(
            "modelyard_quota_limit", "A tenant's quota per window (requests_per_day, tokens_per_day, "
            "training_hours_per_month)", ["tenant", "quota"], registry=r,
        )
        self.limit_refusals = Counter(
            "modelyard_limit_refusals", "Requests refused (429) by a key's requests/second or a tenant's daily quota",
            ["tenant", "limit"], registry=r,
        )
        self.worker_restarts = Counter(
            "modelyard_worker_restarts", "Worker processes of isolated versions replaced after they died",
            ["tenant", "model", "version"], registry=r,
        )
        self.queue_depth = Gauge("modelyard_queue_depth", "Requests waiting per version", ["tenant", "model", "version"], registry=r)
        self.batch_size = Histogram(
            "modelyard_batch_size", "Rows per executed batch", ["tenant", "model", "version"], buckets=_BATCH_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            "modelyard_queue_wait_seconds", "Time a request waited before its batch ran",
            ["tenant", "model", "version"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.compute = Histogram(
            "modelyard_compute_seconds", "Time spent running a batch", ["tenant", "model", "version"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.rejections = Counter(
            "modelyard_rejections", "Requests refused for overload", ["tenant", "model", "version", "reason"], registry=r
        )
        self.tokens = Counter(
            "modelyard_tokens", "Tokens processed by language and embedding models",
            ["tenant", "model", "version", "kind"], registry=r,
        )
        self.cache_lookups = LoopCounter(
            "modelyard_response_cache_lookups", "Response cache lookups (result: hit, miss)",
            ["tenant", "model", "version", "result"], registry=r,
        )
        self.cache_bytes = Gauge("modelyard_response_cache_bytes", "Bytes of answers held by the response cache", registry=r)
        self.cache_entries = Gauge("modelyard_response_cache_entries", "Answers held by the response cache", registry=r)
        self.first_token = Histogram(
            "modelyard_time_to_first_token_seconds",
            "Language models: from a generation request's arrival to its first token (streamed or not)",
            ["tenant", "model", "version"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.per_token = Histogram(
            "modelyard_time_per_output_token_seconds",
            "Language models: a request's mean time between two of its engine's steps after the first token",
            ["tenant", "model", "version"], buckets=_TOKEN_BUCKETS, registry=r,
        )
        self.shadow_results = Counter(
            "modelyard_shadow_results", "Shadow answers compared with the primary's (agree, disagree, error)",
            ["tenant", "deployment", "result"], registry=r,
        )
        self.automatic_rollbacks = Counter(
            "modelyard_automatic_rollbacks", "Canaries rolled back by a deployment's policy (limit: error_rate, latency)",
            ["tenant", "deployment", "limit"], registry=r,
        )
        self.traces_dropped = Counter(
            "modelyard_traces_dropped", "Trace lines not written (reason: write, the file or folder refused them; "
            "backlog, the disk was behind)", ["reason"], registry=r,
        )
        for reason in ("write", "backlog"):  # at 0 from the start: an alert's increase() sees the first drop
            self.traces_dropped.labels(reason)
        self.shadow_latency = Histogram(
            "modelyard_shadow_latency_seconds", "Latency of mirrored (shadow) requests",
            ["tenant", "deployment"], buckets=LATENCY_BUCKETS, registry=r,
        )

        #: Triton's per-version statistics, partly read from the families above (see statistics.py)
        self.statistics = StatisticsBook()

    def version_statistics(self, key: str, tenant: str, model: str, version: str) -> VersionStatistics:
        """The statistics of version ``key`` (labelled ``tenant``, ``model``, ``version`` here),
        made on first use: make them before the version's first request (see statistics.py)."""
        return self.statistics.version(key, partial(self.latency.get, tenant, model, version))

    def statistics_of(self, key: str) -> StatisticsSnapshot | None:
        """The statistics of version ``key`` now; ``None`` when none were made (it has not
        served since the server started)."""
        statistics = self.statistics.get(key)
        return None if statistics is None else statistics.snapshot()

    def show_quota_use(self, uses: Iterable[tuple[str, str, float, float]]) -> None:
        """Replace the quota gauges with ``uses``: (tenant, quota, used, limit) each, read just
        before a scrape; a quota lifted since the last one leaves no series behind."""
        self.quota_used.clear()
        self.quota_limit.clear()
        for tenant, quota, used, limit in uses:
            self.quota_used.labels(tenant, quota).set(used)
            self.quota_limit.labels(tenant, quota).set(limit)

    def render(self) -> bytes:
        return generate_latest(self.registry)
