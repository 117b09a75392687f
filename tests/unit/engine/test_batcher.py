"""DynamicBatcher: batching, row routing, isolation, backpressure, deadlines, cancel, close."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from modelyard.engine.batcher import DynamicBatcher, batching_default
from modelyard.errors import DeadlineExceeded, QueueFull, Unavailable
from modelyard.tensors import TensorSpec


class Recorder:
    """A BatchObserver that keeps what it was told."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, float, float]] = []
        self.requests: list[tuple[int, float]] = []  # per batch: requests, their waits together
        self.rejects = 0

    def on_batch(self, size: int, requests: int, queue_wait_s: float, queue_total_s: float, compute_s: float) -> None:
        self.batches.append((size, queue_wait_s, compute_s))
        self.requests.append((requests, queue_total_s))

    def on_reject(self, n: int = 1) -> None:
        self.rejects += n


class Model:
    """A blocking predict returning ``x * 2`` and the row ids; records every call's inputs."""

    def __init__(self, *, delay_s: float = 0.0, gate: threading.Event | None = None) -> None:
        self.delay_s = delay_s
        self.gate = gate
        self.calls: list[dict[str, np.ndarray]] = []
        self.lock = threading.Lock()
        self.started = threading.Event()

    def __call__(
        self, inputs: dict[str, np.ndarray], output_names: list[str] | None
    ) -> dict[str, np.ndarray]:
        with self.lock:
            self.calls.append({k: v.copy() for k, v in inputs.items()})
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        if self.delay_s:
            time.sleep(self.delay_s)
        x = inputs["x"]
        if np.isnan(x).any():
            raise ValueError("NaN in input")
        out = {"y": x * 2, "id": inputs["id"].copy()}
        if output_names is not None:
            out = {k: out[k] for k in output_names}
        return out

    def seen_ids(self) -> set[int]:
        with self.lock:
            return {int(i) for call in self.calls for i in call["id"].ravel()}


def request(ids: list[int], width: int = 3, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    ids_arr = np.array(ids, dtype=np.int64)
    x = np.repeat(ids_arr[:, None], width, axis=1).astype(dtype)
    return {"x": x, "id": ids_arr}


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.001)


async def computing_first(model: Model, **kw: Any) -> tuple[DynamicBatcher, asyncio.Future[dict[str, np.ndarray]]]:
    """A batcher (``make``'s, with ``kw``) whose first request, row id 0, is computing: held
    there until ``model``'s gate opens."""
    b = make(model, **kw)
    first = asyncio.ensure_future(b.submit(request([0]), None))
    await wait_until(model.started.is_set)
    return b, first


def make(model: Model, **kw: Any) -> DynamicBatcher:
    params: dict[str, Any] = dict(
        predict=model, max_batch_size=16, max_queue_delay_ms=5, max_queue_size=128, instances=1
    )
    params.update(kw)
    return DynamicBatcher(**params)


@pytest.mark.asyncio
async def test_concurrent_requests_are_merged_and_routed_back() -> None:
    model = Model(delay_s=0.02)
    rec = Recorder()
    b = make(model, max_batch_size=32, observer=rec)
    results = await asyncio.gather(*(b.submit(request([i]), None) for i in range(32)))
    for i, out in enumerate(results):
        assert out["id"].tolist() == [i]
        np.testing.assert_array_equal(out["y"], np.full((1, 3), 2 * i, dtype=np.float32))
    sizes = [s for s, _, _ in rec.batches]
    assert sum(sizes) == 32
    assert max(sizes) > 1
    assert len(model.calls) < 32
    # one row per request here: each batch reports as many requests as rows, and their waits
    # together are at least the oldest one's
    assert [n for n, _ in rec.requests] == sizes
    for (_, oldest, _), (_, together) in zip(rec.batches, rec.requests):
        assert together >= oldest >= 0
    assert b.in_flight == 0 and b.queue_depth == 0
    await b.close(1)


@pytest.mark.asyncio
async def test_requests_with_several_rows_get_exactly_their_rows() -> None:
    model = Model(delay_s=0.01)
    b = make(model, max_batch_size=8)
    reqs = [list(range(10 * k, 10 * k + 1 + k % 4)) for k in range(20)]
    results = await asyncio.gather(*(b.submit(request(ids), ["y", "id"]) for ids in reqs))
    for ids, out in zip(reqs, results):
        assert out["id"].tolist() == ids
        assert out["y"].shape == (len(ids), 3)
        np.testing.assert_array_equal(out["y"][:, 0], np.array(ids, dtype=np.float32) * 2)
    # No batch exceeded max_batch_size rows, and some merged.
    assert all(len(c["id"]) <= 8 for c in model.calls)
    assert len(model.calls) < 20
    await b.close(1)


@pytest.mark.asyncio
async def test_request_larger_than_max_batch_runs_alone() -> None:
    model = Model()
    b = make(model, max_batch_size=4)
    out = await b.submit(request(list(range(10))), None)
    assert out["id"].tolist() == list(range(10))
    assert len(model.calls) == 1
    await b.close(1)


@pytest.mark.asyncio
async def test_lone_caller_does_not_wait_for_the_queue_delay() -> None:
    model = Model(delay_s=0.01)
    b = make(model, max_queue_delay_ms=500, instances=2)
    for i in range(5):
        t0 = time.perf_counter()
        out = await b.submit(request([i]), None)
        elapsed = time.perf_counter() - t0
        assert out["id"].tolist() == [i]
        assert elapsed < 0.2, f"lone request took {elapsed:.3f}s; the 0.5 s delay was applied"
    await b.close(1)


