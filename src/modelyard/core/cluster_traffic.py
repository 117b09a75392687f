"""A deployment's traffic as the whole cluster served it: each server shares what it counted, and
reads what the others did.

Every ``MODELYARD_TRAFFIC_SHARE_S`` seconds (one by default) a server
1. takes, on its event loop, the figures of every deployment it holds traffic state of
   (:meth:`DeploymentTraffic.figures <modelyard.core.deployment_traffic.DeploymentTraffic.figures>`:
   each route's counters and the rollback policy's window, the shadow comparison's counters, the
   canary's answers at its rollout step);
2. in a thread, writes those that changed (and all of them every :data:`HEARTBEAT_S`) to its own
   rows of ``deployment_traffic``, and reads the rows the other servers wrote in the last
   :data:`LIVE_S` seconds (a server that stopped writing is left out of the sum after that);
3. back on the loop, hands each deployment's sum of the others' figures to its traffic state
   (``DeploymentTraffic.peers``), in one assignment, and looks at each canary's windows with them
   (``DeploymentTraffic.review``): a canary whose errors came on other servers trips its rollback
   policy here too, without waiting for an error of its own on this server.

From then on the rollback policy judges the canary's error rate and latency over the cluster's
window, a rollout step waits for the cluster's answers, and ``GET /api/v1/deployments/{name}``
shows the cluster's counters on every server (``stats.servers`` says how many servers' counters
are in them). What the others counted is at most one period and a write old. A server that stops
removes its rows; those of a server that died stop counting after :data:`LIVE_S` and are removed
after :data:`FORGET_S` (``core/cluster.py`` holds these terms).

A lone server writes its rows too (a few small writes a second while it routes deployments) and
reads none back: nothing changes for it. ``MODELYARD_TRAFFIC_SHARE_S=0`` turns sharing off: each
server then judges by its own traffic alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from modelyard.core.cluster import FORGET_S, HEARTBEAT_S, LIVE_S, every, server_id
from modelyard.core.deployment_spec import Route
from modelyard.core.deployment_traffic import DeploymentTraffic, Trip
from modelyard.core.deployments import Deployments
from modelyard.core.traffic_figures import NOBODY, TrafficFigures
from modelyard.store.db import Database
from modelyard.store.tables import DeploymentTrafficRow, utcnow

__all__ = ["ClusterTraffic", "Tripped"]

#: what a server does when a canary tripped its rollback policy on the cluster's figures: the data
#: plane's ``roll_back(traffic, route, trip, tenant_name)``
Tripped = Callable[[DeploymentTraffic, Route, Trip, str], None]

log = logging.getLogger(__name__)


class ClusterTraffic:
    """See the module. :meth:`follow` runs on the server's event loop until cancelled;
    :meth:`exchange` is the database part of one round (blocking)."""

    def __init__(
        self,
        db: Database,
        deployments: Deployments,
        *,
        server: str | None = None,
        on_trip: Tripped | None = None,
        tenant_name: Callable[[str], str] = str,
    ) -> None:
        self._db = db
        self._deployments = deployments
        self.server = server or server_id()
        self._on_trip = on_trip
        self._tenant_name = tenant_name  # a tenant's name by its id (blocking), for the metric's label
        #: deployment id -> (the figures last written, when: monotonic)
        self._written: dict[str, tuple[dict[str, Any], float]] = {}
        self._last_forget = 0.0
        self._unreadable: set[tuple[str, str]] = set()  # (deployment, server) rows already said unreadable

    # -- one round -----------------------------------------------------------------------------
    def mine(self) -> dict[str, dict[str, Any]]:
        """This server's figures of each deployment it counted requests of, as rows (on the
        event loop, which is what changes them)."""
        now = time.monotonic()
        return {t.deployment.id: t.figures(now).to_row() for t in self._deployments.traffic() if t.counted}

    def exchange(self, mine: dict[str, dict[str, Any]], now: float | None = None) -> dict[str, TrafficFigures]:
        """Write this server's figures that changed (every one after :data:`HEARTBEAT_S`), drop
        its rows of deployments it no longer holds, and return the others' live figures summed
        by deployment id (blocking)."""
        now = time.monotonic() if now is None else now
        due = {
            dep: figures for dep, figures in mine.items()
            if dep not in self._written or self._written[dep][0] != figures or now - self._written[dep][1] >= HEARTBEAT_S
        }
        gone = [dep for dep in self._written if dep not in mine]
        wall = utcnow()
        written = []
        with self._db.transaction() as s:
            for dep, figures in due.items():
                if self._write(s, dep, figures, wall):  # (not when the deployment was removed meanwhile)
                    written.append(dep)
            if gone:
                s.execute(delete(DeploymentTrafficRow).where(
                    DeploymentTrafficRow.server_id == self.server, DeploymentTrafficRow.deployment_id.in_(gone)))
            if now - self._last_forget >= LIVE_S:
                self._last_forget = now
                s.execute(delete(DeploymentTrafficRow).where(
                    DeploymentTrafficRow.updated_at < wall - timedelta(seconds=FORGET_S)))
        for dep in written:  # (once they are in: a failed round writes them again next time)
            self._written[dep] = (due[dep], now)
        for dep in gone:
            del self._written[dep]
        with self._db.read() as s:
            rows = s.execute(
                select(DeploymentTrafficRow.deployment_id, DeploymentTrafficRow.server_id, DeploymentTrafficRow.figures)
                .where(DeploymentTrafficRow.server_id != self.server,
                       DeploymentTrafficRow.updated_at >= wall - timedelta(seconds=LIVE_S))
            ).all()
        others: dict[str, list[TrafficFigures]] = defaultdict(list)
        for dep, server, raw in rows:
            figures = TrafficFigures.from_row(raw)
            if figures is not None:
                others[dep].append(figures)
            elif (dep, server) not in self._unreadable:  # said once, not every round
                self._unreadable.add((dep, server))
                log.warning("left out the unreadable traffic figures of deployment %s from server %s", dep, server)
        return {dep: TrafficFigures.total(figures) for dep, figures in others.items()}

    def _write(self, s: Any, deployment_id: str, figures: dict[str, Any], wall: Any) -> bool:
        where = (DeploymentTrafficRow.deployment_id == deployment_id, DeploymentTrafficRow.server_id == self.server)
        if s.execute(update(DeploymentTrafficRow).where(*where).values(figures=figures, updated_at=wall)).rowcount:
            return True
        try:
            with s.begin_nested():
                s.add(DeploymentTrafficRow(
                    deployment_id=deployment_id, server_id=self.server, figures=figures, updated_at=wall))
        except IntegrityError:  # its deployment was deleted since this server counted it
            return False
        return True

    def hand_out(self, others: dict[str, TrafficFigures]) -> list[tuple[DeploymentTraffic, Route, Trip]]:
        """Give each deployment's traffic state the others' sum (on the event loop), and keep the
        sums of deployments this server holds nothing of for their statistics. Returns the
        canaries that tripped their rollback policy on the cluster's figures."""
        held = set()
        tripped = []
        for traffic in self._deployments.traffic():
            held.add(traffic.deployment.id)
            traffic.peers = others.get(traffic.deployment.id, NOBODY)
            found = traffic.review() if traffic.peers is not NOBODY else None
            if found is not None:
                tripped.append((traffic, *found))
        self._deployments.elsewhere = {dep: f for dep, f in others.items() if dep not in held}
        return tripped

    # -- the server's part -----------------------------------------------------------------------
    async def follow(self, every_s: float) -> None:
        """One round every ``every_s`` seconds until cancelled (the server runs it)."""
        await every(every_s, self._round, "the deployments' traffic")

    async def _round(self) -> None:
        others = await asyncio.to_thread(self.exchange, self.mine())
        for traffic, route, trip in self.hand_out(others):
            await self._tripped(traffic, route, trip)

    async def _tripped(self, traffic: DeploymentTraffic, route: Route, trip: Trip) -> None:
        tenant_id = traffic.deployment.tenant_id
        try:
            tenant = await asyncio.to_thread(self._tenant_name, tenant_id)
        except Exception:  # the metric's label only: a failed lookup must not stop the rollback
            tenant = tenant_id
        if self._on_trip is None:
            traffic.rolling_back = False  # nobody to roll it back: look again next round
        else:
            self._on_trip(traffic, route, trip, tenant)

    def leave(self) -> None:
        """Remove this server's rows (it stops): the others stop counting its figures at once."""
        with self._db.transaction() as s:
            s.execute(delete(DeploymentTrafficRow).where(DeploymentTrafficRow.server_id == self.server))
        self._written.clear()
