"""Per-version statistics: what batches, answers and failures add up to, and that reading them
makes nothing (no empty series in /metrics for a version that never served)."""

from __future__ import annotations

from modelyard.metrics import Metrics
from modelyard.statistics import Duration


def test_batches_answers_and_failures_add_up() -> None:
    metrics = Metrics()
    stats = metrics.version_statistics("v1", "acme", "digits", "1")
    latency = metrics.latency.labels("acme", "digits", "1")
    stats.on_batch(rows=5, requests=3, queue_total_s=0.003, compute_s=0.002)
    stats.on_batch(rows=5, requests=5, queue_total_s=0.001, compute_s=0.004)
    stats.on_batch(rows=1, requests=1, queue_total_s=0.0, compute_s=0.001)
    for seconds in (0.01, 0.02, 0.03):
        latency.observe(seconds)
    stats.on_fail(1, 0.5)
    stats.on_fail(32)  # a bundle of refusals: no time

    snap = stats.snapshot()
    assert snap.inference_count == 11 and snap.execution_count == 3
    assert snap.success == Duration(3, 60_000_000)
    assert snap.fail == Duration(33, 500_000_000)
    assert snap.queue == Duration(9, 4_000_000)
    # each request is charged its batch's compute: 3 x 2 ms + 5 x 4 ms + 1 x 1 ms
    assert snap.compute_infer == Duration(9, 27_000_000)
    assert snap.batches == {1: Duration(1, 1_000_000), 5: Duration(2, 6_000_000)}
    assert list(snap.batches) == [1, 5]
    assert snap.last_inference_ms > 0
    assert metrics.statistics_of("v1", "acme", "digits", "1") == snap


def test_reading_a_version_that_never_served_makes_nothing() -> None:
    metrics = Metrics()
    assert metrics.statistics_of("v9", "acme", "idle", "1") is None
    assert b'model="idle"' not in metrics.render()
    assert metrics.statistics.get("v9") is None


def test_answers_seen_only_by_the_latency_histogram_are_reported() -> None:
    """The OpenAI API's answers update the latency histogram, not the batch figures."""
    metrics = Metrics()
    metrics.latency.labels("acme", "chat", "2").observe(0.25)
    snap = metrics.statistics_of("v2", "acme", "chat", "2")
    assert snap is not None and snap.success == Duration(1, 250_000_000) and snap.execution_count == 0