@pytest.mark.asyncio
async def test_queue_delay_fills_batches_while_another_batch_computes() -> None:
    gate = threading.Event()
    model = Model(gate=gate)
    rec = Recorder()
    b, first = await computing_first(model, instances=2, max_queue_delay_ms=50, max_batch_size=4, observer=rec)
    # Executor 2 is free but executor 1 is busy: the next requests wait to fill a batch of 4.
    rest = [asyncio.ensure_future(b.submit(request([i]), None)) for i in range(1, 5)]
    await wait_until(lambda: len(model.calls) == 2)
    assert model.calls[1]["id"].tolist() == [1, 2, 3, 4]
    gate.set()
    await asyncio.gather(first, *rest)
    await b.close(1)


@pytest.mark.asyncio
async def test_partial_batch_under_load_waits_at_most_the_delay() -> None:
    gate = threading.Event()
    model = Model(gate=gate)
    b, first = await computing_first(model, instances=2, max_queue_delay_ms=30, max_batch_size=64)
    t0 = time.perf_counter()
    second = asyncio.ensure_future(b.submit(request([1]), None))
    await wait_until(lambda: len(model.calls) == 2, timeout=2)
    waited = time.perf_counter() - t0
    assert 0.02 <= waited < 1.0
    gate.set()
    await asyncio.gather(first, second)
    await b.close(1)


@pytest.mark.asyncio
async def test_mixed_shapes_dtypes_and_outputs_do_not_share_a_batch() -> None:
    model = Model(delay_s=0.01)
    b = make(model, max_batch_size=64)
    variants: list[tuple[dict[str, np.ndarray], list[str] | None]] = []
    for i in range(24):
        kind = i % 4
        if kind == 0:
            variants.append((request([i], width=3), None))
        elif kind == 1:
            variants.append((request([i], width=4), None))
        elif kind == 2:
            variants.append((request([i], width=3, dtype=np.float64), None))
        else:
            variants.append((request([i], width=3), ["y"]))
    results = await asyncio.gather(*(b.submit(inp, outs) for inp, outs in variants))
    for (inp, outs), res in zip(variants, results):
        assert res["y"].shape == inp["x"].shape and res["y"].dtype == inp["x"].dtype
        np.testing.assert_array_equal(res["y"], inp["x"] * 2)
        assert set(res) == ({"y"} if outs else {"y", "id"})
    for call in model.calls:
        ids = call["id"].tolist()
        # Every row of a call comes from the same variant (ids of one kind are equal mod 4).
        assert len({i % 4 for i in ids}) == 1
    assert any(len(c["id"]) > 1 for c in model.calls)
    await b.close(1)


@pytest.mark.asyncio
async def test_higher_priorities_compute_first_and_apart_from_lower_ones() -> None:
    """Queued behind a computing batch: requests of priority 1 go first, then 2, then those
    without one (0); each level batches apart, oldest first within it."""
    gate = threading.Event()
    model = Model(gate=gate)
    b, first = await computing_first(model, max_batch_size=64)
    priorities = {1: 0, 2: 2, 3: 1, 4: 0, 5: 2, 6: 1, 7: 3}
    waiting = [asyncio.ensure_future(b.submit(request([i]), None, priority=p)) for i, p in priorities.items()]
    await wait_until(lambda: b.queue_depth == len(priorities))
    gate.set()
    results = await asyncio.gather(first, *waiting)
    assert [r["id"].tolist() for r in results] == [[i] for i in range(8)]
    assert [sorted(c["id"].tolist()) for c in model.calls] == [[0], [3, 6], [2, 5], [7], [1, 4]]
    await b.close(1)


@pytest.mark.asyncio
async def test_a_priority_does_not_pass_a_full_queue() -> None:
    gate = threading.Event()
    model = Model(gate=gate)
    b, first = await computing_first(model, max_queue_size=2)
    queued = [asyncio.ensure_future(b.submit(request([i]), None)) for i in (1, 2)]
    await wait_until(lambda: b.queue_depth == 2)
    with pytest.raises(QueueFull):
        await b.submit(request([3]), None, priority=1)
    gate.set()
    await asyncio.gather(first, *queued)
    await b.close(1)


@pytest.mark.asyncio
async def test_a_levels_own_bound_refuses_it_while_other_levels_get_in() -> None:
    """A level's bound (``level_limit``) counts only its own queued requests: one more of it is
    refused while other levels still get in; its count drops as its requests leave the queue
    (withdrawn, expired, taken into a batch), so it gets in again."""
    gate = threading.Event()
    model = Model(gate=gate)
    b, first = await computing_first(model, max_batch_size=64, max_queue_size=100)
    background = [asyncio.ensure_future(b.submit(request([i]), None, priority=2, level_limit=2)) for i in (1, 2)]
    await wait_until(lambda: b.queue_depth == 2)
    with pytest.raises(QueueFull, match="priority level 2 \\(2 requests\\)"):
        b.enqueue(request([3]), None, priority=2, level_limit=2)
    urgent = asyncio.ensure_future(b.submit(request([4]), None, priority=1, level_limit=2))
    unranked = asyncio.ensure_future(b.submit(request([5]), None))
    await wait_until(lambda: b.queue_depth == 4)
    background[0].cancel()  # withdrawn: its slot of level 2 is free again
    await wait_until(lambda: b.queue_depth == 3)
    expiring = b.enqueue(request([6]), None, priority=2, level_limit=2, timeout_s=0.05)
    with pytest.raises(DeadlineExceeded):
        await expiring.future
    again = asyncio.ensure_future(b.submit(request([7]), None, priority=2, level_limit=2))
    await wait_until(lambda: b.queue_depth == 4)
    gate.set()
    results = await asyncio.gather(first, background[1], urgent, unranked, again)
    assert [r["id"].tolist() for r in results] == [[0], [2], [4], [5], [7]]
    # every request of level 2 has left the queue, so its bound counts from nothing again
    gate.clear()
    model.started.clear()
    blocker = asyncio.ensure_future(b.submit(request([8]), None))
    await wait_until(model.started.is_set)
    refill = [asyncio.ensure_future(b.submit(request([i]), None, priority=2, level_limit=2)) for i in (9, 10)]
    await wait_until(lambda: b.queue_depth == 2)
    gate.set()
    assert [r["id"].tolist() for r in await asyncio.gather(blocker, *refill)] == [[8], [9], [10]]
    await b.close(1)


