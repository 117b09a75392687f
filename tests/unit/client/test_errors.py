"""The SDK rebuilds typed errors from error bodies, with an injected ``httpx.MockTransport``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelyard import errors
from modelyard.api.v2.codec import HEADER_LENGTH_HEADER, decode_infer_request, encode_infer_response
from modelyard.client import Client
from modelyard.tensors import InferenceResponse, Tensor

Handler = Callable[[httpx.Request], httpx.Response]


def _client(handler: Handler, **kwargs: object) -> Client:
    return Client(url="http://modelyard.test", api_key="my_key", transport=httpx.MockTransport(handler), **kwargs)  # type: ignore[arg-type]


def _public_classes() -> list[type[errors.ModelYardError]]:
    out: list[type[errors.ModelYardError]] = []
    stack = [errors.ModelYardError]
    while stack:
        cls = stack.pop()
        if not cls.__name__.startswith("_"):
            out.append(cls)
        stack.extend(cls.__subclasses__())
    return out


@pytest.mark.parametrize("cls", _public_classes(), ids=lambda c: c.__name__)
def test_every_error_class_is_rebuilt_from_its_body(cls: type[errors.ModelYardError]) -> None:
    exc = cls("the thing went wrong", details={"field": "x"}) if cls.http_status < 500 else cls("the thing went wrong")
    body = exc.to_body()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(cls.http_status, json=body)

    with _client(handler) as client, pytest.raises(errors.ModelYardError) as info:
        client.whoami()
    # InternalError shares the code "internal" with its base: both come back as the base
    assert type(info.value) is (errors.ModelYardError if cls is errors.InternalError else cls)
    assert info.value.message == body["error"]["message"]
    assert info.value.exit_code == cls.exit_code
    if cls.http_status < 500:
        assert info.value.details == {"field": "x"}


def test_retry_after_is_read_from_the_header() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            429, json=errors.QueueFull("queue is full").to_body(), headers={"Retry-After": "3"}
        )

    with _client(handler) as client, pytest.raises(errors.QueueFull) as info:
        client.models.get("digits")
    assert info.value.retry_after == 3.0
    assert isinstance(info.value, errors.RateLimited)


def test_a_body_that_is_not_an_error_body_falls_back_to_the_status() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("a"):
            return httpx.Response(502, text="<html>Bad gateway</html>")
        return httpx.Response(404, json={"detail": "nope"})

    with _client(handler) as client:
        with pytest.raises(errors.UpstreamError) as info:
            client.models.get("a")
        assert "502" in info.value.message and "Bad gateway" in info.value.message
        with pytest.raises(errors.NotFound) as info2:
            client.models.get("b")
        assert type(info2.value) is errors.NotFound


def test_unknown_code_uses_the_status_class() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(409, json={"error": {"code": "brand_new_conflict", "message": "taken"}})

    with _client(handler) as client, pytest.raises(errors.Conflict, match="taken"):
        client.models.delete("x")


def test_connection_failure_is_unavailable_with_a_reason() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with _client(handler) as client, pytest.raises(errors.Unavailable) as info:
        client.whoami()
    assert info.value.details["reason"] == "connect"
    assert "http://modelyard.test" in info.value.message
    assert isinstance(info.value.__cause__, httpx.ConnectError)


def test_timeout_is_deadline_exceeded() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with _client(handler) as client, pytest.raises(errors.DeadlineExceeded):
        client.whoami()


def test_url_and_key_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"tenant": "default", "role": "admin"})

    monkeypatch.setenv("MODELYARD_URL", "http://env-host:9000/")
    monkeypatch.setenv("MODELYARD_API_KEY", "my_env_key")
    with Client(transport=httpx.MockTransport(handler)) as client:
        assert client.url == "http://env-host:9000"
        assert client.whoami()["role"] == "admin"
    assert str(seen[0].url) == "http://env-host:9000/api/v1/whoami"
    assert seen[0].headers["Authorization"] == "Bearer my_env_key"
    # explicit arguments win over the environment
    with Client(url="http://other:1", api_key="my_arg", transport=httpx.MockTransport(handler)) as client:
        client.whoami()
    assert seen[1].headers["Authorization"] == "Bearer my_arg"
    assert seen[1].url.host == "other"


def test_constructor_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        Client("http://127.0.0.1:8000")  # type: ignore[misc]


def test_push_streams_the_file_with_progress(tmp_path: Path) -> None:
    artifact = tmp_path / "m.onnx"
    payload = bytes(range(256)) * 9000  # ~2.2 MiB: three chunks
    artifact.write_bytes(payload)
    received: dict[str, object] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        received["body"] = request.read()
        received["length"] = request.headers.get("Content-Length")
        received["params"] = dict(request.url.params)
        return httpx.Response(201, json={
            "model": "m", "version": 1, "format": "onnx", "sha256": "ab" * 32, "size_bytes": len(payload),
            "stage": "production", "created_at": "2026-01-01T00:00:00Z", "inputs": [], "outputs": [],
        })

    calls: list[tuple[int, int]] = []
    with _client(handler) as client:
        version = client.models.push(
            artifact, name="m", stage="production", tags={"team": "a"},
            progress=lambda sent, total: calls.append((sent, total)),
        )
    assert received["body"] == payload
    assert received["length"] == str(len(payload))
    assert received["params"] == {"format": "onnx", "description": "", "stage": "production", "tags": '{"team": "a"}'}
    assert calls[-1] == (len(payload), len(payload)) and len(calls) == 3
    assert version.version == 1 and version.stage == "production"


def test_push_refuses_a_missing_file_and_a_bad_stage(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request should be sent")

    with _client(handler) as client:
        with pytest.raises(errors.BadRequest, match="not a file"):
            client.models.push(tmp_path / "absent.onnx", name="m")
        (tmp_path / "m.onnx").write_bytes(b"x")
        with pytest.raises(errors.BadRequest, match="stage must be one of"):
            client.models.push(tmp_path / "m.onnx", name="m", stage="prod")


def _fake_server(requests: list[httpx.Request]) -> Handler:
    """Answers metadata for a one-input FP32 model and echoes ``x * 2`` as output ``y``."""

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if request.method == "GET":
            return httpx.Response(200, json={
                "name": "double", "versions": ["1"], "platform": "onnxruntime_onnx",
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
                "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
            })
        header = request.headers.get(HEADER_LENGTH_HEADER)
        infer = decode_infer_request(request.read(), header)
        x = infer.inputs[0].data
        binary = bool(infer.parameters.get("binary_data_output", False))
        body, length = encode_infer_response(
            InferenceResponse("double", "1", [Tensor.from_array("y", x * 2)]), requested=infer.outputs, binary_default=binary
        )
        headers = {HEADER_LENGTH_HEADER: str(length)} if length is not None else {}
        return httpx.Response(200, content=body, headers=headers)

    return handler


@pytest.mark.parametrize("binary", [True, False])
def test_predict_bare_array_uses_cached_metadata_and_casts(binary: bool) -> None:
    requests: list[httpx.Request] = []
    with _client(_fake_server(requests)) as client:
        x = np.array([[1.0, 2.0], [3.0, 4.0]])  # float64: cast to the model's FP32
        out1 = client.predict("double", x, binary=binary)
        out2 = client.predict("double", {"x": [[5, 6]]}, binary=binary)
    np.testing.assert_array_equal(out1["y"], np.array([[2, 4], [6, 8]], np.float32))
    assert out1["y"].dtype == np.float32
    out1["y"][0, 0] = 0  # results are writable arrays
    np.testing.assert_array_equal(out2["y"], [[10, 12]])
    assert [r.method for r in requests] == ["GET", "POST", "POST"]  # metadata fetched once
    infer = requests[1]
    assert (HEADER_LENGTH_HEADER in infer.headers) is binary
    if not binary:
        assert json.loads(infer.read())["inputs"][0]["datatype"] == "FP32"


def test_predict_names_the_inputs_when_a_name_is_wrong() -> None:
    with _client(_fake_server([])) as client, pytest.raises(errors.InvalidInput, match="no input 'z'.*'x'"):
        client.predict("double", {"z": np.zeros((1, 2), np.float32)})


def test_an_answer_that_is_not_json_means_the_url_is_wrong() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path.startswith("/v2/"):
            return httpx.Response(200, json={"name": "m", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]})
        return httpx.Response(200, text="<html>some other web server</html>", headers={"content-type": "text/html"})

    with _client(handler) as client:
        with pytest.raises(errors.Unavailable) as info:
            client.whoami()
        assert info.value.details["reason"] == "protocol" and "not JSON" in info.value.message
        with pytest.raises(errors.Unavailable) as info:
            client.predict("m", np.zeros(1, np.float32))
        assert info.value.details["reason"] == "protocol" and "could not be decoded" in info.value.message
