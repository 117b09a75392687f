"""The model manager: loads versions on demand, shares concurrent loads, runs inference through a
per-version dynamic batcher off the event loop, and keeps loaded versions within a memory budget
(least recently used first out, never one with requests in flight, never a pinned one).

Serving settings (:class:`ServingOptions`) come in layers: server defaults, then the model's
``serving`` tag, the version's ``serving`` tag and ``config["serving"]``, then a deployment's
settings (:func:`parse_serving` checks each layer when it is written). Each distinct set of
batching settings of a loaded version gets its own :class:`~modelyard.engine.batcher.DynamicBatcher`
(so two deployments of one version can batch differently); all of them share the one runtime.

Isolation: a source with ``isolated=True`` loads in a worker process
(:class:`~modelyard.engine.isolation.ProcessRuntime`) under its own load key, so one version may be
loaded both ways at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.engine.batcher import DynamicBatcher, Queued, batching_default
from modelyard.engine.queue_policy import check_queue_policy
from modelyard.errors import Unavailable, ValidationFailed
from modelyard.metrics import Metrics
from modelyard.runtimes.base import Runtime, RuntimeOptions, computes_in_caller, load_runtime
from modelyard.tensors import TensorSpec, numpy_dtype

__all__ = [
    "ModelManager",
    "LoadedModel",
    "ModelSource",
    "ServingOptions",
    "parse_serving",
    "RuntimeLoader",
    "ISOLATION_MODES",
]

log = logging.getLogger(__name__)

ISOLATION_MODES = ("thread", "process")
#: the longest ``idle_unload_s`` (30 days)
IDLE_UNLOAD_MAX_S = 30 * 86_400
#: how often loaded versions are looked at for idleness: a quarter of the shortest idle time set,
#: within these bounds (a version goes at most that long after its time; a look is one pass over
#: the loaded versions, on the loop)
_IDLE_SWEEP_S = (0.05, 1.0)

#: ``loader(format, path, options, metadata) -> Runtime``; :func:`load_runtime` by default.
RuntimeLoader = Callable[[str, Path, RuntimeOptions, dict[str, Any]], Runtime]


@dataclass(frozen=True, slots=True)
class ServingOptions:
    """How one version is served: batching, executors, isolation, queue limit and timeout.

    ``batching=None`` means "on when every input's first dimension is dynamic". ``instances`` is
    the number of batches of the version that compute at once; ONNX Runtime gets
    ``cores // instances`` intra-op threads so the instances do not oversubscribe the cores.
    """

    batching: bool | None = None
    max_batch_size: int = 64
    max_queue_delay_ms: float = 2.0
    max_queue_size: int = 256
    instances: int = 1
    isolation: str = "thread"
    timeout_s: float | None = None
    #: answers remembered by their request (``core/response_cache.py``): deterministic models only
    response_cache: bool = False
    #: the priority levels requests may ask for, 1 (the highest) to this (Triton's); 0: none
    #: declared, any whole number is a level (``core/scheduling.py``)
    priority_levels: int = 0
    #: with levels: the level of a request that asks for none, 0 or one past them (0, or one past
    #: the levels that another layer of settings declares: the lowest)
    default_priority_level: int = 0
    #: per priority level, its own queue bound and deadline (``engine/queue_policy.py``)
    priority_queue_policy: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, hash=False)
    #: unload the version after this many seconds without a request (0: never); a pinned one stays
    idle_unload_s: float = 0.0

    def merged(self, overrides: Mapping[str, Any] | None) -> ServingOptions:
        """A copy with ``overrides`` applied; :class:`ValidationFailed` names a bad field."""
        if not overrides:
            return self
        known = {f.name for f in fields(self)}
        changes: dict[str, Any] = {}
        for name, value in overrides.items():
            if name not in known:
                raise ValidationFailed(
                    f"unknown serving setting {name!r}; expected one of {', '.join(sorted(known))}",
                    details={"field": name},
                )
            if value is not None:
                changes[name] = value
        result = replace(self, **changes)
        result.check()
        return result

    def check(self) -> None:
        """Raise :class:`ValidationFailed` when a setting is out of range."""
        problems = {
            "batching": self.batching is not None and not isinstance(self.batching, bool),
            "max_batch_size": not isinstance(self.max_batch_size, int) or not 1 <= self.max_batch_size <= 4096,
            "max_queue_delay_ms": not isinstance(self.max_queue_delay_ms, (int, float))
            or not 0 <= self.max_queue_delay_ms <= 10_000,
            "max_queue_size": not isinstance(self.max_queue_size, int) or not 1 <= self.max_queue_size <= 1_000_000,
            "instances": not isinstance(self.instances, int) or not 1 <= self.instances <= 64,
            "isolation": self.isolation not in ISOLATION_MODES,
            "timeout_s": self.timeout_s is not None
            and (not isinstance(self.timeout_s, (int, float)) or not 0 < self.timeout_s <= 3600),
            "response_cache": not isinstance(self.response_cache, bool),
            "priority_levels": type(self.priority_levels) is not int or not 0 <= self.priority_levels < 2**64,
            "default_priority_level": type(self.default_priority_level) is not int
            or not 0 <= self.default_priority_level < 2**64,
            "idle_unload_s": isinstance(self.idle_unload_s, bool) or not isinstance(self.idle_unload_s, (int, float))
            or not 0 <= self.idle_unload_s <= IDLE_UNLOAD_MAX_S,
        }
        for name, bad in problems.items():
            if bad:
                raise ValidationFailed(f"serving setting {name!r} is out of range", details={"field": name})
        if self.priority_queue_policy or not isinstance(self.priority_queue_policy, Mapping):
            check_queue_policy(self.priority_queue_policy)

    @property
    def default_priority(self) -> int:
        """The priority of a request that asks for none: the default level where levels are
        declared (the lowest unless one of them is set), else 0 (after every level)."""
        levels, default = self.priority_levels, self.default_priority_level
        return default if 0 < default <= levels else levels

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def parse_serving(raw: Any, where: str = "serving") -> dict[str, Any]:
    """Validate serving overrides (the fields of :class:`ServingOptions`) and return them
    without the ``None`` ones; ``where`` names the field they came in, for the error."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValidationFailed(f"{where} must be an object of serving settings", details={"field": where})
    ServingOptions().merged(raw)  # raises ValidationFailed naming the bad setting
    levels, default = raw.get("priority_levels"), raw.get("default_priority_level")
    if levels and raw.get("priority_queue_policy"):  # its levels must be among those beside it
        check_queue_policy(raw["priority_queue_policy"], levels)
    if levels is not None and default is not None and not default <= levels:
        # (within one layer; across layers a default past the levels is the lowest level)
        raise ValidationFailed(
            f"{where}.default_priority_level must be one of the priority_levels, 1 to {levels} "
            f"(0: the lowest), not {default}",
            details={"field": "default_priority_level"},
        )
    return {k: v for k, v in raw.items() if v is not None}