@pytest.mark.asyncio
async def test_failing_request_does_not_fail_its_batch_mates() -> None:
    model = Model(delay_s=0.01)
    b = make(model, max_batch_size=32)
    inputs = [request([i]) for i in range(12)]
    inputs[5]["x"][0, 1] = np.nan
    results = await asyncio.gather(*(b.submit(inp, None) for inp in inputs), return_exceptions=True)
    for i, res in enumerate(results):
        if i == 5:
            assert isinstance(res, ValueError)
        else:
            assert isinstance(res, dict), res
            assert res["id"].tolist() == [i]
    await b.close(1)


@pytest.mark.asyncio
async def test_unsplittable_outputs_fall_back_to_one_call_per_request() -> None:
    calls: list[int] = []

    def total(inputs: dict[str, np.ndarray], names: list[str] | None) -> dict[str, np.ndarray]:
        calls.append(len(inputs["x"]))
        time.sleep(0.01)
        return {"sum": np.array(inputs["x"].sum())}

    b = DynamicBatcher(
        predict=total, max_batch_size=16, max_queue_delay_ms=1, max_queue_size=64, instances=1
    )
    xs = [np.full((1, 2), i, dtype=np.float32) for i in range(8)]
    results = await asyncio.gather(*(b.submit({"x": x}, None) for x in xs))
    assert [float(r["sum"]) for r in results] == [2.0 * i for i in range(8)]
    assert max(calls) > 1  # a merged call happened and was re-run per request
    await b.close(1)


@pytest.mark.asyncio
async def test_full_queue_rejects_immediately_with_retry_after() -> None:
    gate = threading.Event()
    model = Model(gate=gate)
    rec = Recorder()
    b, running = await computing_first(model, max_queue_size=2, observer=rec)
    queued = [asyncio.ensure_future(b.submit(request([i]), None)) for i in (1, 2)]
    await wait_until(lambda: b.queue_depth == 2)
    t0 = time.perf_counter()
    with pytest.raises(QueueFull) as info:
        await b.submit(request([3]), None)
    assert time.perf_counter() - t0 < 0.05
    assert info.value.retry_after is not None and info.value.retry_after > 0
    assert info.value.http_status == 429
    assert rec.rejects == 1
    assert b.in_flight == 3
    gate.set()
    await asyncio.gather(running, *queued)
    assert 3 not in model.seen_ids()
    await b.close(1)


@pytest.mark.asyncio
async def test_deadline_while_queued_drops_the_work() -> None:
    gate = threading.Event()
    model = Model(gate=gate)
    b = make(model)
    running = asyncio.ensure_future(b.submit(request([0]), None))
    await wait_until(model.started.is_set)
    t0 = time.perf_counter()
    with pytest.raises(DeadlineExceeded):
        await b.submit(request([99]), None, timeout_s=0.05)
    assert time.perf_counter() - t0 < 1.0
    assert b.queue_depth == 0
    gate.set()
    await running
    await b.submit(request([1]), None)
    assert 99 not in model.seen_ids()
    assert b.in_flight == 0
    await b.close(1)


@pytest.mark.asyncio
async def test_deadline_while_computing_fails_the_caller_but_not_the_batch() -> None:
    gate = threading.Event()
    model = Model(gate=gate)
    b = make(model, max_batch_size=8)
    slow = asyncio.ensure_future(b.submit(request([1]), None, timeout_s=0.05))
    mate = asyncio.ensure_future(b.submit(request([2]), None))
    await wait_until(model.started.is_set)
    with pytest.raises(DeadlineExceeded):
        await slow
    assert b.in_flight == 2  # still computing
    gate.set()
    out = await mate
    assert out["id"].tolist() == [2]
    assert model.calls[0]["id"].tolist() == [1, 2]
    await wait_until(lambda: b.in_flight == 0)
    await b.close(1)


@pytest.mark.asyncio
async def test_zero_timeout_is_rejected_without_queueing() -> None:
    model = Model()
    b = make(model)
    with pytest.raises(DeadlineExceeded):
        await b.submit(request([1]), None, timeout_s=0)
    assert model.calls == [] and b.in_flight == 0
    await b.close(1)


@pytest.mark.asyncio
async def test_cancelled_request_never_runs() -> None:
    gate = threading.Event()
    model = Model(gate=gate)
    b = make(model)
    running = asyncio.ensure_future(b.submit(request([0]), None))
    await wait_until(model.started.is_set)
    doomed = asyncio.ensure_future(b.submit(request([42]), None))
    kept = asyncio.ensure_future(b.submit(request([7]), None))
    await wait_until(lambda: b.queue_depth == 2)
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert b.queue_depth == 1
    gate.set()
    await running
    assert (await kept)["id"].tolist() == [7]
    assert 42 not in model.seen_ids()
    assert b.in_flight == 0
    await b.close(1)


