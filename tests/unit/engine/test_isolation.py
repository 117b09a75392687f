"""ProcessRuntime: a real ONNX model in a worker process that can die and come back."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelyard.engine.batcher import DynamicBatcher
from modelyard.engine.isolation import ProcessRuntime
from modelyard.errors import DeadlineExceeded, InvalidArtifact, InvalidInput, Unavailable
from modelyard.runtimes.base import Runtime, RuntimeOptions
from modelyard.tensors import TensorSpec
from tests.support.slow_onnx import random_weights, tanh_loop_expected, tanh_loop_model

WIDTH = 128
WEIGHTS = random_weights(WIDTH)


def build_loop_model(path: Path) -> Path:
    """y = tanh(... tanh(tanh(x @ W) @ W) ...) repeated ``n`` times: ``n`` sets how slow it is."""
    return tanh_loop_model(path, weights=WEIGHTS)


def expected(x: np.ndarray, n: int) -> np.ndarray:
    return tanh_loop_expected(x, WEIGHTS, n)


def feed(x: np.ndarray, n: int) -> dict[str, np.ndarray]:
    return {"x": x.astype(np.float32), "n": np.array(n, dtype=np.int64)}


def is_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (exited, or a zombie waiting for its reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def wait_for(cond, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_loop_model(tmp_path_factory.mktemp("onnx") / "slow.onnx")


@pytest.fixture(scope="module")
def runtime(model_path: Path):  # type: ignore[no-untyped-def]
    rt = ProcessRuntime(fmt="onnx", path=model_path, options=RuntimeOptions(), worker_threads=2)
    yield rt
    rt.close()


def test_predicts_like_the_model_and_reports_its_signature(runtime: ProcessRuntime) -> None:
    assert isinstance(runtime, Runtime)
    assert runtime.inputs == [
        TensorSpec("x", "FP32", (-1, WIDTH)),
        TensorSpec("n", "INT64", ()),
    ]
    assert runtime.outputs == [TensorSpec("y", "FP32", (-1, WIDTH))]
    assert runtime.memory_bytes() > 0
    assert runtime.pid is not None and runtime.pid != os.getpid()
    x = np.random.default_rng(1).standard_normal((3, WIDTH)).astype(np.float32)
    out = runtime.predict(feed(x, 3), ["y"])
    np.testing.assert_allclose(out["y"], expected(x, 3), rtol=1e-4, atol=1e-5)


def test_model_errors_cross_the_process_boundary_typed(runtime: ProcessRuntime) -> None:
    pid = runtime.pid
    with pytest.raises(InvalidInput):
        runtime.predict({"x": np.zeros((2, WIDTH + 1), np.float32), "n": np.array(1)})
    assert runtime.pid == pid  # the worker survived a bad request


def test_concurrent_calls_from_threads_each_get_their_own_answer(runtime: ProcessRuntime) -> None:
    rng = np.random.default_rng(2)
    inputs = [rng.standard_normal((1 + i % 3, WIDTH)).astype(np.float32) for i in range(24)]
    results: list[np.ndarray | None] = [None] * len(inputs)

    def work(k: int) -> None:
        for i in range(k, len(inputs), 6):
            results[i] = runtime.predict(feed(inputs[i], 2))["y"]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for x, y in zip(inputs, results):
        assert y is not None
        np.testing.assert_allclose(y, expected(x, 2), rtol=1e-4, atol=1e-5)


def test_killed_worker_fails_in_flight_calls_fast_and_restarts(model_path: Path) -> None:
    rt = ProcessRuntime(fmt="onnx", path=model_path, options=RuntimeOptions())
    try:
        old_pid = rt.pid
        assert old_pid is not None
        x = np.ones((64, WIDTH), np.float32)
        outcome: list[BaseException | dict[str, np.ndarray]] = []
        failed_at: list[float] = []

        def slow_call() -> None:
            try:
                outcome.append(rt.predict(feed(x, 10**7)))  # minutes of work
            except BaseException as exc:
                outcome.append(exc)
            failed_at.append(time.monotonic())

        caller = threading.Thread(target=slow_call)
        caller.start()
        time.sleep(0.3)  # let the call reach the worker and start computing
        assert caller.is_alive()
        killed_at = time.monotonic()
        os.kill(old_pid, 9)
        caller.join(5)
        assert not caller.is_alive(), "the in-flight call hung after the worker died"
        assert isinstance(outcome[0], Unavailable)
        assert outcome[0].http_status == 503
        assert "worker died" in outcome[0].message
        assert failed_at[0] - killed_at < 2.0

        out = rt.predict(feed(np.ones((1, WIDTH), np.float32), 1))
        np.testing.assert_allclose(out["y"], expected(np.ones((1, WIDTH)), 1), rtol=1e-4, atol=1e-5)
        assert rt.pid not in (None, old_pid)
        assert rt.restarts == 1
        assert wait_for(lambda: is_gone(old_pid), 5)
    finally:
        rt.close()


def test_hung_worker_is_killed_after_the_call_timeout(model_path: Path) -> None:
    rt = ProcessRuntime(fmt="onnx", path=model_path, options=RuntimeOptions(), call_timeout_s=0.3)
    try:
        old_pid = rt.pid
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            rt.predict(feed(np.ones((64, WIDTH), np.float32), 10**7))
        assert time.monotonic() - t0 < 2.0
        out = rt.predict(feed(np.ones((1, WIDTH), np.float32), 1))
        assert out["y"].shape == (1, WIDTH)
        assert rt.pid not in (None, old_pid)
    finally:
        rt.close()


async def test_batcher_over_a_process_runtime(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])],
        initializer=[numpy_helper.from_array(WEIGHTS, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "linear.onnx")
    rt = ProcessRuntime(fmt="onnx", path=tmp_path / "linear.onnx", options=RuntimeOptions())
    sizes: list[int] = []

    class Sizes:
        def on_batch(self, size: int, requests: int, queue_wait_s: float, queue_total_s: float, compute_s: float) -> None:
            sizes.append(size)

        def on_reject(self, n: int = 1) -> None:
            raise AssertionError("nothing should be rejected")

    batcher = DynamicBatcher(
        predict=rt.predict,
        max_batch_size=32,
        max_queue_delay_ms=2,
        max_queue_size=256,
        instances=1,
        observer=Sizes(),
    )
    try:
        rng = np.random.default_rng(3)
        xs = [rng.standard_normal((1, WIDTH)).astype(np.float32) for _ in range(40)]
        outs = await asyncio.gather(*(batcher.submit({"x": x}, None) for x in xs))
        for x, out in zip(xs, outs):
            np.testing.assert_allclose(out["y"], x @ WEIGHTS, rtol=1e-4, atol=1e-5)
        assert max(sizes) > 1 and sum(sizes) == 40
        assert batcher.queue_depth == 0
        assert await batcher.close(5)
    finally:
        rt.close()


def test_close_stops_the_worker_and_fails_later_calls(model_path: Path) -> None:
    rt = ProcessRuntime(fmt="onnx", path=model_path, options=RuntimeOptions())
    pid = rt.pid
    assert pid is not None
    rt.close()
    assert wait_for(lambda: is_gone(pid), 5)
    with pytest.raises(Unavailable):
        rt.predict(feed(np.ones((1, WIDTH), np.float32), 1))
    rt.close()  # idempotent


def test_close_during_a_long_call_fails_it_and_kills_the_worker(model_path: Path) -> None:
    rt = ProcessRuntime(fmt="onnx", path=model_path, options=RuntimeOptions())
    pid = rt.pid
    assert pid is not None
    outcome: list[BaseException] = []

    def slow_call() -> None:
        try:
            rt.predict(feed(np.ones((64, WIDTH), np.float32), 10**7))
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=slow_call)
    caller.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    rt.close(grace_s=0.2)
    caller.join(5)
    assert not caller.is_alive()
    assert isinstance(outcome[0], Unavailable)
    assert time.monotonic() - t0 < 3
    assert wait_for(lambda: is_gone(pid), 5)


def test_load_error_is_raised_by_the_constructor(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not an onnx model")
    with pytest.raises(InvalidArtifact):
        ProcessRuntime(fmt="onnx", path=bad, options=RuntimeOptions())
    with pytest.raises(InvalidArtifact):
        ProcessRuntime(fmt="no-such-format", path=bad, options=RuntimeOptions())


def test_worker_exits_when_the_server_process_dies(model_path: Path, tmp_path: Path) -> None:
    script = tmp_path / "server.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            from pathlib import Path
            from modelyard.engine.isolation import ProcessRuntime
            from modelyard.runtimes.base import RuntimeOptions
            if __name__ == "__main__":
                rt = ProcessRuntime(fmt="onnx", path=Path({str(model_path)!r}),
                                    options=RuntimeOptions())
                print(rt.pid, flush=True)
                time.sleep(60)
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    server = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert server.stdout is not None
        worker_pid = int(server.stdout.readline())
        assert not is_gone(worker_pid)
        server.kill()
        server.wait(5)
        assert wait_for(lambda: is_gone(worker_pid), 5), "the worker outlived its server"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(5)
        assert server.stdout is not None
        server.stdout.close()
