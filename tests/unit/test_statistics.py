"""Per-version statistics: what batches, answers and failures add up to; that reading them makes
nothing (no empty series in /metrics for a version that never served); and that a version whose
labels an earlier one had (a model deleted and pushed again) starts from zero."""

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
    assert metrics.statistics_of("v1") == snap


def test_reading_or_making_them_adds_no_series() -> None:
    metrics = Metrics()
    assert metrics.statistics_of("v9") is None
    metrics.version_statistics("v9", "acme", "idle", "1")  # as a version's load makes them
    assert b'model="idle"' not in metrics.render()
    snap = metrics.statistics_of("v9")
    assert snap is not None and snap.success == Duration(0, 0)


def test_a_version_with_an_earlier_ones_labels_starts_from_zero() -> None:
    """Version keys are unique; labels are names, which a model deleted and pushed again reuses."""
    metrics = Metrics()
    old = metrics.version_statistics("old-key", "acme", "digits", "1")
    latency = metrics.latency.labels("acme", "digits", "1")
    latency.observe(0.5)
    latency.observe(0.5)
    assert old.snapshot().success == Duration(2, 1_000_000_000)
    metrics.statistics.forget("old-key")  # the version was deleted
    assert metrics.statistics_of("old-key") is None

    new = metrics.version_statistics("new-key", "acme", "digits", "1")
    assert new.snapshot().success == Duration(0, 0)
    latency.observe(0.25)
    assert new.snapshot().success == Duration(1, 250_000_000)
