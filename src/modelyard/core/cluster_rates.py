"""Each API key's requests/second (and each tenant's, over all its keys) held over the cluster,
not on every server: the servers share what they are asked of each key and split its rate in
proportion. A tenant's bucket is one more "key" here, named ``tenant:<its id>``.

Every ``MODELYARD_RATE_SHARE_S`` seconds (one by default) a server
1. takes what each rate-limited key asked of it since the last round, in requests a second,
   admitted or refused (:meth:`KeyRates.demand <modelyard.core.key_rates.KeyRates.demand>`);
2. in a thread, writes that to its row of ``key_demand`` (when it changed, and every
   :data:`HEARTBEAT_S` while it is asked anything; a server asked nothing removes its row), and
   reads the rows the others wrote in the last :data:`LIVE_S` seconds;
3. runs each key that others were asked too at its share of the key's rate
   (:func:`shares`): what it was asked over what the cluster was asked, or, when it was asked
   nothing of the key, an equal part with the servers that were. A key no other server was asked
   keeps all of its rate here.

So a key limited to 100 requests a second gets about 100 a second from the cluster however a load
balancer spreads its requests: two servers asked equally run it at 50 each; one asked 90 a second
and one 30 run it at 75 and 25. The shares follow the requests within a round or two; until
then (a key's first requests, a client that moved to another server) the sum may run over the
rate for a round. A server's buckets hold one second of its share, so the cluster's burst is the
key's one second too.

A lone server writes its row while keys with a rate are asked and reads none back: each key has
all of its rate there, as before. ``MODELYARD_RATE_SHARE_S=0`` turns sharing off: each server
then gives every key all of its rate.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from modelyard.core.cluster import FORGET_S, HEARTBEAT_S, LIVE_S, every, server_id
from modelyard.core.key_rates import KeyRates
from modelyard.store.db import Database
from modelyard.store.tables import KeyDemandRow, utcnow

__all__ = ["ClusterRates", "shares"]

log = logging.getLogger(__name__)

#: the others' demand of one key: (requests a second, summed; how many servers were asked)
Others = dict[str, tuple[float, int]]


def shares(mine: dict[str, float], others: Others) -> dict[str, float]:
    """This server's share of each key's rate, for the keys other servers were asked too: ``mine``
    is what this server was asked of each key, ``others`` what the rest were (requests a second)."""
    out = {}
    for key, (asked, servers) in others.items():
        here = mine.get(key, 0.0)
        if asked > 0:
            out[key] = here / (here + asked) if here > 0 else 1.0 / (servers + 1)
    return out


def _rounded(demand: dict[str, float]) -> dict[str, float]:
    """Three significant figures, so a steady demand is written once a heartbeat."""
    return {key: float(f"{rate:.3g}") for key, rate in demand.items() if rate > 0}


class ClusterRates:
    """See the module. :meth:`follow` runs on the server's event loop until cancelled;
    :meth:`exchange` is the database part of one round (blocking)."""

    def __init__(self, db: Database, rates: KeyRates, *, server: str | None = None) -> None:
        self._db = db
        self._rates = rates
        self.server = server or server_id()
        self._written: tuple[dict[str, float], float] | None = None  # (demand, when: monotonic)
        self._last_forget = -math.inf
        self._unreadable: set[str] = set()  # servers whose row was already said unreadable

    def exchange(self, mine: dict[str, float], now: float | None = None) -> Others:
        """Write this server's demand when it changed (or a heartbeat is due), and return the
        other servers' live demand, summed by key (blocking)."""
        now = time.monotonic() if now is None else now
        demand = _rounded(mine)
        written = self._written
        due = written is None or written[0] != demand or now - written[1] >= HEARTBEAT_S
        wall = utcnow()
        with self._db.transaction() as s:
            if due and demand:
                self._write(s, demand, wall)
            elif due and written is not None:  # asked nothing now: the others need no row of it
                s.execute(delete(KeyDemandRow).where(KeyDemandRow.server_id == self.server))
            if now - self._last_forget >= LIVE_S:
                self._last_forget = now
                s.execute(delete(KeyDemandRow).where(KeyDemandRow.updated_at < wall - timedelta(seconds=FORGET_S)))
        if due:  # (once it is in: a failed round writes it again next time)
            self._written = (demand, now) if demand else None
        with self._db.read() as s:
            rows = s.execute(
                select(KeyDemandRow.server_id, KeyDemandRow.demand)
                .where(KeyDemandRow.server_id != self.server,
                       KeyDemandRow.updated_at >= wall - timedelta(seconds=LIVE_S))
            ).all()
        others: dict[str, list[float]] = {}
        for server, raw in rows:
            demand_there = _readable(raw)
            if demand_there is None:
                if server not in self._unreadable:  # said once, not every round
                    self._unreadable.add(server)
                    log.warning("left out the unreadable key demand of server %s", server)
                continue
            for key, rate in demand_there.items():
                others.setdefault(key, []).append(rate)
        return {key: (sum(rates), len(rates)) for key, rates in others.items()}

    def _write(self, s: Any, demand: dict[str, float], wall: Any) -> None:
        mine = KeyDemandRow.server_id == self.server
        if s.execute(update(KeyDemandRow).where(mine).values(demand=demand, updated_at=wall)).rowcount:
            return
        try:
            with s.begin_nested():
                s.add(KeyDemandRow(server_id=self.server, demand=demand, updated_at=wall))
        except IntegrityError:  # written meanwhile by a round that had failed after its commit
            s.execute(update(KeyDemandRow).where(mine).values(demand=demand, updated_at=wall))

    def hand_out(self, mine: dict[str, float], others: Others) -> None:
        """Run each key at this server's share of its rate from now on."""
        self._rates.share(shares(mine, others))

    async def follow(self, every_s: float) -> None:
        """One round every ``every_s`` seconds until cancelled (the server runs it)."""
        await every(every_s, self._round, "the keys' demand")

    async def _round(self) -> None:
        mine = self._rates.demand()
        others = await asyncio.to_thread(self.exchange, mine)
        self.hand_out(mine, others)

    def leave(self) -> None:
        """Remove this server's row (it stops): the others split the keys' rates without it."""
        with self._db.transaction() as s:
            s.execute(delete(KeyDemandRow).where(KeyDemandRow.server_id == self.server))
        self._written = None


def _readable(raw: Any) -> dict[str, float] | None:
    """A row's demand, or ``None`` when it is not a map of key ids to positive rates."""
    if not isinstance(raw, dict):
        return None
    demand = {}
    for key, rate in raw.items():
        if not isinstance(key, str) or isinstance(rate, bool) or not isinstance(rate, (int, float)):
            return None
        if not math.isfinite(rate) or rate < 0:
            return None
        if rate > 0:
            demand[key] = float(rate)
    return demand
