"""The tracer (``core/tracing.py``) in process: which requests are sampled (rate, count, a model's
settings over the server's, a reset to the server's), what a trace line holds, and that the file
is flushed every ``log_frequency`` traces."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from modelyard.core.principal import Principal
from modelyard.core.tracing import Tracer
from modelyard.errors import InvalidInput, PermissionDenied
from tests.support.versions import VersionStub

ADMIN = Principal(key_id="a", tenant_id="t", tenant_name="team", role="admin")


def _lines(folder: Path, name: str = "trace.jsonl", tracer: Tracer | None = None) -> list[dict]:
    """The lines of a trace file, once ``tracer``'s thread wrote what it was given."""
    assert tracer is None or tracer.files.drain()
    path = folder / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_rate_and_count_and_what_a_line_holds(tmp_path: Path) -> None:
    tracer = Tracer(tmp_path)
    assert not tracer.on  # off by default: the data plane does not ask
    tracer.update(ADMIN, {"trace_level": ["TIMESTAMPS"], "trace_rate": "3", "trace_count": "2"})
    assert tracer.on
    sampled = [tracer.sample(VersionStub(), time.perf_counter()) for _ in range(9)]
    assert [t is not None for t in sampled] == [False, False, True, False, False, True, False, False, False]
    assert tracer.get(ADMIN)["trace_count"] == "0"
    first = sampled[2]
    assert first is not None
    start = time.perf_counter()
    tracer.end(first, ran=(start, start + 0.001, 0.002))
    tracer.end(sampled[5], outcome="queue_full")  # type: ignore[arg-type]
    (line, failed) = _lines(tmp_path, tracer=tracer)
    assert (line["model_name"], line["model_version"], line["tenant"], line["outcome"]) == ("m", "1", "team", "ok")
    names = [s["name"] for s in line["timestamps"]]
    assert names == ["REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_END", "REQUEST_END"]
    stamps = [s["ns"] for s in line["timestamps"]]
    assert stamps[3] - stamps[2] == pytest.approx(2_000_000, abs=1000)
    assert abs(stamps[0] - time.time_ns()) < 60 * 10**9  # wall-clock nanoseconds
    assert failed["outcome"] == "queue_full" and len(failed["timestamps"]) == 2


def test_a_models_settings_go_over_the_servers_and_reset(tmp_path: Path) -> None:
    tracer = Tracer(tmp_path)
    tracer.update(ADMIN, {"trace_level": ["TIMESTAMPS"], "trace_rate": "1", "trace_file": "m.jsonl"}, "m")
    assert tracer.on and tracer.get(ADMIN)["trace_level"] == ["OFF"]
    assert tracer.sample(VersionStub(model_name="other"), 0.0) is None  # the server's settings: off
    assert tracer.sample(VersionStub(tenant_id="elsewhere"), 0.0) is None  # another tenant's model of that name
    trace = tracer.sample(VersionStub(), 0.0)
    assert trace is not None
    tracer.end(trace)
    assert len(_lines(tmp_path, "m.jsonl", tracer)) == 1
    after = tracer.update(ADMIN, {"trace_level": None, "trace_file": None}, "m")
    assert (after["trace_level"], after["trace_file"], after["trace_rate"]) == (["OFF"], "trace.jsonl", "1")
    assert not tracer.on and tracer.sample(VersionStub(), 0.0) is None


def test_the_file_is_flushed_every_log_frequency_traces(tmp_path: Path) -> None:
    tracer = Tracer(tmp_path)
    tracer.update(ADMIN, {"trace_level": ["TIMESTAMPS"], "trace_rate": "1", "log_frequency": "3"})
    for expected in (0, 0, 3, 3, 3, 6):
        trace = tracer.sample(VersionStub(), time.perf_counter())
        assert trace is not None
        tracer.end(trace)
        assert len(_lines(tmp_path, tracer=tracer)) == expected
    tracer.close()


def test_bad_settings_and_callers_change_nothing(tmp_path: Path) -> None:
    tracer = Tracer(tmp_path)
    with pytest.raises(InvalidInput):
        tracer.update(ADMIN, {"trace_rate": "2", "trace_file": "a/b"})
    with pytest.raises(InvalidInput):
        tracer.update(ADMIN, {"trace_level": None})  # the server's settings have nothing to go back to
    with pytest.raises(PermissionDenied):
        tracer.update(Principal(key_id="d", tenant_id="t", tenant_name="team", role="developer"),
                      {"trace_rate": "2"})
    assert tracer.get(ADMIN)["trace_rate"] == "1000" and not tracer.on
