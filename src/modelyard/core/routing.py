"""Traffic of one deployment, in memory: the weighted choice of a route, the canary's error window
that triggers an automatic rollback, and the comparison of shadow answers with the primary's.

Nothing here touches the database or the network; :class:`~modelyard.core.deployments.Deployments`
persists what changes, the data plane feeds outcomes in.
"""

from __future__ import annotations

import bisect
import hashlib
import random
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["key_point", "WeightedChoice", "ErrorWindow", "RouteStats", "ShadowStats", "outputs_agree"]

#: an :class:`ErrorWindow` counts outcomes in this many slices of its window
WINDOW_SLICES = 60


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


class ErrorWindow:
    """Outcomes of the last ``window_s`` seconds: the error rate the rollback policy watches.

    Counted in :data:`WINDOW_SLICES` slices of the window, not one entry per request: a route
    serving 20k requests a second over a 60 s window held 1.2M entries (about 80 MB) that way. A
    slice leaves the window once all of it is older than ``window_s``, so an outcome counts for
    at most one slice (a sixtieth of the window) longer than the window."""

    __slots__ = ("window_s", "_slice_s", "_slices", "_requests", "_errors")

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._slice_s = window_s / WINDOW_SLICES
        self._slices: deque[list[int]] = deque()  # [slice number, requests, errors], oldest first
        self._requests = 0
        self._errors = 0

    def add(self, ok: bool, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        number = int(now // self._slice_s)
        slices = self._slices
        if slices and slices[-1][0] == number:
            last = slices[-1]
        else:
            last = [number, 0, 0]
            slices.append(last)
            self._trim(now)
        last[1] += 1
        self._requests += 1
        if not ok:
            last[2] += 1
            self._errors += 1

    def _trim(self, now: float) -> None:
        # slice n spans [n * slice_s, (n + 1) * slice_s): gone once its end is past the horizon
        horizon = now - self.window_s
        slices = self._slices
        while slices and (slices[0][0] + 1) * self._slice_s <= horizon:
            _, requests, errors = slices.popleft()
            self._requests -= requests
            self._errors -= errors

    def counts(self, now: float | None = None) -> tuple[int, int]:
        """``(requests, errors)`` within the window."""
        self._trim(time.monotonic() if now is None else now)
        return self._requests, self._errors

    def error_rate(self, now: float | None = None) -> float:
        n, errors = self.counts(now)
        return errors / n if n else 0.0


@dataclass
class RouteStats:
    """Counters of one route since the server started (or the deployment changed)."""

    requests: int = 0
    errors: int = 0
    latency_s: float = 0.0
    window: ErrorWindow | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "requests": self.requests,
            "errors": self.errors,
            "latency_ms_avg": round(1000 * self.latency_s / self.requests, 3) if self.requests else None,
        }
        if self.window is not None:
            n, errors = self.window.counts()
            out["window"] = {"seconds": self.window.window_s, "requests": n, "errors": errors}
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

    def to_dict(self) -> dict[str, Any]:
        compared = self.agreements + self.disagreements
        return {
            "requests": self.requests,
            "agreements": self.agreements,
            "disagreements": self.disagreements,
            "errors": self.errors,
            "skipped": self.skipped,
            "agreement_rate": round(self.agreements / compared, 6) if compared else None,
            "shadow_latency_ms_avg": round(1000 * self.shadow_latency_s / compared, 3) if compared else None,
            "primary_latency_ms_avg": round(1000 * self.primary_latency_s / compared, 3) if compared else None,
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
