"""Traffic of one deployment, in memory: the weighted choice of a route, the canary's error and
latency windows that trigger an automatic rollback, and the comparison of shadow answers with the
primary's.

Nothing here touches the database or the network; :class:`~modelyard.core.deployments.Deployments`
persists what changes, the data plane feeds outcomes in.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelyard.core.traffic_figures import SHADOW_COUNTERS, RouteFigures, add_counts

__all__ = [
    "key_point", "WeightedChoice", "ErrorWindow", "LatencyWindow", "RouteStats", "ShadowStats", "outputs_agree",
    "quantile_of",
]

#: an :class:`ErrorWindow` or a :class:`LatencyWindow` counts in this many slices of its window
WINDOW_SLICES = 60
#: a :class:`LatencyWindow`'s buckets: this many to a doubling of the latency, from this one up
#: (anything faster counts as this)
LATENCY_BUCKETS_PER_DOUBLING = 16
LATENCY_FLOOR_S = 1e-5


def key_point(key: str) -> float:
    """Where ``key`` falls in [0, 1): the same on every server and in every run (a fixed hash,
    not Python's ``hash``, which changes from process to process)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class WeightedChoice:
    """Picks an index with probability proportional to its weight (zero weights never win), at
    random or, for a key (:meth:`pick_for`), the same index for the same key while the weights
    stay as they are."""

    __slots__ = ("_cumulative", "_total", "_random")

    def __init__(self, weights: Sequence[float], *, rng: random.Random | None = None) -> None:
        if not weights or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        total = 0.0
        self._cumulative: list[float] = []
        for w in weights:
            total += w
            self._cumulative.append(total)
        self._total = total
        self._random = (rng or random.Random()).random

    def pick(self) -> int:
        if len(self._cumulative) == 1:
            return 0
        return self._at(self._random())

    def pick_for(self, key: str) -> int:
        """The index for ``key`` (sticky routing): keys spread over the indexes by weight, and a
        key stays where it is while the weights do. As weight moves from the first indexes to a
        later one (a canary's share growing), keys only move to that one: a key's point is fixed,
        and the later index's span grows towards it."""
        if len(self._cumulative) == 1:
            return 0
        return self._at(key_point(key))

    def _at(self, point: float) -> int:
        index = bisect.bisect_right(self._cumulative, point * self._total)
        return min(index, len(self._cumulative) - 1)


class _SlicedWindow:
    """What happened in the last ``window_s`` seconds, counted in :data:`WINDOW_SLICES` slices of
    the window, not one entry per request: a route serving 20k requests a second over a 60 s
    window held 1.2M entries (about 80 MB) that way. A slice leaves the window once all of it is
    older than ``window_s``, so an outcome counts for at most one slice (a sixtieth of the
    window) longer than the window. A subclass says what a slice holds (``_new``) and takes a
    leaving slice off its totals (``_drop``)."""

    __slots__ = ("window_s", "_slice_s", "_slices")

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._slice_s = window_s / WINDOW_SLICES
        self._slices: deque[list[Any]] = deque()  # [slice number, ...], oldest first

    def _current(self, now: float | None) -> tuple[list[Any], bool]:
        """The slice ``now`` falls in, and whether it was started by this call."""
        now = time.monotonic() if now is None else now
        number = int(now // self._slice_s)
        slices = self._slices
        if slices and slices[-1][0] == number:
            return slices[-1], False
        current = self._new(number)
        slices.append(current)
        self._trim(now)
        return current, True

    def _trim(self, now: float | None) -> None:
        # slice n spans [n * slice_s, (n + 1) * slice_s): gone once its end is past the horizon
        horizon = (time.monotonic() if now is None else now) - self.window_s
        slices = self._slices
        while slices and (slices[0][0] + 1) * self._slice_s <= horizon:
            self._drop(slices.popleft())

    def _new(self, number: int) -> list[Any]:
        raise NotImplementedError

    def _drop(self, old: list[Any]) -> None:
        raise NotImplementedError


class ErrorWindow(_SlicedWindow):
    """Outcomes of the last ``window_s`` seconds: the error rate the rollback policy watches."""

    __slots__ = ("_requests", "_errors")

    def __init__(self, window_s: float) -> None:
        super().__init__(window_s)
        self._requests = 0
        self._errors = 0

    def _new(self, number: int) -> list[Any]:
        return [number, 0, 0]  # requests, errors

    def _drop(self, old: list[Any]) -> None:
        self._requests -= old[1]
        self._errors -= old[2]

    def add(self, ok: bool, now: float | None = None) -> None:
        last, _ = self._current(now)
        last[1] += 1
        self._requests += 1
        if not ok:
            last[2] += 1
            self._errors += 1

    def counts(self, now: float | None = None) -> tuple[int, int]:
        """``(requests, errors)`` within the window."""
        self._trim(now)
        return self._requests, self._errors

    def error_rate(self, now: float | None = None) -> float:
        n, errors = self.counts(now)
        return errors / n if n else 0.0


class LatencyWindow(_SlicedWindow):
    """Latencies of the last ``window_s`` seconds, for a quantile (the rollback policy's p99).

    Each slice counts its latencies in geometric buckets, :data:`LATENCY_BUCKETS_PER_DOUBLING` to
    a doubling from :data:`LATENCY_FLOOR_S` up (a bucket spans 4.4%), only the buckets it saw; a
    quantile is the middle of the bucket it falls in, within 2.2% of the latency seen."""

    __slots__ = ("_totals",)

    def __init__(self, window_s: float) -> None:
        super().__init__(window_s)
        self._totals: dict[int, int] = {}

    def _new(self, number: int) -> list[Any]:
        return [number, {}]  # bucket -> latencies

    def _drop(self, old: list[Any]) -> None:
        totals = self._totals
        for bucket, n in old[1].items():
            left = totals[bucket] - n
            if left:
                totals[bucket] = left
            else:
                del totals[bucket]

    def add(self, latency_s: float, now: float | None = None) -> bool:
        """Count one latency; True when it began a new slice (a moment to look at the quantile
        again: the rollback policy does, rather than after every request)."""
        current, started = self._current(now)
        bucket = _bucket(latency_s)
        counts = current[1]
        counts[bucket] = counts.get(bucket, 0) + 1
        self._totals[bucket] = self._totals.get(bucket, 0) + 1
        return started

    def buckets(self, now: float | None = None) -> dict[int, int]:
        """The window's latencies by bucket (a copy): what a server shares with its cluster."""
        self._trim(now)
        return dict(self._totals)

    def quantile(
        self, q: float, now: float | None = None, also: Mapping[int, int] | None = None
    ) -> tuple[int, float | None]:
        """``(latencies in the window, the q-quantile of them in seconds)``; ``None`` when empty.
        ``also``: other servers' latencies of the same window, by bucket, counted with these."""
        self._trim(now)
        totals = add_counts(self._totals, also) if also else self._totals
        return quantile_of(totals, q)


def quantile_of(totals: Mapping[int, int], q: float) -> tuple[int, float | None]:
    """``(latencies counted, their q-quantile in seconds)`` of latencies counted by bucket."""
    count = sum(totals.values())
    if not count:
        return 0, None
    rank = max(1, math.ceil(q * count))
    seen = 0
    for bucket in sorted(totals):
        seen += totals[bucket]
        if seen >= rank:
            break
    return count, LATENCY_FLOOR_S * 2 ** ((bucket + 0.5) / LATENCY_BUCKETS_PER_DOUBLING)


_NO_FIGURES = RouteFigures()


def _bucket(latency_s: float) -> int:
    if latency_s <= LATENCY_FLOOR_S:
        return 0
    return int(math.log2(latency_s / LATENCY_FLOOR_S) * LATENCY_BUCKETS_PER_DOUBLING)


@dataclass
class RouteStats:
    """Counters of one route since the server started (or the deployment changed)."""

    requests: int = 0
    errors: int = 0
    latency_s: float = 0.0
    window: ErrorWindow | None = None
    #: the answers' latencies over the same window, kept where a rollback policy watches them
    latencies: LatencyWindow | None = None

    def figures(self, now: float | None = None) -> RouteFigures:
        """These counters as this server shares them with its cluster."""
        n, errors = self.window.counts(now) if self.window is not None else (0, 0)
        buckets = self.latencies.buckets(now) if self.latencies is not None else {}
        return RouteFigures(self.requests, self.errors, self.latency_s, n, errors, buckets)

    def to_dict(self, others: RouteFigures | None = None) -> dict[str, Any]:
        """The counters, with ``others``: the cluster's other servers' counters of this route."""
        o = others or _NO_FIGURES
        requests, latency_s = self.requests + o.requests, self.latency_s + o.latency_s
        out: dict[str, Any] = {
            "requests": requests,
            "errors": self.errors + o.errors,
            "latency_ms_avg": round(1000 * latency_s / requests, 3) if requests else None,
        }
        if self.window is not None:
            n, errors = self.window.counts()
            out["window"] = {"seconds": self.window.window_s, "requests": n + o.window_requests,
                             "errors": errors + o.window_errors}
            if self.latencies is not None:
                _, p99 = self.latencies.quantile(0.99, also=o.buckets)
                out["window"]["p99_ms"] = None if p99 is None else round(1000 * p99, 3)
        return out


@dataclass
class ShadowStats:
    """How the shadow version's answers compared with the primary's (never returned to callers)."""

    requests: int = 0
    agreements: int = 0
    disagreements: int = 0
    errors: int = 0
    skipped: int = 0
    shadow_latency_s: float = 0.0
    primary_latency_s: float = 0.0
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=20))

    def counters(self) -> dict[str, float]:
        """The counters that sum over a cluster's servers (``recent`` is this server's own)."""
        return {name: getattr(self, name) for name in SHADOW_COUNTERS}

    def to_dict(self, others: Mapping[str, float] | None = None) -> dict[str, Any]:
        """The comparison, with ``others``: the cluster's other servers' counters."""
        c = self.counters()
        for name, value in (others or {}).items():
            c[name] += value
        compared = c["agreements"] + c["disagreements"]
        return {
            **{name: int(c[name]) for name in ("requests", "agreements", "disagreements", "errors", "skipped")},
            "agreement_rate": round(c["agreements"] / compared, 6) if compared else None,
            "shadow_latency_ms_avg": round(1000 * c["shadow_latency_s"] / compared, 3) if compared else None,
            "primary_latency_ms_avg": round(1000 * c["primary_latency_s"] / compared, 3) if compared else None,
            "recent": list(self.recent),
        }


def outputs_agree(
    primary: Mapping[str, np.ndarray], shadow: Mapping[str, np.ndarray], *, rtol: float = 1e-3, atol: float = 1e-5
) -> bool:
    """Whether two answers agree on every output they share: exact for integers, booleans and
    strings (labels), ``allclose`` for floats. No shared output means no agreement."""
    common = [n for n in primary if n in shadow]
    if not common:
        return False
    for name in common:
        a, b = np.asarray(primary[name]), np.asarray(shadow[name])
        if a.shape != b.shape:
            return False
        if np.issubdtype(a.dtype, np.floating) and np.issubdtype(b.dtype, np.floating):
            if not np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True):
                return False
        elif not np.array_equal(a, b):
            return False
    return True
