"""ModelManager: memory budget (LRU, in-flight, pins), shared loads, load/unload races, batching,
thread settings, saturation and timeouts; with an injected loader of tiny fake runtimes."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelyard.engine.manager import ModelManager, ModelSource, ServingOptions
from modelyard.errors import DeadlineExceeded, InvalidInput, QueueFull, Unavailable, ValidationFailed
from modelyard.metrics import Metrics
from modelyard.runtimes.base import RuntimeOptions
from modelyard.tensors import TensorSpec

SPEC = TensorSpec(name="x", datatype="FP32", shape=(-1, 2))


class FakeRuntime:
    """Doubles its input; sleeps ``delay`` per call; refuses negative inputs; counts batches."""

    def __init__(self, memory: int, delay: float, options: RuntimeOptions) -> None:
        self.inputs = [SPEC]
        self.outputs = [TensorSpec(name="y", datatype="FP32", shape=(-1, 2))]
        self.memory = memory
        self.delay = delay
        self.options = options
        self.calls: list[int] = []
        self.closed = False

    def predict(self, inputs: dict[str, np.ndarray], output_names: list[str] | None = None) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.calls.append(x.shape[0])
        if (x < 0).any():
            raise InvalidInput("negative input")
        if self.delay:
            time.sleep(self.delay)
        return {"y": x * 2}

    def memory_bytes(self) -> int:
        return self.memory

    def close(self) -> None:
        self.closed = True


class Loader:
    def __init__(self, memory: int = 100, delay: float = 0.0, load_delay: float = 0.0) -> None:
        self.memory, self.delay, self.load_delay = memory, delay, load_delay
        self.loads: list[str] = []
        self.runtimes: dict[str, FakeRuntime] = {}
        self.lock = threading.Lock()

    def __call__(self, fmt: str, path: Path, options: RuntimeOptions, metadata: dict[str, Any]) -> FakeRuntime:
        if self.load_delay:
            time.sleep(self.load_delay)
        runtime = FakeRuntime(self.memory, self.delay, options)
        with self.lock:
            self.loads.append(str(path))
            self.runtimes[str(path)] = runtime
        return runtime


def source(name: str, size: int = 0) -> ModelSource:
    return ModelSource(
        key=name, name=name, version="1", format="fake", path=lambda: Path(name), size_hint=size, inputs=(SPEC,)
    )


def manager(loader: Loader, budget: int = 10_000, metrics: Metrics | None = None, **kwargs: Any) -> ModelManager:
    return ModelManager(
        options=RuntimeOptions(), memory_budget_bytes=budget, metrics=metrics or Metrics(), loader=loader, cores=8,
        warm_up=False, **kwargs
    )


X = np.ones((1, 2), np.float32)


def test_lru_eviction_under_a_small_budget() -> None:
    async def main() -> None:
        loader = Loader(memory=100)
        m = manager(loader, budget=250)
        for name in ("a", "b"):
            await m.predict(source(name), {"x": X}, None)
        await m.predict(source("a"), {"x": X}, None)  # a is now more recent than b
        await m.predict(source("c"), {"x": X}, None)
        assert {x.source.key for x in m.loaded()} == {"a", "c"}
        await asyncio.sleep(0.05)
        assert loader.runtimes["b"].closed
        assert m.memory_in_use <= 250
        await m.close()

    asyncio.run(main())


def test_pinned_and_busy_versions_are_never_evicted() -> None:
    async def main() -> None:
        loader = Loader(memory=100, delay=0.2)
        m = manager(loader, budget=250)
        m.pin("a")
        await m.predict(source("a"), {"x": X}, None)
        busy = asyncio.create_task(m.predict(source("b"), {"x": X}, None))
        await asyncio.sleep(0.05)  # b is loaded and computing
        with pytest.raises(Unavailable):
            await m.predict(source("c", size=100), {"x": X}, None)
        await busy
        await m.predict(source("c", size=100), {"x": X}, None)  # b is idle now: it goes
        assert {x.source.key for x in m.loaded()} == {"a", "c"}
        await m.close()

    asyncio.run(main())


def test_hundreds_of_small_models_within_the_budget() -> None:
    async def main() -> None:
        loader = Loader(memory=1000)
        m = manager(loader, budget=50_000)
        outs = await asyncio.gather(*(m.predict(source(f"m{i}"), {"x": X * i}, None) for i in range(300)))
        for i, out in enumerate(outs):
            np.testing.assert_array_equal(out["y"], X * i * 2)
        assert m.memory_in_use <= 50_000
        assert len(m.loaded()) == 50
        await m.close()

    asyncio.run(main())


def test_concurrent_first_requests_share_one_load() -> None:
    async def main() -> None:
        loader = Loader(load_delay=0.1)
        m = manager(loader)
        await asyncio.gather(*(m.predict(source("a"), {"x": X}, None) for _ in range(10)))
        assert loader.loads == ["a"]
        await m.close()

    asyncio.run(main())


def test_unload_during_load_never_leaves_a_stale_version() -> None:
    async def main() -> None:
        loader = Loader(load_delay=0.2)
        m = manager(loader)
        task = asyncio.create_task(m.acquire(source("a")))
        await asyncio.sleep(0.05)
        m.unload("a")
        with pytest.raises(Unavailable):
            await task
        assert not m.is_loaded("a")
        assert loader.runtimes["a"].closed
        await m.acquire(source("a"))  # a later load works
        assert m.is_loaded("a")
        await m.close()

    asyncio.run(main())


def test_unload_lets_in_flight_requests_finish() -> None:
    async def main() -> None:
        loader = Loader(delay=0.2)
        m = manager(loader)
        await m.acquire(source("a"))
        task = asyncio.create_task(m.predict(source("a"), {"x": X}, None))
        await asyncio.sleep(0.05)
        m.unload("a")
        np.testing.assert_array_equal((await task)["y"], X * 2)
        await asyncio.sleep(0.05)
        assert loader.runtimes["a"].closed
        await m.close()

    asyncio.run(main())


def test_enqueue_serves_only_loaded_versions_and_counts_them_in_flight_until_released() -> None:
    """``enqueue`` (``predict`` without a coroutine) answers ``None`` for a version not loaded,
    refuses as ``predict`` does, and keeps the request in flight (so it is neither evicted nor
    unaccounted at a drain) until ``release``."""
    async def main() -> None:
        loader = Loader()
        m = manager(loader, max_in_flight=1)
        opts = ServingOptions()
        assert m.enqueue(source("a"), {"x": X}, None, options=opts) is None and loader.loads == []
        await m.acquire(source("a"), opts)
        queued = m.enqueue(source("a"), {"x": X}, None, options=opts)
        assert queued is not None
        model, batcher, item = queued
        assert m.in_flight == 1 and model.in_flight == 1 and batcher.in_flight == 1
        with pytest.raises(Unavailable):  # one in flight: saturated
            m.enqueue(source("a"), {"x": X}, None, options=opts)
        np.testing.assert_array_equal((await item.future)["y"], X * 2)
        m.release(model)
        assert m.in_flight == 0 and model.in_flight == 0
        await m.close()

    asyncio.run(main())


def test_batching_merges_and_isolates_a_bad_request() -> None:
    async def main() -> None:
        loader = Loader(delay=0.05)
        m = manager(loader)
        opts = ServingOptions(max_queue_delay_ms=20)
        first = asyncio.create_task(m.predict(source("a"), {"x": X}, None, options=opts))
        await asyncio.sleep(0.01)  # a batch is computing; the next ones queue together
        inputs = [X * i for i in (1, 2, -1, 3)]
        results = await asyncio.gather(
            *(m.predict(source("a"), {"x": x}, None, options=opts) for x in inputs), return_exceptions=True
        )
        await first
        assert isinstance(results[2], InvalidInput)
        for x, out in zip(inputs, results):
            if not isinstance(out, BaseException):
                np.testing.assert_array_equal(out["y"], x * 2)
        assert max(loader.runtimes["a"].calls) >= 3  # merged into one batch
        await m.close()

    asyncio.run(main())


def test_thread_settings_follow_instances() -> None:
    async def main() -> None:
        loader = Loader()
        m = manager(loader)
        await m.acquire(source("a"), ServingOptions(instances=4))
        assert loader.runtimes["a"].options.intra_op_threads == 2  # 8 cores / 4 instances
        assert m.runtime_options(1).intra_op_threads == 8
        assert m.runtime_options(16).intra_op_threads == 1
        await m.close()

    asyncio.run(main())


def test_timeout_queue_full_and_saturation() -> None:
    async def main() -> None:
        loader = Loader(delay=0.2)
        m = manager(loader, max_in_flight=3)
        opts = ServingOptions(batching=False, max_queue_size=1)
        with pytest.raises(DeadlineExceeded):
            await m.predict(source("a"), {"x": X}, None, options=opts, timeout_s=0.05)
        await asyncio.sleep(0.2)
        busy = asyncio.create_task(m.predict(source("a"), {"x": X}, None, options=opts))
        await asyncio.sleep(0.02)
        queued = asyncio.create_task(m.predict(source("a"), {"x": X}, None, options=opts))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull) as full:
            await m.predict(source("a"), {"x": X}, None, options=opts)
        assert full.value.retry_after is not None
        other = asyncio.create_task(m.predict(source("b"), {"x": X}, None, options=opts))
        await asyncio.sleep(0.01)
        with pytest.raises(Unavailable):  # three in flight: the server is saturated
            await m.predict(source("c"), {"x": X}, None, options=opts)
        await asyncio.gather(busy, queued, other)
        await m.close()

    asyncio.run(main())


def test_queue_depth_gauge_is_read_when_scraped() -> None:
    """Nothing is pushed per request: the gauge sums the version's batchers when it is read, and
    reads 0 once the version is unloaded (without keeping its runtime alive)."""

    async def main() -> None:
        metrics = Metrics()
        m = ModelManager(
            options=RuntimeOptions(), memory_budget_bytes=10_000, metrics=metrics, loader=Loader(delay=0.2),
            cores=8, warm_up=False,
        )

        def depth() -> float | None:
            return metrics.registry.get_sample_value("modelyard_queue_depth", {"tenant": "", "model": "a", "version": "1"})

        solo, wide = ServingOptions(batching=False), ServingOptions(batching=False, max_queue_size=99)
        busy = [asyncio.create_task(m.predict(source("a"), {"x": X}, None, options=o)) for o in (solo, wide)]
        await asyncio.sleep(0.05)  # one call computing in each batcher
        queued = [asyncio.create_task(m.predict(source("a"), {"x": X}, None, options=o)) for o in (solo, wide, wide)]
        await asyncio.sleep(0.02)
        assert depth() == 3.0
        await asyncio.gather(*busy, *queued)
        assert depth() == 0.0
        m.unload("a")
        assert depth() == 0.0
        await m.close()

    asyncio.run(main())


class WaitingRuntime(FakeRuntime):
    """A runtime whose ``predict`` waits on another thread (as the generation engine's does)."""

    waits_elsewhere = True


def test_batches_compute_on_the_loop_only_for_runtimes_that_compute_in_the_caller() -> None:
    threads: dict[str, set[int]] = {"computes": set(), "waits": set()}

    def loader(fmt: str, path: Path, options: RuntimeOptions, metadata: dict[str, Any]) -> FakeRuntime:
        kind = str(path)
        runtime = (WaitingRuntime if kind == "waits" else FakeRuntime)(100, 0.0, options)
        inner = runtime.predict

        def predict(inputs: dict[str, np.ndarray], output_names: list[str] | None = None) -> dict[str, Any]:
            threads[kind].add(threading.get_ident())
            return inner(inputs, output_names)

        runtime.predict = predict  # type: ignore[method-assign]
        return runtime

    async def main() -> int:
        m = ModelManager(
            options=RuntimeOptions(), memory_budget_bytes=10_000, metrics=Metrics(), loader=loader, cores=1,
            warm_up=False, inline_below_s=10.0,
        )
        for _ in range(8):
            for kind in ("computes", "waits"):
                await m.predict(source(kind), {"x": X}, None)
        await m.close()
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert loop_thread in threads["computes"], "fast batches of an in-process runtime compute on the loop"
    assert loop_thread not in threads["waits"], "a predict that waits elsewhere never runs on the loop"


def test_serving_options_validation() -> None:
    base = ServingOptions()
    assert base.merged({"max_batch_size": 8, "timeout_s": None}).max_batch_size == 8
    with pytest.raises(ValidationFailed):
        base.merged({"bogus": 1})
    with pytest.raises(ValidationFailed):
        base.merged({"isolation": "vm"})
    with pytest.raises(ValidationFailed):
        base.merged({"instances": 0})
    for bad in (-1, True, "60", 30 * 86_400 + 1, float("nan")):
        with pytest.raises(ValidationFailed) as refused:
            base.merged({"idle_unload_s": bad})
        assert refused.value.details == {"field": "idle_unload_s"}
    assert base.merged({"idle_unload_s": 0.5}).idle_unload_s == 0.5


def unloads(metrics: Metrics, name: str, reason: str) -> float:
    return metrics.registry.get_sample_value(
        "modelyard_model_unloads_total", {"tenant": "", "model": name, "version": "1", "reason": reason}
    ) or 0.0


def test_a_version_idle_for_its_idle_unload_s_is_unloaded_and_loads_again_on_its_next_request() -> None:
    async def main() -> None:
        loader, metrics = Loader(), Metrics()
        m = manager(loader, metrics=metrics, defaults=ServingOptions(idle_unload_s=0.3))
        await m.predict(source("a"), {"x": X}, None)
        await asyncio.sleep(0.15)
        await m.predict(source("a"), {"x": X}, None)  # a request resets its idle time
        await asyncio.sleep(0.2)
        assert m.is_loaded("a"), "unloaded 0.2 s after its last request"
        await asyncio.sleep(0.3)
        assert not m.is_loaded("a")
        assert m.memory_in_use == 0 and unloads(metrics, "a", "idle") == 1
        await asyncio.sleep(0.05)
        assert loader.runtimes["a"].closed
        out = await m.predict(source("a"), {"x": X}, None)  # loaded again
        np.testing.assert_array_equal(out["y"], X * 2)
        assert loader.loads == ["a", "a"]
        await m.close()

    asyncio.run(main())


def test_idle_unloading_spares_pinned_busy_and_unset_versions() -> None:
    async def main() -> None:
        loader = Loader(delay=0.6)
        idle, metrics = ServingOptions(idle_unload_s=0.2), Metrics()
        m = manager(loader, metrics=metrics)
        m.pin("pinned")
        for name in ("pinned", "never"):
            await m.predict(source(name), {"x": X}, None, options=idle if name == "pinned" else None)
        busy = asyncio.create_task(m.predict(source("busy"), {"x": X}, None, options=idle))
        await asyncio.sleep(0.5)  # "busy" computes for 0.6 s: longer than its idle time
        assert m.is_loaded("busy")
        await busy
        await asyncio.sleep(0.35)
        assert not m.is_loaded("busy") and unloads(metrics, "busy", "idle") == 1
        assert m.is_loaded("pinned") and m.is_loaded("never")
        await m.close()

    asyncio.run(main())


def test_a_versions_idle_unload_s_follows_its_latest_requests_settings() -> None:
    async def main() -> None:
        m = manager(Loader())
        await m.predict(source("a"), {"x": X}, None, options=ServingOptions(idle_unload_s=0.2))
        await m.predict(source("a"), {"x": X}, None, options=ServingOptions())  # the setting is gone again
        await asyncio.sleep(0.5)
        assert m.is_loaded("a")
        await m.predict(source("a"), {"x": X}, None, options=ServingOptions(idle_unload_s=0.1))
        await asyncio.sleep(1.3)  # the sweep may be a second away (no version had a time when armed)
        assert not m.is_loaded("a")
        await m.close()

    asyncio.run(main())
