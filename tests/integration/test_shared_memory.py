"""Triton's system shared-memory extension through a real server: ``tritonclient``'s own shared
memory utilities and clients (HTTP, and gRPC on both transports) register regions, infer with an
input read from one and an output written to another, and unregister them; regions belong to a
tenant; every bad registration or window gets a clear 4xx and changes nothing; a server started
without ``MODELYARD_SHARED_MEMORY`` refuses regions and says how to turn them on."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from tests.integration._serving import on_grpc_transport, register, scale_model
from tests.support.live import LiveServer

X = np.arange(8, dtype=np.float32).reshape(2, 4)
NBYTES = X.nbytes  # 32


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("shm")
    live = LiveServer.build(home / "home", builtin_models=False, shared_memory=True).start()
    try:
        register(live, "alpha", scale_model(home / "alpha.onnx", 2.0))
        yield live
    finally:
        live.stop()


class Regions:
    """Shared-memory objects made for one test (unique keys), destroyed after it."""

    def __init__(self) -> None:
        self.handles: list[Any] = []

    def make(self, name: str, byte_size: int, values: np.ndarray | None = None) -> tuple[Any, str]:
        key = f"/modelyard-test-{uuid.uuid4().hex[:12]}"
        handle = shm.create_shared_memory_region(name, key, byte_size, create_only=True)
        self.handles.append(handle)
        if values is not None:
            shm.set_shared_memory_region(handle, [values])
        return handle, key


@pytest.fixture
def regions(server: LiveServer) -> Iterator[Regions]:
    made = Regions()
    yield made
    with server.client() as admin:
        admin.post("/v2/systemsharedmemory/unregister")
    for handle in made.handles:
        shm.destroy_shared_memory_region(handle)


def _status(client: Any) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in client.get("/v2/systemsharedmemory/status").json()}


def test_tritonclient_http_infers_through_regions(server: LiveServer, regions: Regions) -> None:
    _, in_key = regions.make("in", NBYTES, X)
    out, out_key = regions.make("out", NBYTES)
    triton = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    headers = server.headers
    triton.register_system_shared_memory("in", in_key, NBYTES, headers=headers)
    triton.register_system_shared_memory("out", out_key, NBYTES, headers=headers)
    status = triton.get_system_shared_memory_status(headers=headers)
    assert {r["name"]: (r["key"], r["offset"], r["byte_size"]) for r in status} == {
        "in": (in_key, 0, NBYTES), "out": (out_key, 0, NBYTES),
    }
    assert "system_shared_memory" in triton.get_server_metadata(headers=headers)["extensions"]

    x = triton_http.InferInput("x", list(X.shape), "FP32")
    x.set_shared_memory("in", NBYTES)
    y = triton_http.InferRequestedOutput("y")
    y.set_shared_memory("out", NBYTES)
    for _ in range(3):  # the same request again: nothing of the first is remembered wrongly
        result = triton.infer("alpha", [x], outputs=[y], headers=headers)
        assert result.get_output("y") == {  # no data: it is in the region
            "name": "y", "datatype": "FP32", "shape": [2, 4],
            "parameters": {"shared_memory_region": "out", "shared_memory_byte_size": NBYTES},
        }
        np.testing.assert_array_equal(shm.get_contents_as_numpy(out, np.float32, [2, 4]), X * 2)

    # an input from a region beside an input in the body's binary part, and an output returned
    # in the answer: an output not asked into a region comes back as usual
    triton.unregister_system_shared_memory("out", headers=headers)
    plain = triton.infer("alpha", [x], outputs=[triton_http.InferRequestedOutput("y", binary_data=True)],
                         headers=headers)
    np.testing.assert_array_equal(plain.as_numpy("y"), X * 2)
    assert [r["name"] for r in triton.get_system_shared_memory_status(headers=headers)] == ["in"]
    triton.unregister_system_shared_memory(headers=headers)
    assert triton.get_system_shared_memory_status(headers=headers) == []
    triton.close()


def test_a_window_at_an_offset(server: LiveServer, regions: Regions) -> None:
    """A region at an offset of its object, and tensors at offsets within regions."""
    handle, key = regions.make("both", 256)
    shm.set_shared_memory_region(handle, [X], offset=64 + 16)
    with server.client() as admin:
        assert admin.post("/v2/systemsharedmemory/region/both/register",
                          json={"key": key, "offset": 64, "byte_size": 192}).status_code == 200
        body = {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "parameters": {
                "shared_memory_region": "both", "shared_memory_offset": 16, "shared_memory_byte_size": NBYTES}}],
            "outputs": [{"name": "y", "parameters": {
                "shared_memory_region": "both", "shared_memory_offset": 100, "shared_memory_byte_size": 64}}],
        }
        r = admin.post("/v2/models/alpha/infer", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [2, 4], "parameters": {
            "shared_memory_region": "both", "shared_memory_offset": 100, "shared_memory_byte_size": NBYTES}}]
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.float32, [2, 4], offset=164), X * 2)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.float32, [2, 4], offset=80), X)


@pytest.mark.parametrize("transport", ["native", "grpcio"])
def test_tritonclient_grpc_infers_through_regions(
    server: LiveServer, regions: Regions, tmp_path: Path, transport: str
) -> None:
    _, in_key = regions.make("in", NBYTES, X)
    out, out_key = regions.make("out", NBYTES)
    with on_grpc_transport(server, tmp_path, transport, shared_memory=True) as live:
        triton = triton_grpc.InferenceServerClient(live.grpc_url)
        headers = {"authorization": f"Bearer {live.admin_key}"}  # gRPC metadata keys are lowercase
        triton.unregister_system_shared_memory(headers=headers)
        triton.unregister_cuda_shared_memory(headers=headers)  # what Triton's examples do first
        triton.register_system_shared_memory("in", in_key, NBYTES, headers=headers)
        triton.register_system_shared_memory("out", out_key, NBYTES, headers=headers)
        status = triton.get_system_shared_memory_status(headers=headers, as_json=True)
        assert {name: r["key"] for name, r in status["regions"].items()} == {"in": in_key, "out": out_key}
        assert triton.get_cuda_shared_memory_status(headers=headers, as_json=True) == {}

        x = triton_grpc.InferInput("x", list(X.shape), "FP32")
        x.set_shared_memory("in", NBYTES)
        y = triton_grpc.InferRequestedOutput("y")
        y.set_shared_memory("out", NBYTES)
        for _ in range(3):
            triton.infer("alpha", [x], outputs=[y], headers=headers)
            np.testing.assert_array_equal(shm.get_contents_as_numpy(out, np.float32, [2, 4]), X * 2)

        with pytest.raises(InferenceServerException) as refused:
            triton.register_system_shared_memory("in", in_key, NBYTES, headers=headers)
        assert refused.value.status() == "StatusCode.ALREADY_EXISTS"
        with pytest.raises(InferenceServerException) as refused:
            triton.register_cuda_shared_memory("gpu", b"aGFuZGxl", 0, 16, headers=headers)  # base64
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT" and "host memory" in refused.value.message()
        triton.unregister_system_shared_memory("out", headers=headers)
        with pytest.raises(InferenceServerException) as refused:
            triton.infer("alpha", [x], outputs=[y], headers=headers)
        assert refused.value.status() == "StatusCode.NOT_FOUND" and "'out'" in refused.value.message()
        triton.unregister_system_shared_memory(headers=headers)
        triton.close()


def _infer(client: Any, region: str, byte_size: int = NBYTES, *, output: dict[str, Any] | None = None) -> Any:
    body: dict[str, Any] = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "parameters": {
        "shared_memory_region": region, "shared_memory_byte_size": byte_size}}]}
    if output is not None:
        body["outputs"] = [{"name": "y", "parameters": output}]
    return client.post("/v2/models/alpha/infer", json=body)


@pytest.mark.parametrize(("registration", "status", "fragments"), [
    ({"key": "/modelyard-test-none", "byte_size": 8}, 400, ["no shared memory object", "create it first"]),
    ({"key": "/a/b", "byte_size": 8}, 400, ["POSIX shared memory object"]),
    ({"key": "", "byte_size": 8}, 400, ["POSIX shared memory object"]),
    ({"key": 5, "byte_size": 8}, 400, ["POSIX shared memory object"]),
    ("made", 400, ["byte_size must be a whole number >= 1"]),
    ({"byte_size": 8}, 400, ["POSIX shared memory object"]),
])
def test_bad_registrations_are_refused(
    server: LiveServer, regions: Regions, registration: Any, status: int, fragments: list[str]
) -> None:
    _, key = regions.make("r", 64)
    body = {"key": key, "byte_size": 0} if registration == "made" else registration
    with server.client() as admin:
        r = admin.post("/v2/systemsharedmemory/region/r/register", json=body)
        assert r.status_code == status, r.text
        assert all(f in r.json()["error"]["message"] for f in fragments), r.text
        assert _status(admin) == {}


def test_windows_past_the_end_and_wrong_sizes_are_refused(server: LiveServer, regions: Regions) -> None:
    handle, key = regions.make("r", 64, X)
    with server.client() as admin:
        r = admin.post("/v2/systemsharedmemory/region/r/register", json={"key": key, "offset": 48, "byte_size": 32})
        assert r.status_code == 400 and "past the end" in r.json()["error"]["message"], r.text
        assert admin.post("/v2/systemsharedmemory/region/r/register",
                          json={"key": key, "byte_size": 64}).status_code == 200
        r = admin.post("/v2/systemsharedmemory/region/r/register", json={"key": key, "byte_size": 64})
        assert r.status_code == 409 and "already registered" in r.json()["error"]["message"], r.text

        r = _infer(admin, "r", 24)  # not the 32 bytes of a [2, 4] FP32
        assert r.status_code == 400 and "24 bytes" in r.json()["error"]["message"], r.text
        r = admin.post("/v2/models/alpha/infer", json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4],
                       "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": NBYTES,
                                      "shared_memory_offset": 48}}]})
        assert r.status_code == 400 and "do not fit in region 'r'" in r.json()["error"]["message"], r.text
        r = _infer(admin, "r", output={"shared_memory_region": "r", "shared_memory_byte_size": 16})
        assert r.status_code == 400 and "output 'y' is 32 bytes" in r.json()["error"]["message"], r.text
        r = _infer(admin, "r", output={"shared_memory_region": "r"})
        assert r.status_code == 400 and "shared_memory_byte_size" in r.json()["error"]["message"], r.text
        r = _infer(admin, "nowhere")
        assert r.status_code == 404 and "'nowhere'" in r.json()["error"]["message"], r.text
        r = admin.post("/v2/models/alpha/infer", json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4],
                       "data": X.ravel().tolist(), "parameters": {"shared_memory_region": "r"}}]})
        assert r.status_code == 400 and "also carries data" in r.json()["error"]["message"], r.text

        # The client shrinks the object under the registered region: an error, not a crash.
        fd = os.open(f"/dev/shm{key}", os.O_RDWR)
        try:
            os.ftruncate(fd, 16)
        finally:
            os.close(fd)
        r = _infer(admin, "r")
        assert r.status_code == 400 and "smaller than when it was registered" in r.json()["error"]["message"], r.text
        assert admin.get("/v2/health/live").status_code == 200
        assert admin.post("/v2/systemsharedmemory/region/r/unregister").status_code == 200
        r = admin.post("/v2/systemsharedmemory/region/r/unregister")
        assert r.status_code == 404 and "no shared memory region 'r'" in r.json()["error"]["message"], r.text
        r = admin.get("/v2/systemsharedmemory/region/r/status")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text


def test_a_request_failed_by_its_output_region_is_traced_with_its_error(server: LiveServer, regions: Regions) -> None:
    """The model computed, then its output did not fit the region: the request's trace is still
    written, with the error's code and its queue and compute times."""
    _, key = regions.make("small", 16)
    traces = server.settings.resolved_home / "traces" / "shm.jsonl"
    with server.client() as admin:
        assert admin.post("/v2/systemsharedmemory/region/small/register",
                          json={"key": key, "byte_size": 16}).status_code == 200
        r = admin.post("/v2/models/alpha/trace/setting",
                       json={"trace_level": ["TIMESTAMPS"], "trace_rate": "1", "trace_file": "shm.jsonl"})
        assert r.status_code == 200, r.text
        try:
            r = admin.post("/v2/models/alpha/infer", json={
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": X.ravel().tolist()}],
                "outputs": [{"name": "y", "parameters": {"shared_memory_region": "small",
                                                         "shared_memory_byte_size": 16}}]})
            assert r.status_code == 400 and "output 'y' is 32 bytes" in r.json()["error"]["message"], r.text
        finally:
            admin.post("/v2/models/alpha/trace/setting", json={"trace_level": ["OFF"]}).raise_for_status()
    assert server.platform is not None and server.platform.tracer.files.drain()  # its thread wrote it
    (trace,) = [json.loads(line) for line in traces.read_text().splitlines()]
    assert (trace["model_name"], trace["outcome"]) == ("alpha", "invalid_input")
    assert [s["name"] for s in trace["timestamps"]] == [
        "REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_END", "REQUEST_END"]


