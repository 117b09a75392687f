"""``client.traces``: the server's request trace settings (Triton's trace extension,
``/v2/trace/setting`` and ``/v2/models/{m}/trace/setting``), and :func:`summarize`, which reads a
trace file the server wrote (one JSON line per traced request) into figures per model version.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from modelyard.client._transport import Transport
from modelyard.errors import InvalidInput

__all__ = ["Traces", "TraceSummary", "summarize"]


class Traces:
    """See the module."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def settings(self, model: str | None = None) -> dict[str, Any]:
        """The settings in force (a model's: its own over the server's)."""
        return self._t.get(_path(model))

    def update(self, model: str | None = None, **settings: Any) -> dict[str, Any]:
        """Change settings (administrators), e.g. ``update(trace_level="TIMESTAMPS",
        trace_rate=100)``; a value ``None`` gives a model the server's setting again. Numbers
        are sent as Triton's strings, a level as a list."""
        body = {name: _wire(name, value) for name, value in settings.items()}
        return self._t.post(_path(model), json=body)


def _path(model: str | None) -> str:
    return "/v2/trace/setting" if model is None else f"/v2/models/{quote(model, safe='')}/trace/setting"


def _wire(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name == "trace_level":
        return [value.upper()] if isinstance(value, str) else value
    return str(value)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


@dataclass
class TraceSummary:
    """What the traces of one model version say: how many, how they ended, and in milliseconds
    the time of each request end to end (mean, p50, p99), queued for its batch and in its batch's
    compute (means over the traces that have those stamps)."""

    model: str
    version: str
    traces: int = 0
    failed: int = 0
    cache_hits: int = 0
    total_ms: list[float] = field(default_factory=list, repr=False)
    queue_ms: list[float] = field(default_factory=list, repr=False)
    compute_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def mean_ms(self) -> float:
        return sum(self.total_ms) / len(self.total_ms) if self.total_ms else 0.0

    @property
    def p50_ms(self) -> float:
        return _percentile(self.total_ms, 50) if self.total_ms else 0.0

    @property
    def p99_ms(self) -> float:
        return _percentile(self.total_ms, 99) if self.total_ms else 0.0

    @property
    def mean_queue_ms(self) -> float:
        return sum(self.queue_ms) / len(self.queue_ms) if self.queue_ms else 0.0

    @property
    def mean_compute_ms(self) -> float:
        return sum(self.compute_ms) / len(self.compute_ms) if self.compute_ms else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "version": self.version, "traces": self.traces, "failed": self.failed,
            "cache_hits": self.cache_hits, "mean_ms": self.mean_ms, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
            "mean_queue_ms": self.mean_queue_ms, "mean_compute_ms": self.mean_compute_ms,
        }


def summarize(lines: Iterable[str]) -> list[TraceSummary]:
    """Figures per model version of a trace file's lines (blank lines skipped); a line that is
    not a trace raises ``InvalidInput`` naming it."""
    by_version: dict[tuple[str, str], TraceSummary] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            trace = json.loads(line)
            stamps = {s["name"]: int(s["ns"]) for s in trace["timestamps"]}
            key = (str(trace["model_name"]), str(trace["model_version"]))
            outcome = trace.get("outcome", "ok")
            total = (stamps["REQUEST_END"] - stamps["REQUEST_START"]) / 1e6
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(f"line {number} is not a trace of ModelYard's ({exc.__class__.__name__}: {exc})") from None
        summary = by_version.get(key)
        if summary is None:
            summary = by_version[key] = TraceSummary(*key)
        summary.traces += 1
        summary.total_ms.append(total)
        if outcome == "cache hit":
            summary.cache_hits += 1
        elif outcome != "ok":
            summary.failed += 1
        if "QUEUE_START" in stamps and "COMPUTE_START" in stamps and "COMPUTE_END" in stamps:
            summary.queue_ms.append((stamps["COMPUTE_START"] - stamps["QUEUE_START"]) / 1e6)
            summary.compute_ms.append((stamps["COMPUTE_END"] - stamps["COMPUTE_START"]) / 1e6)
    return [by_version[k] for k in sorted(by_version)]
