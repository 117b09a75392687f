"""What the servers of a cluster (several server processes on one database) share by rounds: each
writes what it counted to rows of its own and reads the others'.

The rounds' common terms: a server's name, how often a server rewrites rows that did not change,
how long another server's rows count, when a dead server's rows are removed, and the loop that
runs one round after another. ``core/cluster_traffic.py`` (deployments' traffic) and
``core/cluster_rates.py`` (keys' requests/second) share this way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable

__all__ = ["server_id", "every", "HEARTBEAT_S", "LIVE_S", "FORGET_S", "FAILURE_LOG_S"]

log = logging.getLogger(__name__)

#: a server rewrites its rows this often even when they did not change (they are live)
HEARTBEAT_S = 5.0
#: another server's rows count while they were written this recently
LIVE_S = 15.0
#: rows not written for this long (their server died) are removed by whichever server sees them
FORGET_S = 600.0


def server_id() -> str:
    """A name for this server process, unique in its cluster: host, process and a random part."""
    return f"{socket.gethostname()[:100]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


#: while rounds keep failing, a failure is logged at most this often
FAILURE_LOG_S = 60.0


async def every(period_s: float, one_round: Callable[[], Awaitable[None]], what: str) -> None:
    """``one_round()`` every ``period_s`` seconds until cancelled. A round that fails (the
    database away for a moment) is logged, and the next one tries again: while they keep
    failing, once every :data:`FAILURE_LOG_S` (not every round), and once when one succeeds."""
    failing_since = logged_at = None
    while True:
        await asyncio.sleep(period_s)
        try:
            await one_round()
        except Exception as exc:
            now = time.monotonic()
            if failing_since is None:
                failing_since = now
            if logged_at is None or now - logged_at >= FAILURE_LOG_S:
                logged_at = now
                log.warning("could not share %s with the cluster (failing for %.0f s; trying every %g s): %s",
                            what, now - failing_since, period_s, exc)
            continue
        if failing_since is not None:
            log.warning("sharing %s with the cluster again, after %.0f s", what, time.monotonic() - failing_since)
            failing_since = logged_at = None
