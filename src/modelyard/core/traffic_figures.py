"""What one server counted of a deployment's traffic, in a form the other servers of its cluster
read (JSON in the database), and the sum of what several servers counted.

Each server routes and counts its own share of a deployment's requests
(:class:`~modelyard.core.deployment_traffic.DeploymentTraffic`). Behind a load balancer that share is a
fraction: a canary failing on every server would need each server to see the rollback policy's
``min_requests`` by itself, a rollout step waiting for ``min_requests`` answers would wait for
them on one server, and a deployment's statistics would depend on which server was asked.
:class:`~modelyard.core.cluster_traffic.ClusterTraffic` has each server publish its
:class:`TrafficFigures` and read the others', summed with :meth:`TrafficFigures.plus`; the rollback
policy, the rollout's evidence and the statistics then count the cluster's requests.

Nothing here touches the database: figures go to and from plain JSON (:meth:`TrafficFigures.to_row`,
:meth:`TrafficFigures.from_row`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RouteFigures", "TrafficFigures", "NOBODY", "SHADOW_COUNTERS", "add_counts"]

#: the shadow comparison's counters that sum over servers (its ``recent`` list stays each server's)
SHADOW_COUNTERS = (
    "requests", "agreements", "disagreements", "errors", "skipped", "shadow_latency_s", "primary_latency_s",
)


def add_counts(a: Mapping[int, int], b: Mapping[int, int]) -> dict[int, int]:
    """Two latency windows' bucket counts, summed."""
    total = dict(a)
    for bucket, n in b.items():
        total[bucket] = total.get(bucket, 0) + n
    return total


@dataclass(frozen=True, slots=True)
class RouteFigures:
    """One route's counters: since each server started routing the deployment (``requests``,
    ``errors``, ``latency_s``) and over the rollback policy's window (``window_requests``,
    ``window_errors``, and the answers' latency buckets where the policy watches latency)."""

    requests: int = 0
    errors: int = 0
    latency_s: float = 0.0
    window_requests: int = 0
    window_errors: int = 0
    buckets: Mapping[int, int] = field(default_factory=dict)

    def plus(self, other: RouteFigures) -> RouteFigures:
        return RouteFigures(
            self.requests + other.requests,
            self.errors + other.errors,
            self.latency_s + other.latency_s,
            self.window_requests + other.window_requests,
            self.window_errors + other.window_errors,
            add_counts(self.buckets, other.buckets),
        )

    def to_row(self) -> dict[str, Any]:
        return {
            "requests": self.requests, "errors": self.errors, "latency_s": self.latency_s,
            "window": [self.window_requests, self.window_errors],
            "buckets": {str(b): n for b, n in self.buckets.items()},
        }

    @classmethod
    def from_row(cls, raw: Mapping[str, Any]) -> RouteFigures:
        window = raw.get("window") or [0, 0]
        return cls(
            _count(raw.get("requests")), _count(raw.get("errors")), _seconds(raw.get("latency_s")),
            _count(window[0]), _count(window[1]),
            {int(b): _count(n) for b, n in (raw.get("buckets") or {}).items()},
        )


@dataclass(frozen=True, slots=True)
class TrafficFigures:
    """What ``servers`` servers counted of one deployment: each route's figures by its label
    (``model:version``), the shadow comparison's counters, and the canary's answers without
    error at a rollout step, by the step (``(step, since)``, see ``Rollout.at``)."""

    servers: int = 0
    routes: Mapping[str, RouteFigures] = field(default_factory=dict)
    shadow: Mapping[str, float] = field(default_factory=dict)
    answered: Mapping[tuple[int, float], int] = field(default_factory=dict)

    def route(self, label: str) -> RouteFigures | None:
        return self.routes.get(label)

    def answered_at(self, at: tuple[int, float]) -> int:
        return self.answered.get(at, 0)

    def plus(self, other: TrafficFigures) -> TrafficFigures:
        routes = dict(self.routes)
        for label, figures in other.routes.items():
            mine = routes.get(label)
            routes[label] = figures if mine is None else mine.plus(figures)
        shadow = dict(self.shadow)
        for name, value in other.shadow.items():
            shadow[name] = shadow.get(name, 0) + value
        answered = dict(self.answered)
        for at, n in other.answered.items():
            answered[at] = answered.get(at, 0) + n
        return TrafficFigures(self.servers + other.servers, routes, shadow, answered)

    @staticmethod
    def total(figures: Iterable[TrafficFigures]) -> TrafficFigures:
        result = NOBODY
        for f in figures:
            result = result.plus(f)
        return result

    def to_row(self) -> dict[str, Any]:
        """JSON for one server's row (``servers`` is implied: one)."""
        return {
            "routes": {label: f.to_row() for label, f in self.routes.items()},
            "shadow": dict(self.shadow),
            "answered": [[step, since, n] for (step, since), n in self.answered.items()],
        }

    @classmethod
    def from_row(cls, raw: Any) -> TrafficFigures | None:
        """One server's figures from its row; ``None`` for a row this code cannot read (written by
        another version of it, or damaged): it is left out of the sum rather than failing it."""
        try:
            return cls(
                1,
                {str(label): RouteFigures.from_row(r) for label, r in raw["routes"].items()},
                {name: _seconds(raw["shadow"][name]) for name in SHADOW_COUNTERS if name in raw.get("shadow", {})},
                {(int(step), float(since)): _count(n) for step, since, n in raw.get("answered", [])},
            )
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            return None


#: no other server's figures
NOBODY = TrafficFigures()


def _count(value: Any) -> int:
    n = int(value)
    if n < 0:
        raise ValueError("a count is never negative")
    return n


def _seconds(value: Any) -> float:
    x = float(value)
    if not math.isfinite(x) or x < 0:
        raise ValueError("seconds are finite and never negative")
    return x