@dataclass(frozen=True, slots=True)
class ModelSource:
    """What the manager needs to load one version: identity, format, a path and metadata.

    ``inputs`` (the signature) decides the batching default; ``isolated`` loads it in a worker
    process under a separate load key.
    """

    key: str
    name: str
    version: str
    format: str
    path: Callable[[], Path]
    config: dict[str, Any] = field(default_factory=dict)
    size_hint: int = 0
    inputs: tuple[TensorSpec, ...] = ()
    isolated: bool = False
    #: the tenant's name, for metric labels ("" for a built-in model every tenant shares)
    tenant: str = ""

    @property
    def load_key(self) -> str:
        return f"{self.key}@process" if self.isolated else self.key


class _Observer:
    """Batch metrics of one version, with the labelled children looked up once."""

    __slots__ = ("_batch", "_wait", "_compute", "_reject", "_depth", "_statistics")

    def __init__(self, metrics: Metrics, source: ModelSource) -> None:
        labels = (source.tenant, source.name, source.version)
        self._batch = metrics.batch_size.labels(*labels)
        self._wait = metrics.queue_wait.labels(*labels)
        self._compute = metrics.compute.labels(*labels)
        self._reject = metrics.rejections.labels(*labels, "queue_full")
        self._depth = metrics.queue_depth.labels(*labels)
        self._statistics = metrics.version_statistics(source.key, *labels)

    def on_batch(
        self, size: int, requests: int, queue_wait_s: float, queue_total_s: float, compute_s: float
    ) -> None:
        self._batch.observe(size)
        self._wait.observe(queue_wait_s)
        self._compute.observe(compute_s)
        self._statistics.on_batch(size, requests, queue_total_s, compute_s)

    def on_reject(self, n: int = 1) -> None:
        self._reject.inc(n)

    def watch(self, model: LoadedModel) -> None:
        """Make the queue-depth gauge read ``model``'s batchers when scraped (nothing is pushed
        per request). Weakly: an unloaded version's runtime is not kept alive by its gauge."""
        ref = weakref.ref(model)

        def depth() -> int:
            m = ref()
            return 0 if m is None or m.retired else sum(b.queue_depth for b in list(m.batchers.values()))

        self._depth.set_function(depth)