@pytest.mark.asyncio
async def test_enqueue_answers_through_the_future_and_withdraw_drops_queued_work() -> None:
    """``enqueue`` is ``submit`` for a caller that answers from a callback: the future gets the
    outputs; ``withdraw`` (its caller went away) drops the request while queued and cancels
    its future, and the rest of the batch is answered."""
    gate = threading.Event()
    model = Model(gate=gate)
    b = make(model)
    running = b.enqueue(request([0]), None)
    await wait_until(model.started.is_set)
    doomed, kept = b.enqueue(request([42]), None), b.enqueue(request([7]), None)
    assert b.queue_depth == 2
    b.withdraw(doomed)
    assert doomed.future.cancelled() and b.queue_depth == 1
    b.withdraw(doomed)  # twice is harmless
    gate.set()
    assert (await running.future)["id"].tolist() == [0]
    assert (await kept.future)["id"].tolist() == [7]
    assert 42 not in model.seen_ids() and b.in_flight == 0
    await b.close(1)


@pytest.mark.asyncio
async def test_close_drains_queued_and_running_work_then_refuses() -> None:
    model = Model(delay_s=0.02)
    b = make(model, max_batch_size=2, max_queue_delay_ms=1000, instances=2)
    tasks = [asyncio.ensure_future(b.submit(request([i]), None)) for i in range(10)]
    await wait_until(lambda: len(model.calls) >= 1)
    assert await b.close(drain_timeout_s=5) is True
    assert all(t.done() for t in tasks)
    assert [t.result()["id"].tolist() for t in tasks] == [[i] for i in range(10)]
    assert b.in_flight == 0
    with pytest.raises(Unavailable):
        await b.submit(request([1]), None)


@pytest.mark.asyncio
async def test_close_gives_up_after_the_drain_timeout() -> None:
    gate = threading.Event()
    model = Model(gate=gate)
    b = make(model)
    running = asyncio.ensure_future(b.submit(request([0]), None))
    await wait_until(model.started.is_set)
    queued = asyncio.ensure_future(b.submit(request([1]), None))
    await wait_until(lambda: b.queue_depth == 1)
    t0 = time.perf_counter()
    assert await b.close(drain_timeout_s=0.05) is False
    assert time.perf_counter() - t0 < 1.0
    for task in (running, queued):
        with pytest.raises(Unavailable):
            await task
    gate.set()
    assert 1 not in model.seen_ids()


@pytest.mark.asyncio
async def test_close_of_unused_batcher() -> None:
    b = make(Model())
    assert await b.close(1) is True
    assert b.closed


def test_constructor_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        make(Model(), max_batch_size=0)
    with pytest.raises(ValueError):
        make(Model(), instances=0)


def test_batching_default() -> None:
    dyn = TensorSpec("x", "FP32", (-1, 3))
    fixed = TensorSpec("x", "FP32", (1, 3))
    scalar = TensorSpec("s", "FP32", ())
    assert batching_default([dyn, TensorSpec("m", "INT64", (-1,))])
    assert not batching_default([dyn, fixed])
    assert not batching_default([scalar])
    assert not batching_default([])