def test_regions_belong_to_their_tenant(server: LiveServer, regions: Regions, tmp_path: Path) -> None:
    _, key = regions.make("mine", NBYTES, X)
    with server.client() as admin:
        assert admin.post("/v2/systemsharedmemory/region/mine/register",
                          json={"key": key, "byte_size": NBYTES}).status_code == 200
        assert admin.post("/api/v1/tenants", json={"name": "shm-other"}).status_code == 201
        owner = admin.post("/api/v1/keys", json={"role": "owner", "tenant": "shm-other"}).json()["secret"]
    register(server, "alpha", scale_model(tmp_path / "alpha.onnx", 3.0), tenant="shm-other")
    with server.client(owner) as other:
        assert _status(other) == {}
        r = _infer(other, "mine")  # a model of its own, a region of another tenant's name
        assert r.status_code == 404 and "no shared memory region 'mine'" in r.json()["error"]["message"], r.text
        r = other.post("/v2/systemsharedmemory/region/theirs/register", json={"key": key, "byte_size": NBYTES})
        assert r.status_code == 409 and "another tenant" in r.json()["error"]["message"], r.text
        assert other.post("/v2/systemsharedmemory/unregister").status_code == 200  # touches nobody else's
    with server.client() as admin:
        assert set(_status(admin)) == {"mine"}
    with server.client() as admin:
        viewer = admin.post("/api/v1/keys", json={"role": "viewer"}).json()["secret"]
    with server.client(viewer) as reader:  # viewers may infer, so they may use regions
        assert set(_status(reader)) == {"mine"}


