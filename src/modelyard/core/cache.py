"""A small async cache for hot-path lookups that need a blocking load (database, disk).

Fresh entries are answered from memory. A stale entry is still answered at once while one
background refresh runs (stale-while-revalidate), so a TTL expiry never turns into a burst of
identical blocking loads on the request path; a refresh that fails evicts the entry, so the next
caller sees the failure. Concurrent misses of one key share a single load (single flight).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import anyio

__all__ = ["AsyncTTLCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class AsyncTTLCache(Generic[K, V]):
    """``get(key, load)``: ``load`` is blocking and runs in a worker thread."""

    def __init__(self, *, ttl_s: float, max_entries: int = 10_000) -> None:
        self._ttl = ttl_s
        self._max = max_entries
        self._entries: dict[K, tuple[float, V]] = {}
        self._loading: dict[K, asyncio.Future[V]] = {}

    def clear(self) -> None:
        self._entries.clear()

    def discard(self, key: K) -> None:
        self._entries.pop(key, None)

    async def get(self, key: K, load: Callable[[], V]) -> V:
        hit = self._entries.get(key)
        if hit is not None:
            if time.monotonic() - hit[0] >= self._ttl and key not in self._loading:
                self._start(key, load).add_done_callback(_retrieve)
            return hit[1]
        pending = self._loading.get(key)
        if pending is None:
            pending = self._start(key, load)
        return await asyncio.shield(pending)

    def _start(self, key: K, load: Callable[[], V]) -> asyncio.Future[V]:
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._loading[key] = future

        async def run() -> None:
            try:
                value = await anyio.to_thread.run_sync(load)
            except BaseException as exc:
                self._entries.pop(key, None)
                future.set_exception(exc)
            else:
                if len(self._entries) >= self._max:
                    self._entries.clear()
                self._entries[key] = (time.monotonic(), value)
                future.set_result(value)
            finally:
                self._loading.pop(key, None)

        asyncio.ensure_future(run())
        return future


def _retrieve(future: asyncio.Future[object]) -> None:
    # A background refresh's failure is reported to the next caller, not logged as unretrieved.
    if not future.cancelled():
        future.exception()