class ThreadRecorder(Model):
    """A Model that notes the thread of every call, and can be made slow."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def __call__(self, inputs: dict[str, np.ndarray], output_names: list[str] | None) -> dict[str, np.ndarray]:
        self.threads.append(threading.get_ident())
        return super().__call__(inputs, output_names)


@pytest.mark.asyncio
async def test_fast_batches_compute_on_the_loop_and_slow_ones_in_the_executor() -> None:
    model = ThreadRecorder()
    b = make(model, inline_below_s=0.05)
    loop_thread = threading.get_ident()
    for i in range(6):
        out = await b.submit(request([i]), None)
        assert out["id"].tolist() == [i]
    assert all(t != loop_thread for t in model.threads[:3]), "measured in the executor first"
    assert all(t == loop_thread for t in model.threads[3:]), "then computed on the loop"
    model.delay_s = 0.5  # the next batch is slow: the one after it goes back to the executor
    await b.submit(request([6]), None)
    model.delay_s = 0.0
    await b.submit(request([7]), None)
    assert model.threads[-1] != loop_thread
    await b.close()


@pytest.mark.asyncio
async def test_batches_computed_on_the_loop_leave_room_for_answers_between_them() -> None:
    """Queued batches run one per loop turn, each caller gets its own rows, and deadlines and
    failure isolation behave as in the executor."""
    model = ThreadRecorder()
    b = make(model, inline_below_s=0.05, max_batch_size=4)
    for i in range(3):
        await b.submit(request([i]), None)
    results = await asyncio.gather(*(b.submit(request([10 + i]), None) for i in range(12)))
    assert [r["id"].tolist() for r in results] == [[10 + i] for i in range(12)]
    bad = request([99])
    bad["x"][:] = np.nan
    outcome = await asyncio.gather(b.submit(bad, None), b.submit(request([98]), None), return_exceptions=True)
    assert isinstance(outcome[0], ValueError) and outcome[1]["id"].tolist() == [98]
    assert all(t == threading.get_ident() for t in model.threads[3:])
    await b.close()


async def _warm_inline(b: DynamicBatcher) -> None:
    for i in range(3):  # measured in the executor first
        await b.submit(request([1000 + i]), None)


@pytest.mark.asyncio
async def test_a_batch_computed_on_the_loop_waits_for_a_loop_turn_that_brings_no_request() -> None:
    """Requests that come a loop turn or two after the first ones (the next requests of callers
    just answered) join their batch instead of making a small one of their own."""
    model = ThreadRecorder()
    b = make(model, inline_below_s=0.05, max_batch_size=64, max_queue_delay_ms=1000)
    await _warm_inline(b)

    async def after_turns(turns: int, i: int) -> dict[str, np.ndarray]:
        for _ in range(turns):
            await asyncio.sleep(0)
        return await b.submit(request([i]), None)

    results = await asyncio.gather(*(after_turns(i % 3, i) for i in range(9)))
    assert [r["id"].tolist() for r in results] == [[i] for i in range(9)]
    assert sorted(model.calls[-1]["id"].tolist()) == list(range(9)), "one batch of all nine"
    assert model.threads[-1] == threading.get_ident()
    await b.close()


@pytest.mark.asyncio
async def test_a_lone_request_computed_on_the_loop_is_not_held_back() -> None:
    model = ThreadRecorder()
    b = make(model, inline_below_s=0.05, max_queue_delay_ms=1000)
    await _warm_inline(b)
    started = time.perf_counter()
    assert (await b.submit(request([7]), None))["id"].tolist() == [7]
    assert time.perf_counter() - started < 0.5, "waited for the queue delay (1 s), not a quiet loop turn"
    await b.close()


@pytest.mark.asyncio
async def test_the_wait_for_a_quiet_loop_turn_is_bounded_by_the_queue_delay() -> None:
    """A request on every loop turn never leaves a quiet one: batches still go out once their
    oldest request has waited ``max_queue_delay_ms``, well before the stream of requests ends."""
    model = ThreadRecorder()
    b = make(model, inline_below_s=0.05, max_batch_size=10_000, max_queue_size=100_000, max_queue_delay_ms=5)
    await _warm_inline(b)
    warm_batches = len(model.calls)
    pending = []
    # A 5 ms delay makes dozens of batches in 0.25 s; the margin absorbs a stall of the test
    # process. It failed once late in a whole-suite run (not reproduced since); the known stall
    # there is a full garbage collection of the suite's heap, so the collector waits until the
    # stream ends.
    gc.collect()
    gc.disable()
    try:
        until = time.perf_counter() + 0.25
        i = 0
        while time.perf_counter() < until:
            pending.append(asyncio.ensure_future(b.submit(request([i]), None)))
            i += 1
            await asyncio.sleep(0)
        computed_while_streaming = len(model.calls) - warm_batches
    finally:
        gc.enable()
    results = await asyncio.gather(*pending)
    assert [r["id"].tolist() for r in results] == [[n] for n in range(i)]
    assert computed_while_streaming >= 5, computed_while_streaming
    await b.close()


async def _closed_loop_batches(model: ThreadRecorder, b: DynamicBatcher, rounds: int) -> list[int]:
    """Eight callers in a closed loop for ``rounds`` requests each: caller 0 sends its next
    request at once, the others a millisecond after their answer (their round trip). Returns
    the rows of every batch computed after the warm-up."""
    await _warm_inline(b)
    first = len(model.calls)

    async def caller(c: int) -> None:
        for r in range(rounds):
            out = await b.submit(request([c * 100 + r]), None)
            assert out["id"].tolist() == [c * 100 + r]
            if c:
                await asyncio.sleep(0.001)

    await asyncio.gather(*(caller(c) for c in range(8)))
    return [len(call["id"]) for call in model.calls[first:]]


@pytest.mark.asyncio
async def test_a_batch_costly_to_compute_small_waits_for_the_callers_of_the_last_one() -> None:
    """A version whose batches cost milliseconds even when small (the weights of a large model
    stream through the cache whatever the rows): after a batch computed on the loop, the next
    one waits (a little) for that batch's callers, so the one caller that comes back first does
    not get a batch of its own. Without it the callers fell into batches of 1 and 7."""
    model = ThreadRecorder()
    model.delay_s = 0.02
    b = make(model, inline_below_s=0.1, max_batch_size=64, max_queue_delay_ms=500)
    sizes = await _closed_loop_batches(model, b, rounds=6)
    assert sum(sizes) == 48
    assert sizes[1:] == [8] * (len(sizes) - 1), sizes  # the first forms as the callers start
    await b.close()


@pytest.mark.asyncio
async def test_a_batch_cheap_to_compute_small_does_not_wait_for_callers() -> None:
    """A version whose small batches cost microseconds does not wait for the callers of the
    last batch: a short batch costs it less than the wait would (the first caller back goes
    alone at the first quiet loop turn)."""
    model = ThreadRecorder()
    b = make(model, inline_below_s=0.1, max_batch_size=64, max_queue_delay_ms=500)
    sizes = await _closed_loop_batches(model, b, rounds=6)
    assert sum(sizes) == 48
    assert 1 in sizes[1:], sizes
    await b.close()


@pytest.mark.asyncio
async def test_the_wait_for_callers_that_do_not_come_back_is_short() -> None:
    """Seven one-shot callers and one that keeps calling, on a version whose small batches cost
    20 ms: after the first batch the lone caller waits at most about what a small batch costs,
    not the queue delay (500 ms), and it is never held back once it is the only caller."""
    model = ThreadRecorder()
    model.delay_s = 0.02
    b = make(model, inline_below_s=0.1, max_batch_size=64, max_queue_delay_ms=500)
    await _warm_inline(b)
    await asyncio.gather(*(b.submit(request([i]), None) for i in range(8)))
    for i in range(5):
        started = time.perf_counter()
        assert (await b.submit(request([10 + i]), None))["id"].tolist() == [10 + i]
        assert time.perf_counter() - started < 0.25, f"request {i} waited for the queue delay"
    await b.close()


@pytest.mark.asyncio
async def test_a_slot_kept_for_a_waiter_let_in_outlasts_a_batch_computed_on_the_loop() -> None:
    """A waiter let in keeps its slot for a few milliseconds, for the request its connection
    will send; a batch computed on the loop meanwhile blocks that read, so the wait counts from
    the batch's end (else every slow batch would void the slots and let in more waiters than
    there is room for: 429s)."""
    model = ThreadRecorder()
    b = make(model, inline_below_s=1.0, max_batch_size=1, max_queue_size=2)  # let-in level: 2
    await _warm_inline(b)
    model.delay_s = 0.03  # six times as long as a slot is kept (5 ms)
    tasks = [asyncio.ensure_future(b.submit(request([i]), None)) for i in range(2)]
    await asyncio.sleep(0)  # both queued: the queue is at the let-in level
    assert b.queue_depth == 2 and b.no_room
    let_in: list[str] = []
    b.when_room(lambda: let_in.append("waiter") or 1)  # its request would come later
    await wait_until(lambda: let_in == ["waiter"])  # let in as the first batch left the queue
    for _ in range(3):  # the batches computed on the loop (30 ms each) are behind us
        await asyncio.sleep(0)
    assert b._promised == 1, "the slot was voided by a wait the loop spent computing"
    results = await asyncio.gather(*tasks)
    assert [r["id"].tolist() for r in results] == [[0], [1]]
    await b.close()


@pytest.mark.asyncio
async def test_the_callers_of_a_batch_computed_on_the_loop_keep_their_slots_before_newer_waiters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While waiters exist, the room a batch computed on the loop makes is kept for the callers
    it answers (after waiters that have aged): each may claim one slot and read on instead of
    waiting; slots not claimed, or whose request does not come, go to the waiters in the end."""
    from modelyard.engine import batcher as batcher_module

    monkeypatch.setattr(batcher_module, "_ROOM_RECOUNT_S", 0.3)  # far from this test's steps
    let_in: list[str] = []
    seen: list[tuple[list[str], list[bool]]] = []

    class AfterBatch(Recorder):
        def on_batch(self, size: int, requests: int, queue_wait_s: float, queue_total_s: float, compute_s: float) -> None:
            super().on_batch(size, requests, queue_wait_s, queue_total_s, compute_s)
            if len(self.batches) == 4:  # the first batch after the three warm-up ones
                seen.append((list(let_in), [b.claim_return() for _ in range(3)]))

    model = ThreadRecorder()
    b = make(model, inline_below_s=1.0, max_batch_size=2, max_queue_size=4, observer=AfterBatch())
    await _warm_inline(b)
    tasks = [asyncio.ensure_future(b.submit(request([i]), None)) for i in range(4)]
    await asyncio.sleep(0)  # all four queued: the queue is at the let-in level
    for name in ("older", "newer"):
        b.when_room(lambda name=name: let_in.append(name) or 1)
    assert not b.claim_return(), "no batch taken yet: no slot kept"
    await wait_until(lambda: bool(seen))
    assert seen == [([], [True, True, False])], "its two slots were kept for its two callers, one each"
    await wait_until(lambda: len(let_in) == 2)  # unclaimed or unused slots reach the waiters
    results = await asyncio.gather(*tasks)
    assert [r["id"].tolist() for r in results] == [[i] for i in range(4)]
    await b.close()


