"""Small ONNX models and helpers for the serving-engine integration tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from tritonclient.utils import InferenceServerException
from onnx import TensorProto, helper, numpy_helper

from modelyard.core.registry import VersionInfo
from tests.support.live import LiveServer, wait_until
from tests.support.slow_onnx import random_weights, tanh_loop_expected, tanh_loop_model

WIDTH = 4
SLOW_WIDTH = 64
_SLOW_W = random_weights(SLOW_WIDTH)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def scale_model(path: Path, factor: float) -> Path:
    """``y = x * factor`` on ``x: FP32[-1, 4]``."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])],
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])],
        initializer=[numpy_helper.from_array(np.array(factor, np.float32), "k")],
    )
    return _save(graph, path)


def label_model(path: Path) -> Path:
    """``y = argmax(x)`` on ``x: FP32[-1, 4]``: one INT64 label per row (``y: [-1]``)."""
    graph = helper.make_graph(
        [helper.make_node("ArgMax", ["x"], ["y"], axis=1, keepdims=0)],
        "labels",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["batch"])],
    )
    return _save(graph, path)


def failing_model(path: Path) -> Path:
    """``y = table[int(x)]``: fails at run time (index out of range) for any value >= 10."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT64),
            helper.make_node("Gather", ["table", "i"], ["y"]),
        ],
        "failing",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])],
        initializer=[numpy_helper.from_array(np.arange(10, dtype=np.float32), "table")],
    )
    return _save(graph, path)


def slow_model(path: Path, iterations: int) -> Path:
    """``x: FP32[-1, 64]`` through ``iterations`` rounds of tanh(x @ W): batchable and slow."""
    return tanh_loop_model(path, weights=_SLOW_W, iterations=iterations)


def slow_expected(x: np.ndarray, iterations: int) -> np.ndarray:
    return tanh_loop_expected(x, _SLOW_W, iterations)


def register(
    server: LiveServer, name: str, path: Path, *, stage: str = "production", config: dict[str, Any] | None = None,
    tenant: str | None = None,
) -> VersionInfo:
    """Register ``path`` as the next version of ``name`` in ``tenant`` (a name; the default
    tenant when ``None``)."""
    platform = server.platform
    assert platform is not None
    tenant = platform.keys.ensure_default_tenant() if tenant is None else platform.tenants.get(tenant).id
    with open(path, "rb") as f:
        staged = platform.artifacts.stage_stream(f, max_bytes=path.stat().st_size)
    return platform.registry.register_version(
        tenant_id=tenant, model_name=name, staged=staged, stage=stage, config=config or {}
    )


@contextmanager
def on_grpc_transport(server: LiveServer, tmp_path: Path, transport: str, **settings: Any) -> Iterator[LiveServer]:
    """``server`` itself for the native gRPC transport; for ``grpcio``, a server of its own (in
    ``tmp_path``, with ``settings`` as ``server`` has them) on that transport, with an ``alpha``
    scale model, stopped afterwards."""
    if transport != "grpcio":
        yield server
        return
    live = LiveServer.build(tmp_path / "home", builtin_models=False, grpc_transport="grpcio", **settings).start()
    try:
        register(live, "alpha", scale_model(tmp_path / "alpha.onnx", 2.0))
        yield live
    finally:
        live.stop()


def canary_models(first: LiveServer, folder: Path) -> None:
    """``double`` versions 1 (``y = x``) and 2 (``y = 2x``), and ``flaky`` (fails on any value
    of 10 or more): a primary, a good canary and a bad one."""
    register(first, "double", scale_model(folder / "one.onnx", 1.0))
    register(first, "double", scale_model(folder / "two.onnx", 2.0))
    register(first, "flaky", failing_model(folder / "failing.onnx"))


@contextmanager
def cluster_of_two(
    home: Path, setup: Callable[[LiveServer], object], **settings: Any
) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Two servers on one database and artifact store (a cluster's shape), gRPC off: the first
    starts, ``setup`` registers what the test needs through it, then the second starts."""
    shared = {"builtin_models": False, "grpc_enabled": False, **settings}
    first = LiveServer.build(home, **shared).start()
    second = None
    try:
        setup(first)
        second = LiveServer.build(home, **shared).start()
        yield first, second
    finally:
        if second is not None:
            second.stop()
        first.stop()


def grpc_refuses(missing: Callable[[], object], without_key: Callable[[], object]) -> None:
    """A tritonclient gRPC call naming an unknown model gets NOT_FOUND; one without a key,
    UNAUTHENTICATED."""
    for call, status in ((missing, "StatusCode.NOT_FOUND"), (without_key, "StatusCode.UNAUTHENTICATED")):
        with pytest.raises(InferenceServerException) as refused:
            call()
        assert refused.value.status() == status


def infer_body(x: np.ndarray, name: str = "x") -> dict[str, Any]:
    return {"inputs": [{"name": name, "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}


def output(body: dict[str, Any], name: str = "y") -> np.ndarray:
    for o in body["outputs"]:
        if o["name"] == name:
            return np.asarray(o["data"], np.float32).reshape(o["shape"])
    raise KeyError(name)


def queue_full_refusals(server: LiveServer, model: str) -> tuple[float, float]:
    """A model's refusals for a full queue on the server's /metrics: (rejections, errors)."""
    with server.client() as client:
        text = client.get("/metrics").text
    return (metric(text, "modelyard_rejections_total", model=model, reason="queue_full"),
            metric(text, "modelyard_inference_errors_total", model=model, code="queue_full"))


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` in a /metrics text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric_name, _, label_text = head.partition("{")
        if metric_name != name:
            continue
        if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            total += float(value)
    return total


#: rows of a request that keeps a 160,000-step ``slow_model`` computing while a test fills the
#: queue behind it (``wait_for_computing``, ``wait_for_queue``): 2.1 s in ONNX Runtime on a fast VM.
#: 64 rows took 0.65 s there, and once in a clean-clone CI run the queue had room again before the
#: call meant to be refused arrived.
HOLDING_ROWS = 256


def wait_for_computing(server: LiveServer) -> None:
    """Wait until the server computes one request with nothing queued (a long one sent just
    before), rather than for a fixed time: under a busy test run its reading may come late."""
    assert server.platform is not None
    manager = server.platform.manager

    def alone() -> bool:
        batchers = [b for m in manager.loaded() for b in m.batchers.values()]
        return manager.in_flight == 1 and bool(batchers) and all(
            b.queue_depth == 0 and b.in_flight == 1 for b in batchers if b.in_flight
        )

    wait_until(alone)


def wait_for_queue(server: LiveServer, depth: int) -> None:
    """Wait until the server's queues hold ``depth`` requests in all."""
    assert server.platform is not None
    manager = server.platform.manager
    wait_until(lambda: sum(b.queue_depth for m in manager.loaded() for b in m.batchers.values()) == depth)
