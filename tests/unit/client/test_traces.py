"""``modelyard.client.summarize``: a trace file's lines into figures per model version."""

from __future__ import annotations

import json

import pytest

from modelyard.client import summarize
from modelyard.errors import InvalidInput


def _line(model: str, total_ms: float, outcome: str = "ok", batched: bool = True, version: str = "1") -> str:
    start = 1_000_000_000
    stamps = [("REQUEST_START", start)]
    if batched:
        stamps += [("QUEUE_START", start + 100_000), ("COMPUTE_START", start + 600_000),
                   ("COMPUTE_END", start + 800_000)]
    stamps.append(("REQUEST_END", start + int(total_ms * 1e6)))
    return json.dumps({"id": 1, "tenant": "t", "model_name": model, "model_version": version, "outcome": outcome,
                       "timestamps": [{"name": n, "ns": ns} for n, ns in stamps]})


def test_figures_per_model_version() -> None:
    lines = [_line("a", float(ms)) for ms in range(1, 101)]
    lines += [_line("a", 0.2, "cache hit", batched=False), _line("a", 5.0, "internal"), "", _line("a", 2.0, version="2")]
    first, second = summarize(lines)
    assert (first.model, first.version, first.traces, first.failed, first.cache_hits) == ("a", "1", 102, 1, 1)
    assert first.p50_ms == pytest.approx(49.0) and first.p99_ms == pytest.approx(99.0)  # nearest rank of 102
    assert first.mean_queue_ms == pytest.approx(0.5) and first.mean_compute_ms == pytest.approx(0.2)
    assert len(first.queue_ms) == 101  # the cache hit has no queue or compute stamps
    assert (second.version, second.traces) == ("2", 1)
    assert summarize([]) == []


@pytest.mark.parametrize("bad", ["not json", "{}", json.dumps({"model_name": "a", "model_version": "1",
                                                                 "timestamps": [{"name": "REQUEST_START", "ns": 1}]})])
def test_a_line_that_is_not_a_trace_is_named(bad: str) -> None:
    with pytest.raises(InvalidInput, match="line 2 is not a trace"):
        summarize([_line("a", 1.0), bad])