def test_cuda_regions_are_answered_as_none(server: LiveServer) -> None:
    with server.client() as admin:
        assert admin.get("/v2/cudasharedmemory/status").json() == []
        assert admin.post("/v2/cudasharedmemory/unregister").status_code == 200
        assert admin.post("/v2/cudasharedmemory/region/g/unregister").status_code == 404
        r = admin.post("/v2/cudasharedmemory/region/g/register", json={"raw_handle": {"b64": ""}, "byte_size": 8})
        assert r.status_code == 400 and r.json()["error"]["code"] == "not_enabled", r.text
        assert admin.get("/v2/cudasharedmemory/region/g/status").status_code == 404


def test_a_server_without_it_refuses_regions(tmp_path: Path) -> None:
    live = LiveServer.build(tmp_path / "home", builtin_models=False).start()
    handles = Regions()
    try:
        register(live, "alpha", scale_model(tmp_path / "alpha.onnx", 2.0))
        _, key = handles.make("r", NBYTES, X)
        with live.client() as admin:
            for r in (
                admin.post("/v2/systemsharedmemory/region/r/register", json={"key": key, "byte_size": NBYTES}),
                _infer(admin, "r"),
            ):
                assert r.status_code == 400 and r.json()["error"]["code"] == "not_enabled", r.text
                assert "MODELYARD_SHARED_MEMORY=true" in r.json()["error"]["message"]
            assert admin.get("/v2/systemsharedmemory/status").json() == []
            assert "system_shared_memory" not in admin.get("/v2").json()["extensions"]
    finally:
        live.stop()
        for handle in handles.handles:
            shm.destroy_shared_memory_region(handle)