@pytest.mark.asyncio
async def test_must_wait_is_no_room_less_a_slot_kept_for_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a transport asks after each answer to a caller refused lately, in one call: wait
    (True) while the queue is at its let-in level or waiters wait, except once for each slot
    kept for the callers of the batch just computed (the slot is taken); never once closing."""
    from modelyard.engine import batcher as batcher_module

    monkeypatch.setattr(batcher_module, "_ROOM_RECOUNT_S", 0.3)
    seen: list[list[bool]] = []

    class AfterBatch(Recorder):
        def on_batch(self, size: int, requests: int, queue_wait_s: float, queue_total_s: float, compute_s: float) -> None:
            super().on_batch(size, requests, queue_wait_s, queue_total_s, compute_s)
            if len(self.batches) == 4:
                seen.append([b.must_wait() for _ in range(3)])

    b = make(ThreadRecorder(), inline_below_s=1.0, max_batch_size=2, max_queue_size=4, observer=AfterBatch())
    await _warm_inline(b)
    assert not b.must_wait(), "an empty queue: read on"
    tasks = [asyncio.ensure_future(b.submit(request([i]), None)) for i in range(4)]
    await asyncio.sleep(0)
    assert b.must_wait() and b.must_wait(), "at the let-in level: wait (asking takes nothing)"
    b.when_room(lambda: 1)
    await wait_until(lambda: bool(seen))
    assert seen == [[False, False, True]], "the batch's two callers read on, one slot each; then wait"
    await asyncio.gather(*tasks)
    await b.close()
    assert not b.must_wait(), "closed: nothing to wait for"


async def _full_while_computing(
    model: Stepped,
) -> tuple[DynamicBatcher, list[asyncio.Future[dict[str, np.ndarray]]]]:
    """A batcher of one-row batches on a thread, computing request 0 (stepped), with requests 1
    and 2 filling its queue of two."""
    b = make(model, max_batch_size=1, max_queue_size=2)
    tasks = [asyncio.ensure_future(b.submit(request([0]), None))]
    await wait_until(lambda: b.in_flight == 1 and b.queue_depth == 0)  # computing, stepped
    tasks += [asyncio.ensure_future(b.submit(request([i]), None)) for i in (1, 2)]
    await wait_until(lambda: b.full)
    return b, tasks


@pytest.mark.asyncio
async def test_a_batch_on_a_thread_keeps_no_slots_for_its_callers() -> None:
    model = Stepped()
    b, tasks = await _full_while_computing(model)
    b.when_room(lambda: 1)
    model.step()
    await wait_until(lambda: b.waiting_for_room == 0)  # let in at once: nothing kept
    assert not b.claim_return()
    model.step(10)
    await asyncio.gather(*tasks)
    await b.close(1)


@pytest.mark.asyncio
async def test_a_slot_whose_request_went_to_another_queue_goes_to_the_next_waiter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A waiter let in whose request went to another queue (a deployment's lighter route: its
    callers wait on its heaviest route's queue) gives its slot back at once: the next waiter is
    let in, without waiting for the slot's recount."""
    from modelyard.engine import batcher as batcher_module

    monkeypatch.setattr(batcher_module, "_ROOM_RECOUNT_S", 30.0)  # no recount within this test
    model = Stepped()
    b, tasks = await _full_while_computing(model)  # let-in level 2: the queue is at it
    let_in: list[str] = []
    for name in ("older", "newer"):
        b.when_room(lambda name=name: let_in.append(name) or 1)
    model.step()  # request 1 leaves the queue: one slot, for the newest waiter
    await wait_until(lambda: let_in == ["newer"])
    assert b.no_room, "the slot is kept for the request of the waiter let in"
    b.spent_elsewhere()
    assert let_in == ["newer", "older"], "the slot its request did not take went to the next waiter"
    b.spent_elsewhere()  # the older waiter's request went elsewhere too: no waiter left to let in
    b.spent_elsewhere()  # more than was kept: nothing to give back, nothing goes negative
    assert b._promised == 0 and let_in == ["newer", "older"]
    b._returning = 1  # a caller of the last batch on the loop, whose next request the next batch awaits
    b.spent_elsewhere()
    assert b._returning == 0, "a request that went elsewhere is not awaited"
    model.step(10)
    await asyncio.gather(*tasks)
    await b.close(1)


