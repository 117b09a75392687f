"""Per-version inference statistics since the server started: the figures of Triton's statistics
extension (``GET /v2/models/{m}/stats``, gRPC ``ModelStatistics``), which tools built for Triton
read to split a request's time into queueing and compute.

:class:`VersionStatistics` holds one version's figures as plain numbers, updated on the event loop
where the data is already at hand, so the per-request path pays little new (the batcher's
``perf_counter`` when a request is queued; per batch, a ``time.time()`` and a few additions):

* answered requests (count, time) are read from the version's latency histogram child, which
  every answered request already updates (OIP v2 over REST and gRPC, and the OpenAI API). That
  child is labelled by tenant, model and version *names*, which a later version may reuse (a
  model deleted and pushed again starts at version 1 again): the figures count from what the
  child held when this version's statistics were made (before its first request), and the child
  is looked up when read, so none is made for a version that has not answered;
* failed requests are counted where their error is (``DataPlane``), with their time when known;
  refusals of a full queue, counted in bundles, with none;
* queueing, compute, rows and executions come once per batch from the batcher's observer
  (``engine/manager.py``). A request is charged its batch's compute time, as Triton does, and
  each batch size gets its own count and time;
* response cache lookups, hits and misses with their time, from the cache
  (``core/response_cache.py``): a hit is answered without a batch, so it is in ``success`` but
  not in the rows or executions, as in Triton.

:class:`StatisticsBook` keeps them by version key (``VersionInfo.key``, ``ModelSource.key``), so
a version keeps its figures when it is unloaded and loaded again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["AnsweredLookup", "Duration", "StatisticsBook", "StatisticsSnapshot", "VersionStatistics"]


class _Observed(Protocol):
    """What the latency histogram child offers (``metrics._LoopObservations``)."""

    counts: list[int]
    sum: float


#: the version's latency histogram child, or ``None`` while it has none
AnsweredLookup = Callable[[], "_Observed | None"]


def _figures(answered: _Observed | None) -> tuple[int, float]:
    return (0, 0.0) if answered is None else (sum(answered.counts), answered.sum)


@dataclass(frozen=True, slots=True)
class Duration:
    """How many, and their time in nanoseconds (Triton's ``StatisticDuration``)."""

    count: int = 0
    ns: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


def _duration(count: int, seconds: float) -> Duration:
    return Duration(count, int(round(seconds * 1e9)))


@dataclass(frozen=True, slots=True)
class StatisticsSnapshot:
    """One version's figures at one moment."""

    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = Duration()
    fail: Duration = Duration()
    queue: Duration = Duration()
    compute_infer: Duration = Duration()
    cache_hit: Duration = Duration()
    cache_miss: Duration = Duration()
    batches: dict[int, Duration] = field(default_factory=dict)


class VersionStatistics:
    """One version's running figures (see the module). Update from the event loop only."""

    __slots__ = (
        "_answered", "_base", "failed_count", "failed_s", "queued_count", "queued_s", "computed_count",
        "computed_s", "rows", "executions", "last_inference_ms", "by_batch_size", "cache_hits", "cache_hit_s",
        "cache_misses", "cache_miss_s",
    )

    def __init__(self, answered: AnsweredLookup) -> None:
        self._answered = answered
        self._base = _figures(answered())  # what earlier holders of the same labels answered
        self.failed_count = 0
        self.failed_s = 0.0
        self.queued_count = 0
        self.queued_s = 0.0
        self.computed_count = 0
        self.computed_s = 0.0
        self.rows = 0
        self.executions = 0
        self.last_inference_ms = 0
        #: batch size (rows) -> [batches, their compute seconds]
        self.by_batch_size: dict[int, list[float]] = {}
        self.cache_hits = self.cache_misses = 0
        self.cache_hit_s = self.cache_miss_s = 0.0

    def on_batch(self, rows: int, requests: int, queue_total_s: float, compute_s: float) -> None:
        """A batch of ``requests`` requests (``rows`` rows) computed in ``compute_s``; its
        requests waited ``queue_total_s`` together before it ran."""
        self.rows += rows
        self.executions += 1
        self.queued_count += requests
        self.queued_s += queue_total_s
        self.computed_count += requests
        self.computed_s += compute_s * requests
        self.last_inference_ms = int(time.time() * 1000)
        size = self.by_batch_size.get(rows)
        if size is None:
            self.by_batch_size[rows] = [1, compute_s]
        else:
            size[0] += 1
            size[1] += compute_s

    def on_cache(self, hit: bool, seconds: float, *, count: int = 1) -> None:
        """A response cache lookup that found the answer (``hit``: no batch ran) or did not, in
        ``seconds``; a miss's answer remembered later adds its ``seconds`` with ``count=0``."""
        if hit:
            self.cache_hits += count
            self.cache_hit_s += seconds
            self.last_inference_ms = int(time.time() * 1000)
        else:
            self.cache_misses += count
            self.cache_miss_s += seconds

    def on_fail(self, n: int = 1, elapsed_s: float = 0.0) -> None:
        """``n`` requests failed, ``elapsed_s`` seconds together (0: refused before any work)."""
        self.failed_count += n
        self.failed_s += elapsed_s

    def snapshot(self) -> StatisticsSnapshot:
        count, seconds = _figures(self._answered())
        return StatisticsSnapshot(
            last_inference_ms=self.last_inference_ms,
            inference_count=self.rows,
            execution_count=self.executions,
            success=_duration(count - self._base[0], seconds - self._base[1]),
            fail=_duration(self.failed_count, self.failed_s),
            queue=_duration(self.queued_count, self.queued_s),
            compute_infer=_duration(self.computed_count, self.computed_s),
            cache_hit=_duration(self.cache_hits, self.cache_hit_s),
            cache_miss=_duration(self.cache_misses, self.cache_miss_s),
            batches={
                rows: _duration(int(count), seconds)
                for rows, (count, seconds) in sorted(self.by_batch_size.items())
            },
        )


class StatisticsBook:
    """Every version's :class:`VersionStatistics`, by version key, made on first use."""

    def __init__(self) -> None:
        self._versions: dict[str, VersionStatistics] = {}

    def version(self, key: str, answered: AnsweredLookup) -> VersionStatistics:
        """The figures of version ``key``, made on first use; ``answered`` finds its latency
        histogram child."""
        stats = self._versions.get(key)
        if stats is None:
            stats = self._versions[key] = VersionStatistics(answered)
        return stats

    def forget(self, key: str) -> None:
        """Drop the figures of a version that was deleted."""
        self._versions.pop(key, None)

    def get(self, key: str) -> VersionStatistics | None:
        """The figures of version ``key`` if they were made, without making them."""
        return self._versions.get(key)
