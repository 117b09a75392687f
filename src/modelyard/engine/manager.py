"""The model manager: loads versions on demand, shares concurrent loads, runs inference off the
event loop, and keeps loaded versions within a memory budget (least recently used first out,
never one with requests in flight, never a pinned one)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.errors import ModelYardError, Unavailable
from modelyard.metrics import Metrics
from modelyard.runtimes.base import Runtime, RuntimeOptions, load_runtime

__all__ = ["ModelManager", "LoadedModel", "ModelSource"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelSource:
    """What the manager needs to load one version: identity, format, a path and metadata."""

    key: str
    name: str
    version: str
    format: str
    path: Callable[[], Path]
    config: dict[str, Any] = field(default_factory=dict)
    size_hint: int = 0


@dataclass
class LoadedModel:
    source: ModelSource
    runtime: Runtime
    memory_bytes: int
    load_seconds: float
    in_flight: int = 0
    pinned: bool = False
    last_used: float = field(default_factory=time.monotonic)


class ModelManager:
    """Holds loaded runtimes keyed by version identity."""

    def __init__(
        self,
        *,
        options: RuntimeOptions,
        memory_budget_bytes: int,
        metrics: Metrics,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self._options = options
        self._budget = memory_budget_bytes
        self._metrics = metrics
        self._executor = executor or ThreadPoolExecutor(max_workers=4, thread_name_prefix="modelyard-infer")
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, asyncio.Future[LoadedModel]] = {}
        self._lock = asyncio.Lock()

    # -- state -----------------------------------------------------------------------------
    @property
    def memory_in_use(self) -> int:
        return sum(m.memory_bytes for m in self._loaded.values())

    def is_loaded(self, key: str) -> bool:
        return key in self._loaded

    def loaded(self) -> list[LoadedModel]:
        return list(self._loaded.values())

    # -- loading ---------------------------------------------------------------------------
    async def acquire(self, source: ModelSource) -> LoadedModel:
        """The loaded model for ``source``, loading it first if needed.

        Concurrent first requests share one load; a failed load is not cached.
        """
        model = self._loaded.get(source.key)
        if model is not None:
            self._loaded.move_to_end(source.key)
            model.last_used = time.monotonic()
            return model
        fut = self._loading.get(source.key)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._loading[source.key] = fut
            try:
                model = await self._load(source)
            except BaseException as exc:
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: waiters get it, nobody logs it twice
                raise
            finally:
                self._loading.pop(source.key, None)
            fut.set_result(model)
            return model
        return await asyncio.shield(fut)

    async def _load(self, source: ModelSource) -> LoadedModel:
        loop = asyncio.get_running_loop()
        await self._make_room(source.size_hint * 2)
        started = time.perf_counter()

        def load() -> Runtime:
            return load_runtime(source.format, source.path(), self._options, source.config)

        runtime = await loop.run_in_executor(self._executor, load)
        elapsed = time.perf_counter() - started
        model = LoadedModel(source, runtime, runtime.memory_bytes(), elapsed)
        async with self._lock:
            self._loaded[source.key] = model
        self._metrics.load_seconds.labels(source.name, source.version).observe(elapsed)
        self._metrics.loads.labels(source.name, source.version).inc()
        self._update_gauges()
        log.info("loaded %s:%s in %.3fs", source.name, source.version, elapsed)
        await self._make_room(0)
        return model

    async def _make_room(self, incoming: int) -> None:
        """Unload least recently used idle, unpinned versions until ``incoming`` fits."""
        async with self._lock:
            while self.memory_in_use + incoming > self._budget:
                victim = next(
                    (m for m in self._loaded.values() if m.in_flight == 0 and not m.pinned), None
                )
                if victim is None:
                    if incoming and self.memory_in_use + incoming > self._budget and not self._loaded:
                        break
                    if incoming:
                        raise Unavailable(
                            "memory budget exhausted by busy or pinned models; retry shortly",
                            retry_after=1.0,
                        )
                    break
                self._drop(victim.source.key, reason="evicted")

    def _drop(self, key: str, *, reason: str) -> None:
        model = self._loaded.pop(key, None)
        if model is None:
            return
        self._metrics.unloads.labels(model.source.name, model.source.version, reason).inc()
        try:
            model.runtime.close()
        except Exception:  # a runtime that fails to close must not break unloading
            log.exception("closing %s failed", key)
        self._update_gauges()

    def unload(self, key: str) -> None:
        """Forget a loaded version (after a delete). In-flight calls keep their runtime."""
        self._drop(key, reason="deleted")

    def pin(self, key: str, pinned: bool = True) -> None:
        if key in self._loaded:
            self._loaded[key].pinned = pinned

    def _update_gauges(self) -> None:
        self._metrics.loaded_models.set(len(self._loaded))
        self._metrics.memory_bytes.set(self.memory_in_use)

    # -- inference -------------------------------------------------------------------------
    async def predict(
        self, source: ModelSource, inputs: dict[str, np.ndarray], output_names: list[str] | None
    ) -> dict[str, np.ndarray]:
        model = await self.acquire(source)
        model.in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, model.runtime.predict, inputs, output_names)
        except ModelYardError:
            raise
        finally:
            model.in_flight -= 1
            model.last_used = time.monotonic()

    async def close(self) -> None:
        for key in list(self._loaded):
            self._drop(key, reason="shutdown")
        self._executor.shutdown(wait=False, cancel_futures=True)