@pytest.mark.asyncio
async def test_without_inline_batches_never_compute_on_the_loop() -> None:
    model = ThreadRecorder()
    b = make(model)
    for i in range(6):
        await b.submit(request([i]), None)
    assert threading.get_ident() not in model.threads
    await b.close()


class Stepped(Model):
    """A Model whose every call waits for a permit (``step()``)."""

    def __init__(self) -> None:
        super().__init__()
        self.permits = threading.Semaphore(0)

    def __call__(self, inputs: dict[str, np.ndarray], output_names: list[str] | None) -> dict[str, np.ndarray]:
        assert self.permits.acquire(timeout=10), "never stepped"
        return super().__call__(inputs, output_names)

    def step(self, n: int = 1) -> None:
        for _ in range(n):
            self.permits.release()


@pytest.mark.asyncio
async def test_waiters_for_room_are_let_in_newest_first_one_per_free_slot() -> None:
    """A transport holding a connection while the queue is full is called back when a slot
    frees, the newest waiter first (adaptive LIFO); one whose connection has gone, or that does
    not use its slot (sends nothing), does not keep the next one waiting."""
    model = Stepped()
    b, tasks = await _full_while_computing(model)
    let_in: list[str] = []

    def waiter(name: str, sends: bool, gone: bool = False) -> Callable[[], int]:
        def callback() -> int:
            let_in.append(name)
            if sends:  # its request is read and queued a moment later, as a socket's would be
                tasks.append(asyncio.ensure_future(b.submit(request([10 + len(tasks)]), None)))
            return not gone
        return callback

    for name, sends, gone in (("a", True, False), ("gone", False, True), ("b", False, False), ("c", True, False)):
        b.when_room(waiter(name, sends, gone))
    assert let_in == [] and b.waiting_for_room == 4, "the queue is full: nobody is let in"
    model.step()  # request 0 finishes, request 1 leaves the queue: one free slot
    await wait_until(lambda: let_in == ["c"])
    assert b.no_room, "the free slot is c's until its request comes; others still wait"
    await asyncio.sleep(0.05)
    assert let_in == ["c"] and b.full, "c's request took the slot"
    model.step()  # one more slot: b, who sends nothing, then past the gone connection to a
    await wait_until(lambda: let_in == ["c", "b", "gone", "a"])
    assert b.waiting_for_room == 0
    model.step(10)
    results = await asyncio.gather(*tasks)
    assert len(results) == 5 and all("y" in r for r in results)
    await b.close(1)


def test_let_in_level_is_two_batches_per_instance_within_the_queue() -> None:
    model = Model()
    assert make(model, max_batch_size=64, max_queue_size=256).let_in_level == 128
    assert make(model, max_batch_size=64, max_queue_size=512, instances=3).let_in_level == 384
    assert make(model, max_batch_size=16, max_queue_size=256).let_in_level == 64, "at least 64"
    assert make(model, max_batch_size=64, max_queue_size=100).let_in_level == 100, "at most the queue"


@pytest.mark.asyncio
async def test_let_in_level_stays_two_batches_while_short_batches_compute_on_the_loop() -> None:
    """Batches on the loop keep two batches too: the next one forms while the callers of the
    last one send their next requests (with one, a flood's batches were a third smaller)."""
    model = ThreadRecorder()
    b = make(model, inline_below_s=1.0, max_batch_size=100, max_queue_size=1000)
    assert b.let_in_level == 200, "two batches while they compute on a thread"
    await _warm_inline(b)
    assert b.let_in_level == 200, "two batches once short batches compute on the loop"
    await b.close()


async def _over_the_let_in_level(
    model: Stepped, max_batch_size: int
) -> tuple[DynamicBatcher, list[asyncio.Future[dict[str, np.ndarray]]]]:
    """A batcher whose let-in level is 64, computing request 0 (stepped) with 66 more queued."""
    b = make(model, max_batch_size=max_batch_size, max_queue_size=100)
    assert b.let_in_level == 64
    tasks = [asyncio.ensure_future(b.submit(request([0]), None))]
    await wait_until(lambda: b.in_flight == 1 and b.queue_depth == 0)  # computing, stepped
    tasks += [asyncio.ensure_future(b.submit(request([i]), None)) for i in range(1, 67)]
    await wait_until(lambda: b.queue_depth == 66)
    return b, tasks