_BatchKey = tuple[int, float, int, int]


@dataclass
class LoadedModel:
    """A loaded version: its runtime, its batchers, and what the budget needs to know."""

    source: ModelSource
    runtime: Runtime
    memory_bytes: int
    load_seconds: float
    in_flight: int = 0
    pinned: bool = False
    last_used: float = field(default_factory=time.monotonic)
    batchers: dict[_BatchKey, DynamicBatcher] = field(default_factory=dict)
    observer: _Observer | None = None
    retired: bool = False
    #: batches faster than this compute on the event loop (0 for a worker process's runtime)
    inline_below_s: float = 0.0
    #: unloaded after this long without a request (0: never): the settings of its latest request
    #: (or of its load)
    idle_unload_s: float = 0.0
    #: the options last asked for and their batcher: a version's requests come with the same
    #: (immutable) options object, so most requests find their batcher here
    _last: tuple[ServingOptions, DynamicBatcher] | None = field(default=None, init=False, repr=False)

    def batcher(self, options: ServingOptions) -> DynamicBatcher:
        """The batcher for ``options`` (made on first use)."""
        last = self._last
        if last is not None and last[0] is options:
            return last[1]
        batching = options.batching
        if batching is None:
            batching = batching_default(list(self.source.inputs or self.runtime.inputs))
        key = (
            options.max_batch_size if batching else 1,
            float(options.max_queue_delay_ms) if batching else 0.0,
            options.max_queue_size,
            options.instances,
        )
        self.idle_unload_s = options.idle_unload_s
        batcher = self.batchers.get(key)
        if batcher is None:
            batcher = DynamicBatcher(
                predict=self.runtime.predict,
                max_batch_size=key[0],
                max_queue_delay_ms=key[1],
                max_queue_size=key[2],
                instances=key[3],
                observer=self.observer,
                inline_below_s=self.inline_below_s,
            )
            self.batchers[key] = batcher
        self._last = (options, batcher)
        return batcher


def _warm_up(runtime: Runtime) -> None:
    """Run one row of zeros through the model so the first request does not pay for lazy init."""
    arrays: dict[str, np.ndarray] = {}
    for spec in runtime.inputs:
        if spec.datatype == "BYTES" or not spec.shape:
            return
        shape = tuple(1 if d < 0 else d for d in spec.shape)
        arrays[spec.name] = np.zeros(shape, dtype=numpy_dtype(spec.datatype))
    try:
        runtime.predict(arrays, None)
    except Exception as exc:  # a model may legitimately refuse zeros; warm-up is best effort
        log.debug("warm-up skipped: %s", exc)


