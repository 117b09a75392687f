"""OIP v2 over gRPC, judged by NVIDIA's ``tritonclient.grpc`` against a real server."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from sklearn.datasets import load_digits
from tritonclient.utils import InferenceServerException

from tests.support.classes import as_text, top_classes
from tests.support.live import LiveServer


@pytest.fixture(scope="module")
def grpc_client(demo_server: LiveServer) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(demo_server.grpc_url)


def _auth(server: LiveServer, key: str | None = None) -> dict[str, str]:
    return {"authorization": f"Bearer {key or server.admin_key}"}


def _reference(server: LiveServer, x: np.ndarray) -> dict[str, np.ndarray]:
    assert server.platform is not None
    info = server.platform.registry.resolve(server.platform.keys.ensure_default_tenant(), "digits")
    sess = ort.InferenceSession(str(server.platform.artifacts.verified_path(info.sha256)))
    label, probs = sess.run(["label", "probabilities"], {"input": x})
    return {"label": label, "probabilities": probs}


def test_health_and_metadata(demo_server: LiveServer, grpc_client: grpcclient.InferenceServerClient) -> None:
    assert grpc_client.is_server_live()
    assert grpc_client.is_server_ready()
    meta = grpc_client.get_server_metadata(headers=_auth(demo_server), as_json=True)
    assert meta["name"] == "modelyard"
    assert "binary_tensor_data" in meta["extensions"]
    model = grpc_client.get_model_metadata("digits", headers=_auth(demo_server), as_json=True)
    assert model["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": ["-1", "64"]}
    assert grpc_client.is_model_ready("digits", headers=_auth(demo_server))
    assert grpc_client.is_model_ready("digits", "1", headers=_auth(demo_server))


def test_infer_matches_onnxruntime(demo_server: LiveServer, grpc_client: grpcclient.InferenceServerClient) -> None:
    x = load_digits().data[:16].astype(np.float32)
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    outputs = [grpcclient.InferRequestedOutput("probabilities"), grpcclient.InferRequestedOutput("label")]
    result = grpc_client.infer("digits", [inp], outputs=outputs, headers=_auth(demo_server), request_id="req-7")
    expected = _reference(demo_server, x)
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"], rtol=1e-6)
    response = result.get_response()
    assert response.id == "req-7"
    assert response.model_version == "1"


def test_explicit_version(demo_server: LiveServer, grpc_client: grpcclient.InferenceServerClient) -> None:
    x = np.zeros((1, 64), np.float32)
    inp = grpcclient.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(x)
    result = grpc_client.infer("digits", [inp], model_version="1", headers=_auth(demo_server))
    assert result.as_numpy("label").shape == (1,)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (None, "StatusCode.UNAUTHENTICATED"),
        ({"authorization": "Bearer my_000000000000_nope"}, "StatusCode.UNAUTHENTICATED"),
        ({"authorization": "Basic abc"}, "StatusCode.UNAUTHENTICATED"),
    ],
)
def test_auth_required(grpc_client: grpcclient.InferenceServerClient, headers: dict[str, str] | None, status: str) -> None:
    inp = grpcclient.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 64), np.float32))
    with pytest.raises(InferenceServerException) as err:
        grpc_client.infer("digits", [inp], headers=headers)
    assert err.value.status() == status


def test_errors_map_to_status_codes(demo_server: LiveServer, grpc_client: grpcclient.InferenceServerClient) -> None:
    h = _auth(demo_server)
    inp = grpcclient.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 64), np.float32))
    with pytest.raises(InferenceServerException) as err:
        grpc_client.infer("no-such-model", [inp], headers=h)
    assert err.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as err:
        grpc_client.infer("digits", [inp], model_version="99", headers=h)
    assert err.value.status() == "StatusCode.NOT_FOUND"
    wrong = grpcclient.InferInput("input", [1, 64], "FP64")
    wrong.set_data_from_numpy(np.zeros((1, 64), np.float64))
    with pytest.raises(InferenceServerException) as err:
        grpc_client.infer("digits", [wrong], headers=h)
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "FP32" in err.value.message()
    bad_shape = grpcclient.InferInput("input", [1, 63], "FP32")
    bad_shape.set_data_from_numpy(np.zeros((1, 63), np.float32))
    with pytest.raises(InferenceServerException) as err:
        grpc_client.infer("digits", [bad_shape], headers=h)
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "shape" in err.value.message()


def test_stream_infer(demo_server: LiveServer) -> None:
    """``start_stream`` / ``async_stream_infer``: every request gets its own answer (matched by
    id); a bad one gets an error and the stream goes on."""
    import queue

    x = load_digits().data[:12].astype(np.float32)
    expected = _reference(demo_server, x)
    answers: queue.Queue[tuple[object, InferenceServerException | None]] = queue.Queue()
    client = grpcclient.InferenceServerClient(demo_server.grpc_url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)), headers=_auth(demo_server))
    try:
        for i, row in enumerate(x):
            inp = grpcclient.InferInput("input", [1, 64], "FP32")
            inp.set_data_from_numpy(row.reshape(1, 64))
            client.async_stream_infer("digits", [inp], request_id=f"row-{i}")
            if i == 5:
                wrong = grpcclient.InferInput("input", [1, 64], "FP64")
                wrong.set_data_from_numpy(np.zeros((1, 64), np.float64))
                client.async_stream_infer("digits", [wrong], request_id="wrong")
    finally:
        client.stop_stream()  # waits for the answers
    results = [answers.get(timeout=30) for _ in range(len(x) + 1)]
    errors = [error for _, error in results if error is not None]
    assert len(errors) == 1 and "FP32" in errors[0].message()
    labels = {}
    for result, error in results:
        if error is None:
            labels[result.get_response().id] = result.as_numpy("label")[0]  # type: ignore[attr-defined]
    assert labels == {f"row-{i}": expected["label"][i] for i in range(len(x))}


def test_stream_infer_without_a_key_is_refused(demo_server: LiveServer) -> None:
    import queue

    answers: queue.Queue[tuple[object, InferenceServerException | None]] = queue.Queue()
    client = grpcclient.InferenceServerClient(demo_server.grpc_url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    inp = grpcclient.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 64), np.float32))
    client.async_stream_infer("digits", [inp])
    result, error = answers.get(timeout=30)
    client.stop_stream()
    assert result is None and error is not None
    assert error.status() == "StatusCode.UNAUTHENTICATED" and "missing API key" in error.message()


def test_outputs_asked_as_classes(demo_server: LiveServer, grpc_client: grpcclient.InferenceServerClient) -> None:
    """``class_count`` over gRPC: the top classes as BYTES in the raw output contents."""
    x = load_digits().data[:2].astype(np.float32)
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = grpc_client.infer("digits", [inp], outputs=[grpcclient.InferRequestedOutput("probabilities", class_count=2)],
                               headers=_auth(demo_server))
    probs = _reference(demo_server, x)["probabilities"]
    classes = result.as_numpy("probabilities")
    assert classes.shape == (2, 2)
    assert as_text(classes) == top_classes(probs, 2)
    with pytest.raises(InferenceServerException) as info:
        grpc_client.infer("digits", [inp], outputs=[grpcclient.InferRequestedOutput("probabilities", class_count=-1)],
                          headers=_auth(demo_server))
    assert "INVALID_ARGUMENT" in str(info.value.status())
