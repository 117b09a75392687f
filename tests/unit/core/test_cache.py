"""AsyncTTLCache: single flight on a miss, stale answers while one refresh runs, failures evict."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from modelyard.core.cache import AsyncTTLCache


async def test_concurrent_misses_share_one_load() -> None:
    cache: AsyncTTLCache[str, int] = AsyncTTLCache(ttl_s=60)
    calls = []

    def load() -> int:
        calls.append(threading.get_ident())
        time.sleep(0.05)
        return 7

    results = await asyncio.gather(*(cache.get("k", load) for _ in range(20)))
    assert results == [7] * 20
    assert len(calls) == 1


async def test_stale_entry_is_served_while_one_refresh_runs() -> None:
    cache: AsyncTTLCache[str, int] = AsyncTTLCache(ttl_s=0.01)
    values = iter([1, 2])
    started = threading.Event()
    release = threading.Event()

    def load() -> int:
        value = next(values)
        if value == 2:
            started.set()
            release.wait(5)
        return value

    assert await cache.get("k", load) == 1
    await asyncio.sleep(0.02)
    stale = await asyncio.gather(*(cache.get("k", load) for _ in range(10)))
    assert stale == [1] * 10  # answered from memory, no caller waits for the refresh
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
    release.set()
    for _ in range(100):
        if await cache.get("k", load) == 2:
            break
        await asyncio.sleep(0.01)
    assert await cache.get("k", load) == 2


async def test_a_failed_refresh_evicts_so_the_next_caller_sees_the_error() -> None:
    cache: AsyncTTLCache[str, int] = AsyncTTLCache(ttl_s=0.01)
    fail = False

    def load() -> int:
        if fail:
            raise PermissionError("revoked")
        return 1

    assert await cache.get("k", load) == 1
    fail = True
    await asyncio.sleep(0.02)
    assert await cache.get("k", load) == 1  # stale answer; the refresh fails in the background
    await asyncio.sleep(0.1)
    with pytest.raises(PermissionError):
        await cache.get("k", load)


async def test_now_answers_from_memory_and_refreshes_a_stale_entry_in_the_background() -> None:
    """``now`` is the coroutine-free path of the hot loop: what ``get`` answers from memory
    (fresh, or stale with one background refresh started), else None (the caller then awaits
    ``get``)."""
    cache: AsyncTTLCache[str, int] = AsyncTTLCache(ttl_s=0.05)
    loads: list[int] = []

    def load() -> int:
        loads.append(1)
        return len(loads)

    assert cache.now("k", load) is None and loads == [], "absent: nothing loaded"
    assert await cache.get("k", load) == 1
    assert cache.now("k", load) == 1 and len(loads) == 1, "fresh: no load"
    await asyncio.sleep(0.06)
    assert cache.now("k", load) == 1, "stale: still answered"
    assert cache.now("k", load) == 1, "one refresh at a time"
    await asyncio.sleep(0.1)
    assert loads == [1, 1] and cache.now("k", load) == 2, "refreshed in the background"
    assert cache.peek("k") == 2