class ModelManager:
    """Holds loaded runtimes keyed by load key; see the module docstring.

    ``cores`` is what ONNX Runtime thread counts are derived from; ``defaults`` the server-wide
    :class:`ServingOptions`; ``max_in_flight`` the server-wide bound on queued plus computing
    requests (beyond it the server is saturated: 503 with ``Retry-After``). ``loader`` builds a
    runtime (process isolation wraps it); ``warm_up`` runs one zero row after each load;
    ``inline_below_s`` lets batches of in-process runtimes that compute faster than that run on
    the event loop (see the batcher).
    """

    def __init__(
        self,
        *,
        options: RuntimeOptions,
        memory_budget_bytes: int,
        metrics: Metrics,
        cores: int | None = None,
        defaults: ServingOptions | None = None,
        max_in_flight: int = 4096,
        drain_timeout_s: float = 20.0,
        loader: RuntimeLoader = load_runtime,
        warm_up: bool = True,
        executor: Any = None,
        inline_below_s: float = 0.0,
    ) -> None:
        self._options = options
        self._cores = cores or max(1, options.intra_op_threads)
        self._budget = memory_budget_bytes
        metrics.memory_budget.set(memory_budget_bytes)
        self._metrics = metrics
        self._defaults = defaults or ServingOptions()
        self._max_in_flight = max_in_flight
        self._drain_s = drain_timeout_s
        self._loader = loader
        self._warm_up = warm_up
        self._executor = executor  # None: the loop's default executor loads models
        self._inline_below_s = inline_below_s
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, asyncio.Future[LoadedModel]] = {}
        self._generation: dict[str, int] = {}
        self._pinned: set[str] = set()
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._total_in_flight = 0
        self._memory = 0
        self._trimming = False
        self._idle_timer: asyncio.TimerHandle | None = None
        self._saturated = metrics.rejections.labels("*", "*", "*", "saturated")

    # -- state -----------------------------------------------------------------------------
    @property
    def defaults(self) -> ServingOptions:
        return self._defaults

    @property
    def memory_budget(self) -> int:
        return self._budget

    @property
    def memory_in_use(self) -> int:
        return self._memory

    @property
    def in_flight(self) -> int:
        """Requests queued or computing in every version."""
        return self._total_in_flight

    def is_loaded(self, key: str) -> bool:
        """Whether a version (by version key or load key) is loaded in any isolation mode."""
        return any(m.source.key == key or lk == key for lk, m in self._loaded.items())

    def loaded(self) -> list[LoadedModel]:
        return list(self._loaded.values())

    def loaded_by_version(self) -> dict[str, list[LoadedModel]]:
        """The loaded models by version key (a version may be loaded in each isolation mode)."""
        by_version: dict[str, list[LoadedModel]] = {}
        for model in self._loaded.values():
            by_version.setdefault(model.source.key, []).append(model)
        return by_version

    def runtime_options(self, instances: int) -> RuntimeOptions:
        """Thread settings for a version served by ``instances`` executors on ``cores`` cores."""
        return replace(
            self._options, intra_op_threads=max(1, self._cores // max(1, instances)), inter_op_threads=1
        )

    # -- loading ---------------------------------------------------------------------------
    async def acquire(self, source: ModelSource, options: ServingOptions | None = None) -> LoadedModel:
        """The loaded model for ``source``, loading (and warming) it first if needed.

        Concurrent first requests share one load; a failed load is not cached.
        """
        key = source.load_key
        model = self._touch(key)
        if model is not None:
            return model
        self._loop = asyncio.get_running_loop()
        fut = self._loading.get(key)
        if fut is None:
            fut = self._loop.create_future()
            self._loading[key] = fut
            try:
                model = await self._load(source, options or self._defaults)
            except BaseException as exc:
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: waiters get it, nobody logs it twice
                raise
            finally:
                self._loading.pop(key, None)
            fut.set_result(model)
            return model
        return await asyncio.shield(fut)

    def _touch(self, key: str) -> LoadedModel | None:
        """The loaded model of ``key``, marked most recently used; ``None`` when not loaded."""
        model = self._loaded.get(key)
        if model is not None:
            self._loaded.move_to_end(key)
            model.last_used = time.monotonic()
        return model

    async def _load(self, source: ModelSource, options: ServingOptions) -> LoadedModel:
        loop = asyncio.get_running_loop()
        generation = self._generation.get(source.key, 0)
        await self._make_room(source.size_hint * 2)
        started = time.perf_counter()
        runtime_options = self.runtime_options(options.instances)

        def load() -> Runtime:
            path = source.path()
            runtime: Runtime
            if source.isolated:
                from modelyard.engine.isolation import ProcessRuntime

                runtime = ProcessRuntime(
                    fmt=source.format, path=path, options=runtime_options, metadata=source.config,
                    worker_threads=options.instances,
                    on_restart=self._metrics.worker_restarts.labels(source.tenant, source.name, source.version).inc,
                )
            else:
                runtime = self._loader(source.format, path, runtime_options, source.config)
            if self._warm_up:
                _warm_up(runtime)
            return runtime

        runtime = await loop.run_in_executor(self._executor, load)
        elapsed = time.perf_counter() - started
        if self._generation.get(source.key, 0) != generation:
            await loop.run_in_executor(self._executor, runtime.close)
            raise Unavailable("the model version was removed while it was loading", retry_after=1.0)
        model = LoadedModel(
            source, runtime, runtime.memory_bytes(), elapsed,
            pinned=source.key in self._pinned or source.load_key in self._pinned,
            observer=_Observer(self._metrics, source),
            inline_below_s=self._inline_below_s if computes_in_caller(runtime) else 0.0,
            idle_unload_s=options.idle_unload_s,
        )
        if model.observer is not None:
            model.observer.watch(model)
        async with self._lock:
            self._loaded[source.load_key] = model
            self._memory += model.memory_bytes
        self._metrics.load_seconds.labels(source.tenant, source.name, source.version).observe(elapsed)
        self._metrics.loads.labels(source.tenant, source.name, source.version).inc()
        self._update_gauges()
        log.info("loaded %s:%s in %.3fs", source.name, source.version, elapsed)
        self._arm_idle_sweep(loop)  # (again: this version's idle time may be the shortest)
        await self._make_room(0, keep=source.load_key)
        return model

    def _arm_idle_sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Look for idle versions again in a while, as long as any version is loaded: a quarter of
        the shortest ``idle_unload_s`` among them (a version's setting may change with its next
        request, so the sweep runs even while none has one)."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        shortest = min((m.idle_unload_s for m in self._loaded.values() if m.idle_unload_s > 0), default=math.inf)
        low, high = _IDLE_SWEEP_S
        self._idle_timer = loop.call_later(min(high, max(low, shortest / 4)), self._sweep_idle, loop)

    def _sweep_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        """Unload every version idle for its ``idle_unload_s``: nothing queued or computing, not
        pinned, no request since. Runs on the loop between requests, so a request either found the
        version (and counts in flight) or finds it gone and loads it again."""
        self._idle_timer = None
        now = time.monotonic()
        for load_key, model in list(self._loaded.items()):
            idle_s = model.idle_unload_s
            if idle_s > 0 and model.in_flight == 0 and not model.pinned and now - model.last_used >= idle_s:
                log.info("unloading %s:%s: no request for %.0f s", model.source.name, model.source.version, idle_s)
                self._drop(load_key, reason="idle")
        if self._loaded:
            self._arm_idle_sweep(loop)

    async def _make_room(self, incoming: int, *, keep: str | None = None) -> None:
        """Unload least recently used idle, unpinned versions until ``incoming`` fits."""
        async with self._lock:
            while self.memory_in_use + incoming > self._budget:
                victim = next(
                    (
                        m for k, m in self._loaded.items()
                        if m.in_flight == 0 and not m.pinned and k != keep
                    ),
                    None,
                )
                if victim is None:
                    if incoming and self._loaded and any(not m.pinned for m in self._loaded.values()):
                        raise Unavailable(
                            "memory budget exhausted by busy or pinned models; retry shortly",
                            retry_after=1.0,
                        )
                    break  # nothing can go: serve over budget rather than refuse a lone model
                self._drop(victim.source.load_key, reason="evicted")

    def _drop(self, load_key: str, *, reason: str) -> None:
        model = self._loaded.pop(load_key, None)
        if model is None:
            return
        model.retired = True
        self._memory -= model.memory_bytes
        self._metrics.unloads.labels(model.source.tenant, model.source.name, model.source.version, reason).inc()
        self._update_gauges()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._close_runtime(model)
            return
        task = loop.create_task(self._retire(model))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, model: LoadedModel) -> None:
        """Let requests in flight finish, then close the batchers and the runtime."""
        for batcher in list(model.batchers.values()):
            await batcher.close(self._drain_s)
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close_runtime, model)

    @staticmethod
    def _close_runtime(model: LoadedModel) -> None:
        try:
            model.runtime.close()
        except Exception:  # a runtime that fails to close must not break unloading
            log.exception("closing %s failed", model.source.key)

    def unload(self, key: str, *, reason: str = "deleted") -> None:
        """Forget a version (after a delete, or asked to: ``reason`` labels the unload metric),
        in every isolation mode; thread-safe. Requests in flight finish on the old runtime; a
        load of it in progress is discarded; its next request loads it again.
        """
        loop = self._loop
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if loop is not None and loop.is_running() and not on_loop:
            loop.call_soon_threadsafe(self._unload, key, reason)
        else:
            self._unload(key, reason)

    def _unload(self, key: str, reason: str) -> None:
        self._generation[key] = self._generation.get(key, 0) + 1
        for load_key, model in list(self._loaded.items()):
            if model.source.key == key or load_key == key:
                self._drop(load_key, reason=reason)

    def is_pinned(self, key: str) -> bool:
        """Whether a version (by version key) is pinned (see :meth:`pin`)."""
        return key in self._pinned

    def pinned_keys(self) -> set[str]:
        """The version keys pinned now (a copy)."""
        return set(self._pinned)

    def pin(self, key: str, pinned: bool = True) -> None:
        """Keep a version (by version key) loaded regardless of the budget, or release it."""
        if pinned:
            self._pinned.add(key)
        else:
            self._pinned.discard(key)
        for model in self._loaded.values():
            if model.source.key == key or model.source.load_key == key:
                model.pinned = pinned

    def _update_gauges(self) -> None:
        self._metrics.loaded_models.set(len(self._loaded))
        self._metrics.memory_bytes.set(self.memory_in_use)

    # -- inference -------------------------------------------------------------------------
    async def predict(
        self,
        source: ModelSource,
        inputs: dict[str, np.ndarray],
        output_names: list[str] | None,
        *,
        options: ServingOptions | None = None,
        timeout_s: float | None = None,
        priority: int = 0,
        level_limit: int | None = None,
        watch: Callable[[Queued], object] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run ``inputs`` through the version's batcher, with ``priority`` and its level's
        ``level_limit`` (see the batcher; ``watch``, if given, is called with the batcher's entry once queued: a trace reads its
        times).

        Raises :class:`Unavailable` (503) when the server is saturated, ``QueueFull`` (429) when
        the version's queue is full, ``DeadlineExceeded`` (504) after ``timeout_s`` (default:
        ``options.timeout_s``), and what the model raised for this request alone.
        """
        if self._total_in_flight >= self._max_in_flight:
            raise self.saturation()
        opts = options or self._defaults
        self._total_in_flight += 1
        try:
            model = self._touch(source.load_key)  # loaded: no coroutine to make and await
            if model is None:
                model = await self.acquire(source, opts)
            while model.retired:  # evicted between its load and this request: load it again
                model = await self.acquire(source, opts)
            batcher = model.batcher(opts)
            model.in_flight += 1
            try:
                return await batcher.submit(
                    inputs, output_names, timeout_s=timeout_s if timeout_s is not None else opts.timeout_s,
                    priority=priority, level_limit=level_limit, watch=watch,
                )
            finally:
                self._done_with(model)
        finally:
            self._total_in_flight -= 1

    def enqueue(
        self,
        source: ModelSource,
        inputs: dict[str, np.ndarray],
        output_names: list[str] | None,
        *,
        options: ServingOptions,
        timeout_s: float | None = None,
        priority: int = 0,
        level_limit: int | None = None,
    ) -> tuple[LoadedModel, DynamicBatcher, Queued] | None:
        """:meth:`predict` without a coroutine, for a version already loaded (``None``: not
        loaded, or retired; await :meth:`predict`): the request is queued (raising as
        ``predict`` does) and counted in flight until :meth:`release` is called with the model
        once its future is done; the batcher is the one to ``withdraw`` it from. ``timeout_s``
        ``priority`` and ``level_limit`` as for :meth:`predict`."""
        if self._total_in_flight >= self._max_in_flight:
            raise self.saturation()
        model = self._touch(source.load_key)
        if model is None or model.retired:
            return None
        batcher = model.batcher(options)
        deadline_s = timeout_s if timeout_s is not None else options.timeout_s
        queued = batcher.enqueue(
            inputs, output_names, timeout_s=deadline_s, priority=priority, level_limit=level_limit
        )
        self._total_in_flight += 1
        model.in_flight += 1
        return model, batcher, queued

    def release(self, model: LoadedModel) -> None:
        """A request from :meth:`enqueue` is done (answered, failed or withdrawn)."""
        self._done_with(model)
        self._total_in_flight -= 1

    def _done_with(self, model: LoadedModel) -> None:
        model.in_flight -= 1
        model.last_used = time.monotonic()
        if self._memory > self._budget and not self._trimming:
            self._trim_soon()

    def loaded_batcher(self, source: ModelSource, options: ServingOptions | None = None) -> DynamicBatcher | None:
        """The batcher ``predict`` would use for ``source`` right now, if it is loaded (no load)."""
        model = self._loaded.get(source.load_key)
        if model is None or model.retired:
            return None
        return model.batcher(options or self._defaults)

    def saturation(self) -> Unavailable:
        """The 503 a request gets while the server is saturated (counted as a rejection)."""
        self._saturated.inc()
        return Unavailable("the server is saturated; retry shortly", retry_after=1.0)

    @property
    def saturated(self) -> bool:
        """Whether ``predict`` would refuse with 503 now (the server-wide in-flight bound)."""
        return self._total_in_flight >= self._max_in_flight

    def _trim_soon(self) -> None:
        """Over budget (loads raced with busy versions): unload idle ones once they finish."""
        self._trimming = True

        async def trim() -> None:
            try:
                await self._make_room(0)
            finally:
                self._trimming = False

        task = asyncio.get_running_loop().create_task(trim())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self, drain_timeout_s: float | None = None) -> None:
        """Drain every batcher (up to ``drain_timeout_s``) and unload everything."""
        if drain_timeout_s is not None:
            self._drain_s = drain_timeout_s
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        for key in list(self._loaded):
            self._drop(key, reason="shutdown")
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

