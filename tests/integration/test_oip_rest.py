"""OIP v2 over REST against a real server with httpx: every datatype end to end, nested and flat
data, requested outputs, parameters, id echo, the binary extension, and every bad input."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.integration.onnx_models import DTYPE_CASES, add_model, identity_model, sample_for, two_input_model
from tests.support.live import LiveServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    srv = LiveServer.build(tmp_path_factory.mktemp("oip") / "home", grpc_enabled=False).start()
    with srv.client() as c:
        for dt in DTYPE_CASES:
            r = c.post(f"/api/v1/models/id-{dt.lower()}/versions", content=identity_model(dt))
            assert r.status_code == 201, r.text
        assert c.post("/api/v1/models/add/versions", content=add_model(1.0)).status_code == 201
        assert c.post("/api/v1/models/add/versions?stage=production", content=add_model(10.0)).status_code == 201
        assert c.post("/api/v1/models/add/versions", content=add_model(100.0)).status_code == 201
        assert c.post("/api/v1/models/two/versions", content=two_input_model()).status_code == 201
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def _json_value(x: np.ndarray, dt: str) -> list:
    if dt == "BYTES":
        return [v.decode() for v in x.ravel()]
    return x.ravel().tolist()


def _decode(values: list, dt: str, shape: list[int]) -> np.ndarray:
    if dt == "BYTES":
        return np.array([v.encode() for v in values], dtype=object).reshape(shape)
    return np.array(values, dtype=DTYPE_CASES[dt][1]).reshape(shape)


def _error(resp: httpx.Response, status: int, *words: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"])
    for w in words:
        assert w.lower() in body["error"]["message"].lower(), body
    return body["error"]


# -- server and model endpoints ------------------------------------------------------------
def test_health_needs_no_key(server: LiveServer) -> None:
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    r = httpx.get(f"{server.url}/v2/health/ready")
    assert r.status_code == 200 and r.json() == {"ready": True}


def test_server_metadata(client: httpx.Client) -> None:
    meta = client.get("/v2").json()
    assert meta["name"] == "modelyard" and isinstance(meta["version"], str)
    assert "binary_tensor_data" in meta["extensions"]


def test_model_metadata_default_is_production(client: httpx.Client) -> None:
    meta = client.get("/v2/models/add").json()
    assert meta["name"] == "add" and meta["versions"] == ["2"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
    assert [o["name"] for o in meta["outputs"]] == ["y", "z"]
    assert client.get("/v2/models/add/versions/3").json()["versions"] == ["3"]
    # without production: the latest
    assert client.get("/v2/models/two").json()["versions"] == ["1"]


def test_model_ready(client: httpx.Client) -> None:
    r = client.get("/v2/models/add/ready")
    assert r.status_code == 200 and r.json()["ready"] is True
    assert client.get("/v2/models/add/versions/1/ready").status_code == 200
    _error(client.get("/v2/models/nope/ready"), 404)
    _error(client.get("/v2/models/add/versions/42/ready"), 404)


# -- inference -----------------------------------------------------------------------------
@pytest.mark.parametrize("dt", list(DTYPE_CASES))
def test_every_datatype_json_round_trip(client: httpx.Client, dt: str) -> None:
    x = sample_for(dt)
    body = {"id": f"req-{dt}", "inputs": [{"name": "x", "datatype": dt, "shape": list(x.shape), "data": _json_value(x, dt)}]}
    r = client.post(f"/v2/models/id-{dt.lower()}/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == f"req-{dt}" and out["model_name"] == f"id-{dt.lower()}" and out["model_version"] == "1"
    (y,) = out["outputs"]
    assert y["name"] == "y" and y["datatype"] == dt and y["shape"] == list(x.shape)
    got = _decode(y["data"], dt, y["shape"])
    if dt == "FP16":
        np.testing.assert_array_equal(got, x)
    else:
        assert got.tolist() == x.tolist()


def _binary_request(inputs: list[tuple[str, str, np.ndarray]], outputs: list[dict] | None = None,
                    parameters: dict | None = None) -> tuple[bytes, dict[str, str]]:
    entries, blobs = [], []
    for name, dt, arr in inputs:
        if dt == "BYTES":
            raw = b"".join(struct.pack("<I", len(v)) + v for v in arr.ravel())
        else:
            raw = np.ascontiguousarray(arr).tobytes()
        entries.append({"name": name, "datatype": dt, "shape": list(arr.shape), "parameters": {"binary_data_size": len(raw)}})
        blobs.append(raw)
    doc: dict = {"inputs": entries}
    if outputs is not None:
        doc["outputs"] = outputs
    if parameters is not None:
        doc["parameters"] = parameters
    head = json.dumps(doc).encode()
    return head + b"".join(blobs), {"Inference-Header-Content-Length": str(len(head)),
                                     "Content-Type": "application/octet-stream"}


def _split_binary_response(r: httpx.Response) -> dict[str, np.ndarray]:
    n = int(r.headers["inference-header-content-length"])
    doc = json.loads(r.content[:n])
    rest = r.content[n:]
    out = {}
    for o in doc["outputs"]:
        dt, shape = o["datatype"], o["shape"]
        if "data" in o:
            out[o["name"]] = _decode(o["data"], dt, shape)
            continue
        size = o["parameters"]["binary_data_size"]
        chunk, rest = rest[:size], rest[size:]
        if dt == "BYTES":
            vals, i = [], 0
            while i < len(chunk):
                (ln,) = struct.unpack_from("<I", chunk, i)
                vals.append(chunk[i + 4 : i + 4 + ln])
                i += 4 + ln
            out[o["name"]] = np.array(vals, dtype=object).reshape(shape)
        else:
            out[o["name"]] = np.frombuffer(chunk, dtype=DTYPE_CASES[dt][1]).reshape(shape)
    assert rest == b""
    return out


@pytest.mark.parametrize("dt", list(DTYPE_CASES))
def test_every_datatype_binary_round_trip(client: httpx.Client, dt: str) -> None:
    x = sample_for(dt, rows=2, width=4)
    content, headers = _binary_request([("x", dt, x)], parameters={"binary_data_output": True})
    r = client.post(f"/v2/models/id-{dt.lower()}/infer", content=content, headers=headers)
    assert r.status_code == 200, r.text
    y = _split_binary_response(r)["y"]
    assert y.shape == x.shape and y.tolist() == x.tolist()


def test_nested_and_flat_data_agree(client: httpx.Client) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    flat = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": x.ravel().tolist()}]}
    nested = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": x.tolist()}]}
    a = client.post("/v2/models/add/versions/1/infer", json=flat).json()
    b = client.post("/v2/models/add/versions/1/infer", json=nested).json()
    assert a["outputs"] == b["outputs"]
    y = next(o for o in a["outputs"] if o["name"] == "y")
    assert y["data"] == (x + 1).ravel().tolist()


def test_version_routing_and_outputs_match_onnxruntime(server: LiveServer, client: httpx.Client) -> None:
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [4, 3], "data": x.ravel().tolist()}]}
    for path, add, version in [("/v2/models/add", 10.0, "2"), ("/v2/models/add/versions/1", 1.0, "1"),
                               ("/v2/models/add/versions/3", 100.0, "3")]:
        out = client.post(f"{path}/infer", json=body).json()
        assert out["model_version"] == version
        assert server.platform is not None
        info = server.platform.registry.get_version(server.platform.keys.ensure_default_tenant(), "add", int(version))
        sess = ort.InferenceSession(str(server.platform.artifacts.verified_path(info.sha256)))
        ref_y, ref_z = sess.run(["y", "z"], {"x": x})
        got = {o["name"]: np.array(o["data"], np.float32).reshape(o["shape"]) for o in out["outputs"]}
        np.testing.assert_array_equal(got["y"], ref_y)
        np.testing.assert_array_equal(got["z"], ref_z)
        np.testing.assert_allclose(ref_y, x + add, rtol=1e-6)


def test_requested_outputs_mixed_binary_and_json(client: httpx.Client) -> None:
    x = np.ones((1, 3), np.float32)
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 1, 1]}],
        "outputs": [{"name": "z", "parameters": {"binary_data": True}}],
    }
    r = client.post("/v2/models/add/infer", json=body)
    assert r.status_code == 200 and "inference-header-content-length" in r.headers
    outs = _split_binary_response(r)
    assert list(outs) == ["z"] and outs["z"].tolist() == (x * 2).tolist()
    body["outputs"] = [{"name": "y"}]
    out = client.post("/v2/models/add/infer", json=body).json()
    assert [o["name"] for o in out["outputs"]] == ["y"] and out["outputs"][0]["data"] == [11.0, 11.0, 11.0]
    body["outputs"] = [{"name": "nope"}]
    _error(client.post("/v2/models/add/infer", json=body), 400, "nope")


def test_parameters_are_accepted_and_id_is_echoed(client: httpx.Client) -> None:
    body = {"id": "abc-1", "parameters": {"custom": 1, "note": "low", "priority": 2},
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [0, 0, 0], "parameters": {"k": "v"}}]}
    out = client.post("/v2/models/add/infer", json=body).json()
    assert out["id"] == "abc-1"
    body.pop("id")
    assert "id" not in client.post("/v2/models/add/infer", json=body).json()


def test_binary_multi_input(client: httpx.Client) -> None:
    a = np.arange(4, dtype=np.float32).reshape(2, 2)
    b = np.full((2, 2), 0.5, np.float32)
    content, headers = _binary_request([("a", "FP32", a), ("b", "FP32", b)])
    r = client.post("/v2/models/two/infer", content=content, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == (a + b).ravel().tolist()  # JSON output by default


# -- bad input -----------------------------------------------------------------------------
_X = {"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}


def test_unknown_model_or_version_is_404(client: httpx.Client) -> None:
    body = {"inputs": [_X]}
    assert _error(client.post("/v2/models/nope/infer", json=body), 404)["code"] == "model_not_found"
    assert _error(client.post("/v2/models/add/versions/99/infer", json=body), 404)["code"] == "version_not_found"
    _error(client.post("/v2/models/add/versions/abc/infer", json=body), 404)
    _error(client.get("/v2/models/nope"), 404)
    _error(client.get("/v2/models/add/versions/7"), 404)


@pytest.mark.parametrize(
    ("tensor", "words"),
    [
        ({**_X, "name": "wrong"}, ["wrong"]),
        ({**_X, "datatype": "INT32"}, ["INT32", "FP32"]),
        ({**_X, "shape": [3]}, ["shape"]),
        ({**_X, "shape": [1, 4], "data": [1, 2, 3, 4]}, ["shape"]),
        ({**_X, "shape": [1, 3], "data": [1, 2]}, ["3"]),
        ({**_X, "shape": [2, 3], "data": [1, 2, 3]}, ["6"]),
        ({**_X, "datatype": "FP99"}, ["FP99"]),
        ({**_X, "data": ["a", "b", "c"]}, []),
    ],
    ids=["name", "dtype", "rank", "dim", "count-short", "count-shape", "unknown-dtype", "bad-values"],
)
def test_bad_tensors_are_400_naming_the_problem(client: httpx.Client, tensor: dict, words: list[str]) -> None:
    err = _error(client.post("/v2/models/add/infer", json={"inputs": [tensor]}), 400, *words)
    assert err["code"] in ("invalid_input", "bad_request")


def test_missing_input_is_400(client: httpx.Client) -> None:
    a = {"name": "a", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}
    _error(client.post("/v2/models/two/infer", json={"inputs": [a]}), 400, "b")
    _error(client.post("/v2/models/two/infer", json={"inputs": [a, a]}), 400, "a")


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"", b'{"inputs": 5}', b'{"outputs": []}'])
def test_malformed_json_is_400(client: httpx.Client, body: bytes) -> None:
    _error(client.post("/v2/models/add/infer", content=body, headers={"Content-Type": "application/json"}), 400)


def test_binary_header_beyond_body_is_400(client: httpx.Client) -> None:
    content, headers = _binary_request([("x", "FP32", np.ones((1, 3), np.float32))])
    headers["Inference-Header-Content-Length"] = str(len(content) + 10)
    _error(client.post("/v2/models/add/infer", content=content, headers=headers), 400, "Inference-Header-Content-Length")
    headers["Inference-Header-Content-Length"] = "-3"
    _error(client.post("/v2/models/add/infer", content=content, headers=headers), 400, "Inference-Header-Content-Length")


def test_binary_size_beyond_body_is_400(client: httpx.Client) -> None:
    content, headers = _binary_request([("x", "FP32", np.ones((1, 3), np.float32))])
    _error(client.post("/v2/models/add/infer", content=content[:-4], headers=headers), 400)
    _error(client.post("/v2/models/add/infer", content=content + b"extra", headers=headers), 400)


def test_auth_required_everywhere_but_health(server: LiveServer) -> None:
    body = {"inputs": [_X]}
    with httpx.Client(base_url=server.url) as anon:
        for method, path in [("GET", "/v2"), ("GET", "/v2/models/add"), ("GET", "/v2/models/add/ready"),
                             ("GET", "/v2/models/add/versions/1"), ("GET", "/v2/models/add/versions/1/ready"),
                             ("POST", "/v2/models/add/infer"), ("POST", "/v2/models/add/versions/1/infer"),
                             ("GET", "/metrics"), ("GET", "/api/v1/models")]:
            r = anon.request(method, path, json=body if method == "POST" else None)
            assert _error(r, 401)["code"] == "unauthenticated", path
            r = anon.request(method, path, json=body if method == "POST" else None,
                             headers={"Authorization": "Bearer my_wrong_key"})
            assert _error(r, 401)["code"] == "unauthenticated", path
        assert _error(anon.get("/v2", headers={"Authorization": "Basic abc"}), 401)


def test_request_over_limit_is_413(tmp_path: Path) -> None:
    srv = LiveServer.build(tmp_path / "home", grpc_enabled=False, max_request_bytes=1000).start()
    try:
        with srv.client() as c:
            c.post("/api/v1/models/add/versions", content=add_model())
            big = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [200, 3], "data": [0.0] * 600}]}
            _error(c.post("/v2/models/add/infer", json=big), 413)

            def chunks():
                yield b'{"inputs": ['
                for _ in range(100):
                    yield b" " * 100

            _error(c.post("/v2/models/add/infer", content=chunks()), 413)
    finally:
        srv.stop()


def test_metrics_count_requests_errors_latency_and_load(client: httpx.Client) -> None:
    client.post("/v2/models/add/versions/1/infer", json={"inputs": [_X]})
    client.post("/v2/models/add/versions/1/infer", json={"inputs": [{**_X, "name": "bad"}]})
    text = client.get("/metrics").text
    assert 'modelyard_inference_requests_total{model="add",protocol="rest",tenant="default",version="1"}' in text
    assert 'modelyard_inference_errors_total{code="invalid_input",model="add",tenant="default",version="1"}' in text
    assert 'modelyard_inference_latency_seconds_bucket{le="0.5",model="add",tenant="default",version="1"}' in text
    assert 'modelyard_model_load_seconds_count{model="add",tenant="default",version="1"}' in text


def test_bytes_that_are_not_utf8_are_400_not_500(client: httpx.Client) -> None:
    x = np.array([b"ok", b"\xff\xfe", b"a", b"b"], dtype=object).reshape(1, 4)
    content, headers = _binary_request([("x", "BYTES", x)])
    err = _error(client.post("/v2/models/id-bytes/infer", content=content, headers=headers), 400, "UTF-8")
    assert err["code"] == "invalid_input"
