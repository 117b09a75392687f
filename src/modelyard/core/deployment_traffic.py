"""The traffic of one deployment revision, in memory: the route chooser, each route's counters
and the windows its rollback policy watches, the shadow's comparisons, the requests owed to a
route, and a rollout step's evidence, with what the cluster's other servers counted
(``peers``, handed in by ``core/cluster_traffic.py``).

The data plane feeds each outcome in (:meth:`DeploymentTraffic.record`) and rolls a canary back
when it trips the policy; ``core/deployments.py`` makes one of these per revision and keeps the
counters of routes that stay, and of the last few that left (``retired``: a canary rolled back
still shows what it did). Nothing here touches the database.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

from modelyard.core.deployment_spec import Deployment, RollbackPolicy, Route
from modelyard.core.routing import ErrorWindow, LatencyWindow, RouteStats, ShadowStats, WeightedChoice
from modelyard.core.traffic_figures import NOBODY, RouteFigures, TrafficFigures

__all__ = ["DeploymentTraffic", "Trip", "RETIRED_KEPT"]

#: how many routes a deployment no longer has are kept in its statistics (the latest)
RETIRED_KEPT = 8


def _same_shadow(before: Deployment, after: Deployment) -> bool:
    old, new = before.shadow, after.shadow
    return old is not None and new is not None and old.label == new.label


#: routes a deployment's traffic may owe at most (requests in flight the slow way, at any moment)
_OWED_MAX = 1024


def _windowed(stats: RouteStats, policy: RollbackPolicy | None) -> RouteStats:
    """``stats`` with the windows ``policy`` watches: its error window over the policy's window
    (a minute without one), and a latency window where it has a latency limit. Windows already
    of that length are kept (a change that leaves the policy as it was keeps what they saw)."""
    window_s = policy.window_s if policy is not None else 60.0
    if stats.window is None or stats.window.window_s != window_s:
        stats.window = ErrorWindow(window_s)
    if policy is None or not policy.watches_latency:
        stats.latencies = None
    elif stats.latencies is None or stats.latencies.window_s != window_s:
        stats.latencies = LatencyWindow(window_s)
    return stats


class Trip(NamedTuple):
    """What tripped a rollback policy: which limit (``error_rate`` or ``latency``) and how, in
    words (the rollback event's reason)."""

    limit: str
    how: str


@dataclass
class DeploymentTraffic:
    """In-memory state of one deployment revision: the route chooser and its statistics."""

    deployment: Deployment
    choice: WeightedChoice
    routes: dict[str, RouteStats] = field(default_factory=dict)
    #: routes earlier revisions had and this one has not (a canary rolled back, a version
    #: replaced), with what was counted of them, oldest first (at most :data:`RETIRED_KEPT`)
    retired: dict[str, RouteStats] = field(default_factory=dict)
    shadow: ShadowStats = field(default_factory=ShadowStats)
    rolling_back: bool = False
    #: routes picked for requests that went the slow way (see :meth:`owe`)
    owed: list[Route] = field(default_factory=list)
    #: the canary's answers without error before its rollout step began, as this server counted
    #: them (see :meth:`answered_at_step`)
    step_base: int = 0
    #: what the cluster's other servers counted of this deployment, summed (replaced whole every
    #: ``MODELYARD_TRAFFIC_SHARE_S`` by ``core/cluster_traffic.py``; nobody's on a lone server)
    peers: TrafficFigures = NOBODY

    @classmethod
    def of(cls, deployment: Deployment, previous: DeploymentTraffic | None = None) -> DeploymentTraffic:
        stats: dict[str, RouteStats] = {}
        for route in deployment.routes:
            old = previous.routes.get(route.label) if previous else None
            stats[route.label] = _windowed(old or RouteStats(), deployment.rollback)
        # routes that leave keep what was counted of them, for stats (oldest first)
        retired = {} if previous is None else {
            label: old for label, old in (*previous.retired.items(), *previous.routes.items()) if label not in stats
        }
        traffic = cls(
            deployment=deployment,
            choice=WeightedChoice([r.weight for r in deployment.routes]),
            routes=stats,
            retired=dict(list(retired.items())[-RETIRED_KEPT:]),
            # a shadow's comparisons are about its version: a new shadow target starts afresh
            shadow=previous.shadow if previous and _same_shadow(previous.deployment, deployment) else ShadowStats(),
            peers=previous.peers if previous else NOBODY,
        )
        rollout = deployment.rollout
        if rollout is not None:
            before = previous.deployment.rollout if previous is not None else None
            if previous is not None and before is not None and before.at == rollout.at:
                traffic.step_base = previous.step_base  # a change that is not a step keeps the count
            else:
                traffic.step_base = traffic._canary_answered()
        return traffic

    def _canary_answered(self) -> int:
        """The canary's answers without error so far (a rollout's deployment has two routes)."""
        routes = self.deployment.routes
        stats = self.routes.get(routes[-1].label) if len(routes) == 2 else None
        return 0 if stats is None else stats.requests - stats.errors

    def answered_here_at_step(self) -> int:
        """The canary's answers without error at its rollout's current step, as this server
        counted them. Counted from when this server first routed by the step (a server that
        learns of it a moment late counts a little less, never more)."""
        return self._canary_answered() - self.step_base

    def answered_at_step(self) -> int:
        """The canary's answers without error at its rollout's current step, as this server and
        the cluster's others counted them: what a step with ``min_requests`` waits for
        (``Deployments.advance_rollouts``)."""
        rollout = self.deployment.rollout
        others = self.peers.answered_at(rollout.at) if rollout is not None else 0
        return self.answered_here_at_step() + others

    @property
    def counted(self) -> bool:
        """Whether this server counted any request of the deployment (or mirrored one)."""
        return (self.shadow.requests > 0 or any(stats.requests for stats in self.routes.values())
                or any(stats.requests for stats in self.retired.values()))

    def figures(self, now: float | None = None) -> TrafficFigures:
        """What this server counted, as it shares it with its cluster (``now``: monotonic)."""
        rollout = self.deployment.rollout
        return TrafficFigures(
            1,
            {label: stats.figures(now) for label, stats in (*self.retired.items(), *self.routes.items())},
            self.shadow.counters() if self.deployment.shadow else {},
            {rollout.at: self.answered_here_at_step()} if rollout is not None else {},
        )

    def pick(self, key: str | None = None) -> Route:
        choice = self.choice
        return self.deployment.routes[choice.pick() if key is None else choice.pick_for(key)]

    def next_route(self, key: str | None = None) -> Route:
        """The route of the next request: picked by weight (the same route for the same routing
        ``key``), the primary while rolling back. A request picked at random takes a route owed
        (:meth:`owe`) first."""
        if self.rolling_back:
            return self.deployment.primary
        if key is None and self.owed:
            return self.owed.pop()
        return self.pick(key)

    def owe(self, route: Route, key: str | None) -> None:
        """``route`` was picked at random for a request that then went another way to its
        answer, one that picks again (its version was not in memory: ``DataPlane.start`` leaves
        it to ``DataPlane.infer``, which loads it). The next random pick takes ``route``, so
        each route keeps its share: otherwise a route whose version is not loaded yet is picked
        twice for it to be taken, and a 1% canary would wait about ten thousand requests for its
        first one. (A pick by routing key is the same either way: nothing is owed.)"""
        if key is None and not self.rolling_back and len(self.owed) < _OWED_MAX:
            self.owed.append(route)

    @cached_property
    def heaviest(self) -> Route:
        """The route with the largest weight (the first of equals)."""
        return max(self.deployment.routes, key=lambda r: r.weight)

    @property
    def gate_route(self) -> Route:
        """The route whose queue holds back the deployment's callers in an overload (see
        ``DeploymentGate``): where most of its traffic goes, the primary while rolling back."""
        return self.deployment.primary if self.rolling_back else self.heaviest

    def record(self, route: Route, ok: bool, latency_s: float, now: float | None = None) -> Trip | None:
        """Count one outcome; what tripped the rollback policy when this one did (once per
        revision). The error rate is looked at on each error, the latency's p99 when a slice of
        its window begins (a sixtieth of the window: once a second for a minute's). ``now``: the
        monotonic clock's time (read when omitted)."""
        stats = self.routes.get(route.label)
        if stats is None:
            return None
        stats.requests += 1
        stats.latency_s += latency_s
        if not ok:
            stats.errors += 1
        window, latencies = stats.window, stats.latencies
        if now is None and (window is not None or latencies is not None):
            now = time.monotonic()  # once for both windows
        if window is not None:
            window.add(ok, now)
        look = ok and latencies is not None and latencies.add(latency_s, now)
        policy = self.deployment.rollback
        if policy is None or self.rolling_back:
            return None
        primary = self.deployment.primary
        if route is primary or route == primary:  # (the same object, but for a route made elsewhere)
            return None
        trip = None
        if not ok and window is not None:
            trip = self._failing(route, window, policy, now)
        elif look and latencies is not None:
            trip = self._slow(route, latencies, policy, now)
        if trip is not None:
            self.rolling_back = True
        return trip

    def review(self, now: float | None = None) -> tuple[Route, Trip] | None:
        """Look at every canary's windows, this server's with the cluster's others' (just handed
        in): the canary and what tripped the rollback policy, if anything did (once per
        revision). Outcomes counted here are looked at as they come (:meth:`record`); this is
        for errors and answers that came on the other servers."""
        policy = self.deployment.rollback
        if policy is None or self.rolling_back:
            return None
        now = time.monotonic() if now is None else now
        primary = self.deployment.primary
        for route in self.deployment.routes:
            stats = self.routes.get(route.label)
            if route is primary or route == primary or stats is None:
                continue
            trip = None
            if stats.window is not None:
                trip = self._failing(route, stats.window, policy, now)
            if trip is None and stats.latencies is not None:
                trip = self._slow(route, stats.latencies, policy, now)
            if trip is not None:
                self.rolling_back = True
                return route, trip
        return None

    def _others(self, route: Route) -> RouteFigures | None:
        return self.peers.route(route.label)

    def _failing(self, route: Route, window: ErrorWindow, policy: RollbackPolicy, now: float | None) -> Trip | None:
        """The error-rate limit canary ``route``, whose outcomes here are ``window``, passed
        (counted with the cluster's other servers' outcomes), if it did."""
        n, errors = window.counts(now)
        others = self._others(route)
        if others is not None:  # the cluster's other servers' window, as they last shared it
            n, errors = n + others.window_requests, errors + others.window_errors
        if n >= policy.min_requests and errors / n > policy.max_error_rate:
            return Trip("error_rate", f"error rate {errors / n:.3g} over {policy.window_s:g}s exceeded "
                                      f"{policy.max_error_rate:g}")
        return None

    def _slow(self, route: Route, latencies: LatencyWindow, policy: RollbackPolicy, now: float | None) -> Trip | None:
        """The latency limit canary ``route``, whose answers here are ``latencies``, passed
        (counted with the cluster's other servers' answers), if any."""
        others = self._others(route)
        n, p99 = latencies.quantile(0.99, now, others.buckets if others else None)
        if n < policy.min_requests or p99 is None:
            return None
        over = f"p99 latency {1000 * p99:.4g} ms over {policy.window_s:g}s exceeded"
        if policy.max_p99_ms is not None and 1000 * p99 > policy.max_p99_ms:
            return Trip("latency", f"{over} {policy.max_p99_ms:g} ms")
        first = self.deployment.primary
        primary = self.routes[first.label].latencies
        if policy.max_p99_ratio is not None and primary is not None:
            others = self._others(first)
            served, base = primary.quantile(0.99, now, others.buckets if others else None)
            if served >= policy.min_requests and base is not None and p99 > policy.max_p99_ratio * base:
                return Trip("latency", f"{over} {policy.max_p99_ratio:g}x the primary's {1000 * base:.4g} ms")
        return None

    def stats(self) -> dict[str, Any]:
        """The live statistics: this server's counters and those the cluster's other servers
        last shared (``servers``: how many servers counted requests of the deployment)."""
        rollout = self.deployment.rollout
        peers = self.peers
        return {
            "servers": int(self.counted) + peers.servers,
            "routes": [
                {**r.to_dict(), **self.routes[r.label].to_dict(peers.route(r.label))} for r in self.deployment.routes
            ],
            "retired": self._retired_stats(),
            "shadow": self.shadow.to_dict(peers.shadow) if self.deployment.shadow else None,
            **({"rollout": {"step": rollout.step, "canary_answered": self.answered_at_step()}} if rollout else {}),
        }

    def _retired_stats(self) -> list[dict[str, Any]]:
        """What was counted of the routes the deployment had and has no more, this server's with
        the cluster's others' (theirs too where only they counted one), newest last."""
        current = {r.label for r in self.deployment.routes}
        labels = [*self.retired, *(label for label in self.peers.routes if label not in self.retired)]
        out = []
        for label in labels:
            model, _, version = label.rpartition(":")
            if label in current or not model or not version.isdigit():  # (a label is model:version)
                continue
            figures = self.retired.get(label, RouteStats()).to_dict(self.peers.route(label))
            figures.pop("window", None)  # the rollback policy's window is about current routes
            out.append({"model": model, "version": int(version), **figures})
        return out[-RETIRED_KEPT:]