@pytest.mark.asyncio
async def test_waiters_wait_while_the_queue_is_over_the_let_in_level_though_not_full() -> None:
    """A burst from callers not refused yet fills the queue to ``max_queue_size``; a transport
    waiting for room (its caller was refused) is let in only once the queue is below the let-in
    level, so a refused flood is served from a short queue."""
    model = Stepped()
    b, tasks = await _over_the_let_in_level(model, max_batch_size=1)
    assert not b.full and b.refusal() is None, "a burst is queued up to max_queue_size"
    assert b.no_room, "over the let-in level: a refused caller waits"
    let_in: list[str] = []
    b.when_room(lambda: let_in.append("held") or True)
    model.step(2)  # two more leave the queue for the model: 64 queued
    await wait_until(lambda: b.queue_depth == 64)
    await asyncio.sleep(0.02)
    assert let_in == [], "not let in at the level"
    model.step()  # 63 queued: one slot under the level
    await wait_until(lambda: let_in == ["held"])
    model.step(100)
    results = await asyncio.gather(*tasks)
    assert [r["id"].tolist() for r in results] == [[i] for i in range(67)]
    await b.close(1)


@pytest.mark.asyncio
async def test_a_waiter_that_may_bring_several_requests_takes_as_many_slots() -> None:
    """An HTTP/2 connection let in may carry many calls at once: its callback says how many,
    and that many slots are kept for it, so other waiters are not let in on top of them."""
    model = Stepped()
    b, tasks = await _over_the_let_in_level(model, max_batch_size=5)
    let_in: list[str] = []

    def connection(name: str, calls: int) -> Callable[[], int]:
        def callback() -> int:
            let_in.append(name)
            for _ in range(calls):  # read and queued a moment later, as a socket's would be
                tasks.append(asyncio.ensure_future(b.submit(request([100 + len(tasks)]), None)))
            return calls
        return callback

    b.when_room(connection("one call", 1))
    b.when_room(connection("three calls", 3))  # the newest: let in first
    model.step()  # the first batch ends, the next five rows leave the queue: 61, three slots
    await wait_until(lambda: let_in == ["three calls"])
    await wait_until(lambda: b.queue_depth == 64)
    await asyncio.sleep(0.02)
    assert let_in == ["three calls"] and b.waiting_for_room == 1, "its three slots were not given twice"
    model.step()  # five more leave: 59 queued
    await wait_until(lambda: let_in == ["three calls", "one call"])
    model.step(200)
    results = await asyncio.gather(*tasks)
    assert len(results) == 71 and all("y" in r for r in results)
    await b.close(1)


@pytest.mark.asyncio
async def test_waiters_that_have_waited_long_go_before_newer_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """Newest first, except that waiters past ``ROOM_AGED_S`` go first, oldest first: a busy
    queue cannot keep an old waiter out until its hard limit."""
    from modelyard.engine import batcher as batcher_module

    monkeypatch.setattr(batcher_module, "ROOM_AGED_S", 0.3)  # far from the 5 ms steps below
    model = Stepped()
    b = make(model, max_batch_size=1, max_queue_size=1)
    tasks = [asyncio.ensure_future(b.submit(request([0]), None))]
    await wait_until(lambda: b.in_flight == 1 and b.queue_depth == 0)
    tasks.append(asyncio.ensure_future(b.submit(request([1]), None)))
    await wait_until(lambda: b.full)
    let_in: list[str] = []
    for name in ("old", "older"):
        b.when_room(lambda name=name: let_in.append(name) or True)
    await asyncio.sleep(0.4)
    for name in ("new", "newer"):
        b.when_room(lambda name=name: let_in.append(name) or True)
    assert let_in == []
    model.step()  # one free slot; each one let in sends nothing, so the slot passes on after 5 ms
    await wait_until(lambda: len(let_in) == 4)
    assert let_in == ["old", "older", "newer", "new"]
    model.step(10)
    await asyncio.gather(*tasks)
    await b.close(1)


@pytest.mark.asyncio
async def test_a_waiter_is_let_in_at_once_after_the_longest_wait_or_on_close(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelyard.engine import batcher as batcher_module

    model = Stepped()
    b = make(model, max_batch_size=1, max_queue_size=1)
    let_in: list[str] = []
    b.when_room(lambda: let_in.append("room") or True)
    assert let_in == ["room"], "a queue with room lets a waiter in at once"
    tasks = [asyncio.ensure_future(b.submit(request([0]), None))]
    await wait_until(lambda: b.in_flight == 1 and b.queue_depth == 0)
    tasks.append(asyncio.ensure_future(b.submit(request([1]), None)))
    await wait_until(lambda: b.full)
    monkeypatch.setattr(batcher_module, "ROOM_WAIT_MAX_S", 0.05)
    b.when_room(lambda: let_in.append("waited") or True)
    await asyncio.sleep(0.01)
    assert let_in == ["room"]
    await wait_until(lambda: "waited" in let_in, timeout=2)
    assert b.full, "let in for having waited long enough, not for room"
    monkeypatch.setattr(batcher_module, "ROOM_WAIT_MAX_S", 60.0)
    b.when_room(lambda: let_in.append("closed") or True)
    closing = asyncio.ensure_future(b.close(5))
    await wait_until(lambda: "closed" in let_in, timeout=1)
    model.step(2)
    assert await closing is True
    assert [t.result()["id"].tolist() for t in tasks] == [[0], [1]]
