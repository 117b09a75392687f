"""Deployments: named endpoints that route to model versions by weight, mirror to a shadow, and
carry their own serving settings (batching, instances, isolation, timeout, queue limit).

A deployment is served at ``/v2/models/{deployment}/...`` and over gRPC under its name. Its first
route is the *primary* (the stable version); any other route is a *canary*. ``rollback`` puts all
traffic back on the primary; ``promote`` makes one route the only one. With a rollback policy the
data plane rolls a canary back by itself when its error rate, or the 99th percentile of its
latency, over the window passes the policy's limit.

Every change bumps ``revision`` and replaces the in-memory routing table atomically: a request
already routed keeps its version (and its batcher), so no change drops a request in flight.
Queries are scoped by tenant here; rows never leave this module.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any, NamedTuple

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from modelyard.core.names import check_name
from modelyard.core.pages import Page, PageRequest
from modelyard.core.registry import Registry
from modelyard.core.rollout import Rollout, parse_rollout
from modelyard.core.routing import ErrorWindow, LatencyWindow, RouteStats, ShadowStats, WeightedChoice
from modelyard.core.traffic_figures import NOBODY, RouteFigures, TrafficFigures
from modelyard.engine.manager import parse_serving
from modelyard.errors import Conflict, DeploymentNotFound, ValidationFailed
from modelyard.store.db import Database
from modelyard.store.tables import DeploymentRow, utcnow

__all__ = [
    "Deployments",
    "Deployment",
    "Route",
    "Shadow",
    "RollbackPolicy",
    "DeploymentTraffic",
    "Trip",
    "MAX_EVENTS",
]

#: the newest events kept on a deployment (changes, rollbacks)
MAX_EVENTS = 50
#: the highest latency limit a rollback policy takes (an hour), and the highest ratio to the primary's
MAX_P99_MS = 3_600_000.0
MAX_P99_RATIO = 1000.0
_POLICY_KEYS = ("max_error_rate", "window_s", "min_requests", "max_p99_ms", "max_p99_ratio")

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Route:
    """Send ``weight`` (relative) of the traffic to ``model`` version ``version``."""

    model: str
    version: int
    weight: float = 100.0
    #: ``model:version``, made once: a deployment's every request looks its statistics up by it
    label: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "label", f"{self.model}:{self.version}")

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "weight": self.weight}


@dataclass(frozen=True, slots=True)
class Shadow:
    """Mirror ``share`` (0..1) of the requests to ``model`` version ``version``."""

    model: str
    version: int
    share: float = 1.0

    @property
    def label(self) -> str:
        return f"{self.model}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "share": self.share}


@dataclass(frozen=True, slots=True)
class RollbackPolicy:
    """Roll back when a canary's error rate over ``window_s`` exceeds ``max_error_rate``, or the
    99th percentile of its answers' latencies over the window exceeds ``max_p99_ms``
    milliseconds, or ``max_p99_ratio`` times the primary's (each where set), with at least
    ``min_requests`` requests (answers, for the latency; the primary's too, for the ratio) in
    the window."""

    max_error_rate: float = 0.5
    window_s: float = 60.0
    min_requests: int = 10
    max_p99_ms: float | None = None
    max_p99_ratio: float | None = None

    @property
    def watches_latency(self) -> bool:
        return self.max_p99_ms is not None or self.max_p99_ratio is not None

    def to_dict(self) -> dict[str, Any]:
        return {"max_error_rate": self.max_error_rate, "window_s": self.window_s, "min_requests": self.min_requests,
                "max_p99_ms": self.max_p99_ms, "max_p99_ratio": self.max_p99_ratio}


@dataclass(frozen=True, slots=True)
class Deployment:
    id: str
    tenant_id: str
    name: str
    description: str
    routes: tuple[Route, ...]
    shadow: Shadow | None
    serving: dict[str, Any]
    rollback: RollbackPolicy | None
    events: tuple[dict[str, Any], ...]
    revision: int
    created_at: datetime
    updated_at: datetime
    #: a progressive rollout under way (``core/rollout.py``)
    rollout: Rollout | None = None

    @property
    def primary(self) -> Route:
        return self.routes[0]


# -- parsing and validation ---------------------------------------------------------------------


def parse_routes(raw: Any) -> tuple[Route, ...]:
    if not isinstance(raw, list) or not raw:
        raise ValidationFailed("routes must be a non-empty list", details={"field": "routes"})
    if len(raw) > 16:
        raise ValidationFailed("a deployment has at most 16 routes", details={"field": "routes"})
    routes: list[Route] = []
    for i, item in enumerate(raw):
        data = item.to_dict() if isinstance(item, Route) else item
        if not isinstance(data, Mapping) or set(data) - {"model", "version", "weight"}:
            raise ValidationFailed("each route is {model, version, weight}", details={"field": f"routes.{i}"})
        try:
            route = Route(
                model=check_name(str(data["model"]), field=f"routes.{i}.model"),
                version=int(data["version"]),
                weight=float(data.get("weight", 100.0)),
            )
        except (KeyError, TypeError, ValueError):
            raise ValidationFailed(
                "each route needs a model name, a version number and a weight", details={"field": f"routes.{i}"}
            ) from None
        if route.weight < 0 or route.weight > 1e6:
            raise ValidationFailed("weights are between 0 and 1e6", details={"field": f"routes.{i}.weight"})
        routes.append(route)
    if sum(r.weight for r in routes) <= 0:
        raise ValidationFailed("at least one route needs a positive weight", details={"field": "routes"})
    if len({r.label for r in routes}) != len(routes):
        raise ValidationFailed("a version appears in two routes", details={"field": "routes"})
    return tuple(routes)


def parse_shadow(raw: Any) -> Shadow | None:
    if raw is None:
        return None
    data = raw.to_dict() if isinstance(raw, Shadow) else raw
    if not isinstance(data, Mapping) or set(data) - {"model", "version", "share"}:
        raise ValidationFailed("shadow is {model, version, share}", details={"field": "shadow"})
    try:
        shadow = Shadow(
            model=check_name(str(data["model"]), field="shadow.model"),
            version=int(data["version"]),
            share=float(data.get("share", 1.0)),
        )
    except (KeyError, TypeError, ValueError):
        raise ValidationFailed("shadow needs a model name, a version number and a share", details={"field": "shadow"}) from None
    if not 0 <= shadow.share <= 1:
        raise ValidationFailed("shadow.share is between 0 and 1", details={"field": "shadow.share"})
    return shadow


def parse_rollback(raw: Any) -> RollbackPolicy | None:
    if raw is None:
        return None
    data = raw.to_dict() if isinstance(raw, RollbackPolicy) else raw
    if not isinstance(data, Mapping) or set(data) - set(_POLICY_KEYS):
        raise ValidationFailed(f"rollback is {{{', '.join(_POLICY_KEYS)}}}", details={"field": "rollback"})
    try:
        latency, ratio = data.get("max_p99_ms"), data.get("max_p99_ratio")
        policy = RollbackPolicy(
            max_error_rate=float(data.get("max_error_rate", 0.5)),
            window_s=float(data.get("window_s", 60.0)),
            min_requests=int(data.get("min_requests", 10)),
            max_p99_ms=None if latency is None else float(latency),
            max_p99_ratio=None if ratio is None else float(ratio),
        )
    except (TypeError, ValueError):
        raise ValidationFailed("rollback settings must be numbers", details={"field": "rollback"}) from None
    if not 0 <= policy.max_error_rate <= 1 or not 0 < policy.window_s <= 86_400 or not 1 <= policy.min_requests <= 1_000_000:
        raise ValidationFailed("rollback settings are out of range", details={"field": "rollback"})
    if policy.max_p99_ms is not None and not 0 < policy.max_p99_ms <= MAX_P99_MS:
        raise ValidationFailed(f"rollback.max_p99_ms is the canary's slowest 1% in milliseconds, over 0 and at most "
                               f"{MAX_P99_MS:,.0f}", details={"field": "rollback.max_p99_ms"})
    if policy.max_p99_ratio is not None and not 1 <= policy.max_p99_ratio <= MAX_P99_RATIO:
        raise ValidationFailed(f"rollback.max_p99_ratio is how many times the primary's p99 the canary's may reach, "
                               f"1 to {MAX_P99_RATIO:g}", details={"field": "rollback.max_p99_ratio"})
    return policy


def _deployment(row: DeploymentRow) -> Deployment:
    return Deployment(
        id=row.id,
        tenant_id=row.tenant_id,
        name=row.name,
        description=row.description,
        routes=parse_routes(row.routes),
        shadow=parse_shadow(row.shadow),
        serving=dict(row.serving or {}),
        rollback=parse_rollback(row.rollback),
        events=tuple(row.events or ()),
        revision=row.revision,
        created_at=row.created_at,
        updated_at=row.updated_at,
        rollout=Rollout.from_row(row.rollout),
    )


def _with_event(events: Any, event: dict[str, Any]) -> list[Any]:
    """``events`` with ``event`` added, the oldest dropped beyond :data:`MAX_EVENTS`."""
    return [*list(events or ())[-(MAX_EVENTS - 1):], event]


def _at_share(routes: tuple[Route, ...], share: float) -> tuple[Route, ...]:
    """The primary and the canary of ``routes`` weighted ``100 - share`` and ``share``."""
    primary, canary = routes
    return (Route(primary.model, primary.version, 100.0 - share), Route(canary.model, canary.version, share))


def _event(kind: str, **data: Any) -> dict[str, Any]:
    return {"at": utcnow().isoformat(), "kind": kind, **data}


# -- traffic state ---------------------------------------------------------------------------------


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
        traffic = cls(
            deployment=deployment,
            choice=WeightedChoice([r.weight for r in deployment.routes]),
            routes=stats,
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
        return self.shadow.requests > 0 or any(stats.requests for stats in self.routes.values())

    def figures(self, now: float | None = None) -> TrafficFigures:
        """What this server counted, as it shares it with its cluster (``now``: monotonic)."""
        rollout = self.deployment.rollout
        return TrafficFigures(
            1,
            {label: stats.figures(now) for label, stats in self.routes.items()},
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
            "shadow": self.shadow.to_dict(peers.shadow) if self.deployment.shadow else None,
            **({"rollout": {"step": rollout.step, "canary_answered": self.answered_at_step()}} if rollout else {}),
        }


# -- the service -----------------------------------------------------------------------------------


class Deployments:
    """Create, change and look up deployments of every tenant (all methods take the tenant).

    ``lookup`` answers from memory after the first query (``cache_ttl_s``; local changes update
    it at once), so routing a request costs no database round trip.
    """

    def __init__(self, db: Database, registry: Registry, *, cache_ttl_s: float = 2.0) -> None:
        self._db = db
        self._registry = registry
        self._ttl = cache_ttl_s
        self._cache: dict[tuple[str, str], tuple[float, DeploymentTraffic | None]] = {}
        self._lock = threading.Lock()
        #: by deployment id, what the cluster's other servers counted of deployments this server
        #: holds no traffic state of (kept by ``core/cluster_traffic.py``): their statistics here
        self.elsewhere: Mapping[str, TrafficFigures] = {}
        #: called with each deployment after it changed or was deleted (``None`` after a delete)
        self.on_change: list[Callable[[str, str, Deployment | None], None]] = []

    # -- reads -------------------------------------------------------------------------------
    def get(self, tenant_id: str, name: str) -> Deployment:
        with self._db.read() as s:
            return _deployment(self._row(s, tenant_id, name))

    @staticmethod
    def _row(s: Any, tenant_id: str, name: str, *, lock: bool = False) -> DeploymentRow:
        """The row of deployment ``name``; with ``lock``, held until the transaction ends (on
        PostgreSQL: a change read-modify-written never loses another one made meanwhile, such
        as a rollout step taken by another server)."""
        query = select(DeploymentRow).where(DeploymentRow.tenant_id == tenant_id, DeploymentRow.name == name)
        row: DeploymentRow | None = s.scalar(query.with_for_update() if lock else query)
        if row is None:
            raise DeploymentNotFound(f"deployment {name!r} not found")
        return row

    def list(self, tenant_id: str | None, page: PageRequest = PageRequest()) -> Page[Deployment]:
        """Deployments of ``tenant_id`` (every tenant's for ``None``: admins), by name."""
        with self._db.read() as s:
            query = select(DeploymentRow)
            count = select(func.count()).select_from(DeploymentRow)
            if tenant_id is not None:
                query = query.where(DeploymentRow.tenant_id == tenant_id)
                count = count.where(DeploymentRow.tenant_id == tenant_id)
            rows = s.scalars(query.order_by(DeploymentRow.name).offset(page.offset).limit(page.page_size)).all()
            total = s.scalar(count) or 0
            return Page([_deployment(r) for r in rows], total, page.page, page.page_size)

    def cached(self, tenant_id: str, name: str) -> tuple[bool, DeploymentTraffic | None] | None:
        """``(fresh, traffic)`` from memory only (``traffic`` is ``None`` for "no such
        deployment"), or ``None`` when nothing is remembered: ask :meth:`refresh`."""
        entry = self._cache.get((tenant_id, name))
        if entry is None:
            return None
        return time.monotonic() - entry[0] < self._ttl, entry[1]

    def stats(self, deployment: Deployment) -> dict[str, Any] | None:
        """Live traffic statistics of ``deployment``, of this server and the cluster's others
        (``None`` before its first request on any of them)."""
        entry = self._cache.get((deployment.tenant_id, deployment.name))
        traffic = entry[1] if entry else None
        if traffic is not None and traffic.deployment.id == deployment.id:
            return traffic.stats()
        others = self.elsewhere.get(deployment.id)
        if others is None:
            return None
        counted_elsewhere = DeploymentTraffic.of(deployment)  # nothing of this server's
        counted_elsewhere.peers = others
        return {**counted_elsewhere.stats(), "servers": others.servers}

    def traffic(self) -> list[DeploymentTraffic]:
        """The traffic state this server holds, of every deployment it routed or changed lately."""
        with self._lock:
            return [traffic for _, traffic in self._cache.values() if traffic is not None]

    def lookup(self, tenant_id: str, name: str) -> DeploymentTraffic | None:
        """The traffic state of deployment ``name``, or ``None`` if there is none (cached)."""
        hit = self.cached(tenant_id, name)
        if hit is not None and hit[0]:
            return hit[1]
        return self.refresh(tenant_id, name)

    def refresh(self, tenant_id: str, name: str) -> DeploymentTraffic | None:
        """Read deployment ``name`` from the database and remember it (blocking)."""
        try:
            deployment: Deployment | None = self.get(tenant_id, name)
        except DeploymentNotFound:
            deployment = None
        return self._remember(tenant_id, name, deployment)

    def _remember(self, tenant_id: str, name: str, deployment: Deployment | None) -> DeploymentTraffic | None:
        with self._lock:
            previous = self._cache.get((tenant_id, name))
            old = previous[1] if previous else None
            if deployment is None:
                traffic = None
            elif old is not None and old.deployment.id == deployment.id and old.deployment.revision == deployment.revision:
                traffic = old
            else:
                keep = old if old is not None and old.deployment.id == deployment.id else None
                traffic = DeploymentTraffic.of(deployment, keep)
                if keep is None:  # what the cluster's others counted, if this server has read it
                    traffic.peers = self.elsewhere.get(deployment.id, NOBODY)
            if len(self._cache) > 50_000:
                self._cache.clear()
            self._cache[(tenant_id, name)] = (time.monotonic(), traffic)
            return traffic

    # -- writes ------------------------------------------------------------------------------
    def _check_versions(self, tenant_id: str, routes: tuple[Route, ...], shadow: Shadow | None) -> None:
        targets: list[Route | Shadow] = [*routes, *([shadow] if shadow else [])]
        for target in targets:
            self._registry.get_version(tenant_id, target.model, target.version)

    def create(
        self,
        tenant_id: str,
        name: str,
        *,
        routes: Any,
        shadow: Any = None,
        serving: Any = None,
        rollback: Any = None,
        rollout: Any = None,
        description: str = "",
    ) -> Deployment:
        """Create deployment ``name``; its versions must exist (``VersionNotFound``), the name
        must be free in the tenant (``Conflict``). With ``rollout`` its canary starts at the
        schedule's first step (whatever weights the routes give)."""
        check_name(name, field="name")
        parsed_routes = parse_routes(routes)
        parsed_shadow = parse_shadow(shadow)
        schedule = parse_rollout(rollout, parsed_routes, time.time())
        if schedule is not None:
            parsed_routes = _at_share(parsed_routes, schedule.share)
        self._check_versions(tenant_id, parsed_routes, parsed_shadow)
        row = DeploymentRow(
            id=str(uuid.uuid4()), tenant_id=tenant_id, name=name, description=description,
            routes=[r.to_dict() for r in parsed_routes],
            shadow=parsed_shadow.to_dict() if parsed_shadow else None,
            serving=parse_serving(serving),
            rollback=policy.to_dict() if (policy := parse_rollback(rollback)) else None,
            rollout=schedule.to_row() if schedule else None,
            events=[_event("created", routes=[r.to_dict() for r in parsed_routes],
                           **({"rollout": schedule.to_dict()} if schedule else {}))], revision=1,
            created_at=utcnow(), updated_at=utcnow(),
        )
        try:
            with self._db.transaction() as s:
                s.add(row)
                s.flush()
                result = _deployment(row)
        except IntegrityError:
            raise Conflict(f"deployment {name!r} already exists") from None
        self._changed(tenant_id, name, result)
        return result

    def update(
        self,
        tenant_id: str,
        name: str,
        *,
        event: str = "updated",
        reason: str | None = None,
        carrying: str | None = None,
        **changes: Any,
    ) -> Deployment:
        """Change any of ``routes``, ``shadow`` (``None`` removes it only when passed),
        ``serving``, ``rollback``, ``rollout`` (a schedule starts now, at its first step;
        ``None`` stops it where it is), ``description``; bumps the revision. A change of the
        routes without a ``rollout`` stops the rollout under way (the caller took the wheel).
        With ``carrying`` (a route's label), the change is made only while that route still takes
        traffic (read under the row's lock); otherwise :class:`Conflict`."""
        unknown = set(changes) - {"routes", "shadow", "serving", "rollback", "rollout", "description"}
        if unknown:
            raise ValidationFailed(f"unknown field(s): {', '.join(sorted(unknown))}")
        with self._db.transaction() as s:
            row = self._row(s, tenant_id, name, lock=True)
            if carrying is not None and not any(r.label == carrying and r.weight > 0 for r in parse_routes(row.routes)):
                raise Conflict(f"route {carrying} of deployment {name!r} takes no traffic now")
            detail: dict[str, Any] = {}
            routes = parse_routes(changes["routes"]) if "routes" in changes else parse_routes(row.routes)
            shadow = parse_shadow(changes["shadow"]) if "shadow" in changes else parse_shadow(row.shadow)
            if changes.get("rollout") is not None:
                schedule = parse_rollout(changes["rollout"], routes, time.time())
                assert schedule is not None  # (given, so parsed or refused)
                routes = _at_share(routes, schedule.share)
                changes["routes"] = routes
                row.rollout = schedule.to_row()
                detail["rollout"] = schedule.to_dict()
            elif row.rollout is not None and ("rollout" in changes or "routes" in changes):
                row.rollout = None
                detail["rollout"] = "stopped"
            if "routes" in changes or "shadow" in changes:
                self._check_versions(tenant_id, routes, shadow)
            if "routes" in changes:
                row.routes = [r.to_dict() for r in routes]
                detail["routes"] = row.routes
            if "shadow" in changes:
                row.shadow = shadow.to_dict() if shadow else None
                detail["shadow"] = row.shadow
            if "serving" in changes:
                row.serving = parse_serving(changes["serving"])
                detail["serving"] = row.serving
            if "rollback" in changes:
                policy = parse_rollback(changes["rollback"])
                row.rollback = policy.to_dict() if policy else None
                detail["rollback"] = row.rollback
            if "description" in changes and changes["description"] is not None:
                row.description = str(changes["description"])
            if reason:
                detail["reason"] = reason
            row.events = _with_event(row.events, _event(event, **detail))
            row.revision = row.revision + 1
            row.updated_at = utcnow()
            s.flush()
            result = _deployment(row)
        self._changed(tenant_id, name, result)
        return result

    def set_weights(self, tenant_id: str, name: str, weights: Mapping[str, float]) -> Deployment:
        """Change the weights of existing routes, by ``"model:version"`` label."""
        current = self.get(tenant_id, name)
        unknown = set(weights) - {r.label for r in current.routes}
        if unknown:
            raise ValidationFailed(f"no route {', '.join(sorted(unknown))} in deployment {name!r}")
        routes = [Route(r.model, r.version, float(weights.get(r.label, r.weight))) for r in current.routes]
        return self.update(tenant_id, name, routes=routes, event="weights")

    def promote(self, tenant_id: str, name: str, model: str | None = None, version: int | None = None) -> Deployment:
        """Roll forward: the named route (default: the last canary) takes all traffic and
        becomes the primary."""
        current = self.get(tenant_id, name)
        if model is None and version is None:
            target = current.routes[-1]
        else:
            matches = [
                r for r in current.routes
                if (model is None or r.model == model) and (version is None or r.version == version)
            ]
            if len(matches) != 1:
                raise ValidationFailed(f"name exactly one route of deployment {name!r} to promote")
            target = matches[0]
        return self.update(tenant_id, name, routes=[Route(target.model, target.version, 100.0)], event="promoted")

    def rollback(self, tenant_id: str, name: str, *, reason: str = "manual", canary: str | None = None) -> Deployment:
        """All traffic back to the primary route; canaries are removed. With ``canary`` (the
        label of the route an automatic rollback is for), :class:`Conflict` when that route takes
        no traffic any more: of a cluster's servers that all saw it fail, one rolls it back."""
        current = self.get(tenant_id, name)
        primary = current.primary
        return self.update(
            tenant_id, name, routes=[Route(primary.model, primary.version, 100.0)],
            event="rolled_back", reason=reason, carrying=canary,
        )

    def advance_rollouts(self, now: float | None = None) -> list[Deployment]:
        """Take every rollout step that is due (of every tenant): the canary's share goes to the
        next step, or, at a step of 100, the canary is promoted. Each step is read again and
        written on the condition that the row's revision is still the one read (see
        :meth:`_advance`), so that of a cluster's servers only one takes it. Returns the
        deployments changed."""
        now = time.time() if now is None else now
        with self._db.read() as s:
            rows = s.execute(
                select(DeploymentRow.tenant_id, DeploymentRow.name, DeploymentRow.rollout)
                .where(DeploymentRow.rollout.is_not(None))
            ).all()
        changed = []
        for tenant_id, name, raw in rows:
            schedule = Rollout.from_row(raw)
            if schedule is not None and schedule.due(now) and self._has_evidence(tenant_id, name, schedule):
                advanced = self._advance(tenant_id, name, now)
                if advanced is not None:
                    changed.append(advanced)
        return changed

    def _has_evidence(self, tenant_id: str, name: str, schedule: Rollout) -> bool:
        """Whether this server saw the canary answer ``schedule.min_requests`` requests without
        error at the current step (always, without ``min_requests``). Counted in this server's
        routing table of the deployment: one that has not served the step has seen none."""
        if not schedule.min_requests:
            return True
        entry = self._cache.get((tenant_id, name))
        traffic = entry[1] if entry else None
        if traffic is None or traffic.deployment.rollout is None or traffic.deployment.rollout.at != schedule.at:
            return False
        return traffic.answered_at_step() >= schedule.min_requests

    def _advance(self, tenant_id: str, name: str, now: float) -> Deployment | None:
        """Take the due step of deployment ``name``; ``None`` when it is no longer due (another
        server took it, or the rollout stopped). The write is conditional on the revision read,
        so two servers that read the same step write it once (on SQLite as on PostgreSQL)."""
        with self._db.transaction() as s:
            row = s.scalar(
                select(DeploymentRow).where(DeploymentRow.tenant_id == tenant_id, DeploymentRow.name == name)
            )
            schedule = Rollout.from_row(row.rollout) if row is not None else None
            if row is None or schedule is None or not schedule.due(now):
                return None  # gone, stopped, or taken by another server meanwhile
            step = schedule.next(now)
            routes = parse_routes(row.routes)
            values: dict[str, Any]
            if len(routes) != 2:  # (every change of the routes stops a rollout: not expected)
                values = {"rollout": None}
            elif step.share >= 100:
                promoted = [Route(routes[1].model, routes[1].version, 100.0).to_dict()]
                values = {"routes": promoted, "rollout": None,
                          "events": _with_event(row.events, _event("promoted", routes=promoted, reason="rollout"))}
            else:
                weighted = [r.to_dict() for r in _at_share(routes, step.share)]
                event = _event("rollout_step", routes=weighted, step=step.step, share=step.share)
                values = {"routes": weighted, "rollout": step.to_row(), "events": _with_event(row.events, event)}
            taken = s.execute(
                update(DeploymentRow)
                .where(DeploymentRow.id == row.id, DeploymentRow.revision == row.revision)
                .values(**values, revision=row.revision + 1, updated_at=utcnow())
                .execution_options(synchronize_session=False)
            ).rowcount
            if not taken:
                return None  # another server changed it between the read and the write
            s.refresh(row)
            result = _deployment(row)
        self._changed(tenant_id, name, result)
        return result

    async def follow_rollouts(self, every_s: float) -> None:
        """:meth:`advance_rollouts` every ``every_s`` seconds until cancelled (the server runs it)."""
        while True:
            await asyncio.sleep(every_s)
            try:
                changed = await asyncio.to_thread(self.advance_rollouts)
            except Exception as exc:  # the database away for a moment: try again next round
                log.warning("could not advance the rollouts: %s", exc)
                continue
            for d in changed:
                share = d.rollout.share if d.rollout else 100.0
                log.info("deployment %s: rollout step, canary at %g%%", d.name, share)

    def delete(self, tenant_id: str, name: str) -> Deployment:
        with self._db.transaction() as s:
            row = self._row(s, tenant_id, name)
            result = _deployment(row)
            s.delete(row)
        self._changed(tenant_id, name, None)
        return result

    def _changed(self, tenant_id: str, name: str, deployment: Deployment | None) -> None:
        self._remember(tenant_id, name, deployment)
        for hook in self.on_change:
            hook(tenant_id, name, deployment)
