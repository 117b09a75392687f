"""Hot-path lookups that need a blocking load (database, disk), without bursts of blocking loads.

:class:`SingleFlight` runs at most one load per key at a time, in a worker thread; every caller
of that key awaits the same one. :class:`AsyncTTLCache` builds on it: fresh entries are answered
from memory, and a stale entry is still answered at once while one background refresh runs
(stale-while-revalidate), so a TTL expiry never turns into a burst of identical blocking loads on
the request path; a refresh that fails evicts the entry, so the next caller sees the failure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

import anyio

__all__ = ["AsyncTTLCache", "SingleFlight"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """One blocking ``load`` per key at a time, in a worker thread, shared by its callers."""

    def __init__(self) -> None:
        self._loading: dict[K, asyncio.Future[V]] = {}

    def __contains__(self, key: K) -> bool:
        return key in self._loading

    async def run(self, key: K, load: Callable[[], V]) -> V:
        """The result of the load of ``key`` in flight, or of a new one."""
        return await asyncio.shield(self.start(key, load))

    def refresh(self, key: K, load: Callable[[], V]) -> None:
        """Start a background load of ``key`` unless one is in flight (its failure is left to
        whoever awaits the key next, not logged as never retrieved)."""
        if key not in self._loading:
            self.start(key, load).add_done_callback(_retrieve)

    def start(self, key: K, load: Callable[[], V], done: Callable[[V], None] | None = None) -> asyncio.Future[V]:
        """The future of the load of ``key`` in flight, or of a new one; ``done`` sees a new
        load's value before its waiters do."""
        pending = self._loading.get(key)
        if pending is not None:
            return pending
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._loading[key] = future

        async def run() -> None:
            try:
                value = await anyio.to_thread.run_sync(load)
                if done is not None:
                    done(value)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(value)
            finally:
                self._loading.pop(key, None)

        asyncio.ensure_future(run())
        return future


class AsyncTTLCache(Generic[K, V]):
    """``get(key, load)``: ``load`` is blocking and runs in a worker thread."""

    def __init__(self, *, ttl_s: float, max_entries: int = 10_000) -> None:
        self._ttl = ttl_s
        self._max = max_entries
        self._entries: dict[K, tuple[float, V]] = {}
        self._flights: SingleFlight[K, V] = SingleFlight()

    def clear(self) -> None:
        self._entries.clear()

    def discard(self, key: K) -> None:
        self._entries.pop(key, None)

    def peek(self, key: K) -> V | None:
        """The remembered value, fresh or stale, without loading (``None`` when absent)."""
        hit = self._entries.get(key)
        return hit[1] if hit is not None else None

    async def get(self, key: K, load: Callable[[], V]) -> V:
        hit = self.now(key, load)
        if hit is not None:
            return hit
        return await asyncio.shield(self._start(key, load))

    def now(self, key: K, load: Callable[[], V]) -> V | None:
        """:meth:`get` without a coroutine: the remembered value, fresh or stale (then one
        background refresh is started, as ``get`` does); ``None`` when nothing is remembered
        (then await ``get``). Call it on the event loop."""
        hit = self._entries.get(key)
        if hit is None:
            return None
        if time.monotonic() - hit[0] >= self._ttl and key not in self._flights:
            self._start(key, load).add_done_callback(_retrieve)
        return hit[1]

    def _start(self, key: K, load: Callable[[], V]) -> asyncio.Future[V]:
        def remember(value: V) -> None:
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[key] = (time.monotonic(), value)

        def forget_on_failure(future: asyncio.Future[V]) -> None:
            if not future.cancelled() and future.exception() is not None:
                self.discard(key)

        future = self._flights.start(key, load, remember)
        future.add_done_callback(forget_on_failure)
        return future


def _retrieve(future: asyncio.Future[Any]) -> None:
    # A background refresh's failure is reported to the next caller, not logged as unretrieved.
    if not future.cancelled():
        future.exception()
