"""Each API key's requests/second, and each tenant's over all its keys, as this server enforces
them: a token bucket per key (and per tenant with a ``requests_per_second`` quota, under the id
``tenant:<its id>``), running at this server's share of the rate.

A lone server's share of every key is all of it. In a cluster,
:class:`~modelyard.core.cluster_rates.ClusterRates` hands each server a share of each key that
the others also saw requests of, in proportion to what each was asked, so that the key's rate
holds over the cluster rather than on every server (see that module).

A bucket holds one second of its rate (at least one token). A share that changes retunes the
bucket: it keeps the tokens it had (no more than its new capacity), so a change of share is never
a free burst.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

__all__ = ["KeyRates", "TokenBucket"]


@dataclass
class TokenBucket:
    """``rate`` tokens per second, holding at most ``capacity``; ``take`` returns the wait in
    seconds (0 when a token was taken)."""

    rate: float
    capacity: float
    tokens: float
    stamp: float

    @classmethod
    def new(cls, rate: float, now: float | None = None) -> TokenBucket:
        capacity = max(1.0, rate)
        return cls(rate=rate, capacity=capacity, tokens=capacity, stamp=time.monotonic() if now is None else now)

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, now: float | None = None) -> float:
        self._refill(time.monotonic() if now is None else now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def retune(self, rate: float, now: float | None = None) -> None:
        """Run at ``rate`` from ``now`` on, keeping the tokens earned so far (up to the new
        capacity)."""
        self._refill(time.monotonic() if now is None else now)
        self.rate, self.capacity = rate, max(1.0, rate)
        self.tokens = min(self.tokens, self.capacity)


class KeyRates:
    """The buckets of the keys that have a rate, this server's shares of them, and what each key
    was asked here since :meth:`demand` last looked. Thread-safe; :meth:`take` does no I/O."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, TokenBucket] = {}
        self._shares: dict[str, float] = {}  # key id -> this server's share of its rate (absent: 1)
        self._asked: dict[str, int] = {}
        self._since = time.monotonic()

    def take(self, key_id: str, rate: float, now: float | None = None) -> float:
        """One request of key ``key_id`` whose rate is ``rate``: 0 when admitted, else the seconds
        until it would be."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._asked[key_id] = self._asked.get(key_id, 0) + 1
            mine = rate * self._shares.get(key_id, 1.0)
            bucket = self._buckets.get(key_id)
            if bucket is None:
                bucket = self._buckets[key_id] = TokenBucket.new(mine, now)
            elif bucket.rate != mine:  # a new share, or the key's rate was changed
                bucket.retune(mine, now)
            return bucket.take(now)

    def refund(self, key_id: str) -> None:
        """Give back the token a request took (another limit refused it after all)."""
        with self._lock:
            bucket = self._buckets.get(key_id)
            if bucket is not None:
                bucket.tokens = min(bucket.capacity, bucket.tokens + 1.0)

    def demand(self, now: float | None = None) -> dict[str, float]:
        """Each key's requests a second asked of this server (admitted or not) since the last
        call, which starts the next count."""
        now = time.monotonic() if now is None else now
        with self._lock:
            asked, self._asked = self._asked, {}
            elapsed, self._since = now - self._since, now
        return {key: n / elapsed for key, n in asked.items()} if elapsed > 0 else {}

    def share(self, shares: dict[str, float]) -> None:
        """This server's share (0 to 1] of each key's rate from now on; keys left out get all of it."""
        self._shares = dict(shares)

    @property
    def shares(self) -> dict[str, float]:
        return dict(self._shares)
