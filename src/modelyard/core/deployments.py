"""Deployments: named endpoints that route to model versions by weight, mirror to a shadow, and
carry their own serving settings (batching, instances, isolation, timeout, queue limit).

A deployment is served at ``/v2/models/{deployment}/...`` and over gRPC under its name. Its first
route is the *primary* (the stable version); any other route is a *canary*. ``rollback`` puts all
traffic back on the primary; ``promote`` makes one route the only one. With a rollback policy the
data plane rolls a canary back by itself when its error rate, or the 99th percentile of its
latency, over the window passes the policy's limit.

Every change bumps ``revision`` and replaces the in-memory routing table atomically: a request
already routed keeps its version (and its batcher), so no change drops a request in flight.
Queries are scoped by tenant here; rows never leave this module. What a deployment is, as values,
is ``core/deployment_spec.py``; its routing table and counters, ``core/deployment_traffic.py``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from modelyard.core.deployment_spec import Deployment, Route, Shadow, parse_rollback, parse_routes, parse_shadow
from modelyard.core.deployment_traffic import DeploymentTraffic
from modelyard.core.names import check_name
from modelyard.core.pages import Page, PageRequest
from modelyard.core.registry import Registry
from modelyard.core.rollout import Rollout, parse_rollout
from modelyard.core.traffic_figures import NOBODY, TrafficFigures
from modelyard.engine.manager import parse_serving
from modelyard.errors import Conflict, DeploymentNotFound, ValidationFailed
from modelyard.store.db import Database
from modelyard.store.tables import DeploymentRow, utcnow

__all__ = ["Deployments", "MAX_EVENTS"]

#: the newest events kept on a deployment (changes, rollbacks)
MAX_EVENTS = 50
log = logging.getLogger(__name__)


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
