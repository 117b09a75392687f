"""The loop-local metric families render exactly as prometheus_client's own do."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from modelyard.metrics import LATENCY_BUCKETS, LoopCounter, LoopHistogram, Metrics


def _render(counter_type: type, histogram_type: type) -> str:
    registry = CollectorRegistry(auto_describe=True)
    counter = counter_type("t_requests", "Requests", ["model", "protocol"], registry=registry)
    histogram = histogram_type("t_latency_seconds", "Latency", ["model"], buckets=LATENCY_BUCKETS, registry=registry)
    counter.labels("a", "rest").inc()
    counter.labels("a", "rest").inc(2)
    counter.labels("b", "grpc").inc()
    for seconds in (0.0001, 0.0005, 0.003, 0.003, 0.7, 42.0):  # a bound itself falls in its bucket
        histogram.labels("a").observe(seconds)
    histogram.labels("b").observe(0.01)
    text = generate_latest(registry).decode()
    return re.sub(r"(_created\{[^}]*\}) \S+", r"\1 <time>", text)


def test_loop_families_render_as_prometheus_client_families() -> None:
    assert _render(LoopCounter, LoopHistogram) == _render(Counter, Histogram)


def test_loop_families_check_their_labels_and_names() -> None:
    registry = CollectorRegistry(auto_describe=True)
    counter = LoopCounter("t_requests", "Requests", ["model"], registry=registry)
    with pytest.raises(ValueError, match="takes labels"):
        counter.labels("a", "extra")
    with pytest.raises(ValueError, match="only goes up"):
        counter.labels("a").inc(-1)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter("t_requests", "Again", ["model"], registry=registry)


def test_server_metrics_count_requests_and_latency() -> None:
    metrics = Metrics()
    metrics.requests.labels("team-a", "m", "1", "rest").inc()
    metrics.latency.labels("team-a", "m", "1").observe(0.002)
    text = metrics.render().decode()
    assert 'modelyard_inference_requests_total{model="m",protocol="rest",tenant="team-a",version="1"} 1.0' in text
    assert 'modelyard_inference_latency_seconds_bucket{le="0.0025",model="m",tenant="team-a",version="1"} 1.0' in text
    assert 'modelyard_inference_latency_seconds_bucket{le="0.001",model="m",tenant="team-a",version="1"} 0.0' in text
    assert 'modelyard_inference_latency_seconds_count{model="m",tenant="team-a",version="1"} 1.0' in text
