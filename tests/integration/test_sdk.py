"""The Python SDK against a real server: registry round trip, predict, typed errors."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from sklearn.datasets import load_digits

from modelyard import errors
from modelyard.client import Client
from tests.support.live import LiveServer, free_port


def tiny_onnx(path: Path, *, add: float = 1.0) -> Path:
    """An ONNX model ``y = x + add`` with input ``x`` FP32 [-1, 3]."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "b"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor("b", TensorProto.FLOAT, [3], [add] * 3)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def reference_digits(server: LiveServer, x: np.ndarray) -> dict[str, np.ndarray]:
    """The demo model run in-process by ONNX Runtime from the verified stored artifact."""
    assert server.platform is not None
    info = server.platform.registry.resolve(server.platform.keys.ensure_default_tenant(), "digits")
    sess = ort.InferenceSession(str(server.platform.artifacts.verified_path(info.sha256)))
    label, probs = sess.run(["label", "probabilities"], {"input": x})
    return {"label": label, "probabilities": probs}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One empty server for this module's writing tests (each uses its own model names)."""
    live = LiveServer.build(tmp_path_factory.mktemp("sdk") / "home").start()
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture
def client(server: LiveServer) -> Iterator[Client]:
    with Client(url=server.url, api_key=server.admin_key) as c:
        yield c


@pytest.fixture(scope="module")
def demo_client(demo_server: LiveServer) -> Iterator[Client]:
    with Client(url=demo_server.url, api_key=demo_server.admin_key) as c:
        yield c


def test_registry_round_trip(client: Client, tmp_path: Path) -> None:
    artifact = tiny_onnx(tmp_path / "tiny.onnx")
    calls: list[tuple[int, int]] = []
    v1 = client.models.push(
        artifact, name="tiny", description="first", tags={"team": "ml"},
        progress=lambda sent, total: calls.append((sent, total)),
    )
    size = artifact.stat().st_size
    assert (v1.model, v1.version, v1.stage, v1.format) == ("tiny", 1, "none", "onnx")
    assert v1.sha256 == hashlib.sha256(artifact.read_bytes()).hexdigest()
    assert v1.size_bytes == size and calls[-1] == (size, size)
    assert [t.name for t in v1.inputs] == ["x"] and v1.inputs[0].shape == (-1, 3)
    assert v1.tags == {"team": "ml"}

    v2 = client.models.push(tiny_onnx(tmp_path / "tiny2.onnx", add=2.0), name="tiny", stage="production")
    assert (v2.version, v2.stage) == (2, "production")

    model = client.models.get("tiny")
    assert (model.latest_version, model.production_version) == (2, 2)
    assert "tiny" in [m.name for m in client.models.list()]
    assert [v.version for v in client.models.versions("tiny")] == [2, 1]
    assert client.models.get_version("tiny", 1).description == "first"

    # promote version 1: it becomes the served one
    assert client.models.promote("tiny", 1).stage == "production"
    assert client.models.get("tiny").production_version == 1
    out = client.predict("tiny", np.zeros((2, 3), np.float32))
    np.testing.assert_array_equal(out["y"], np.ones((2, 3), np.float32))
    out = client.predict("tiny", np.zeros((1, 3), np.float32), version=2)
    np.testing.assert_array_equal(out["y"], [[2, 2, 2]])

    assert client.models.update_version("tiny", 2, description="second").description == "second"
    assert client.models.update("tiny", description="adds").description == "adds"

    client.models.delete_version("tiny", 2)
    with pytest.raises(errors.VersionNotFound):
        client.models.get_version("tiny", 2)
    client.models.delete("tiny")
    with pytest.raises(errors.ModelNotFound):
        client.models.get("tiny")
    assert "tiny" not in [m.name for m in client.models.list()]


def test_list_pages_through_everything(client: Client, tmp_path: Path) -> None:
    artifact = tiny_onnx(tmp_path / "tiny.onnx")
    for name in ("a", "b", "c", "d", "e"):
        client.models.push(artifact, name=name)
    names = [m.name for m in client.models.list(page_size=2)]
    assert len(names) == len(set(names))  # no page seen twice
    assert [n for n in names if n in "abcde"] == ["a", "b", "c", "d", "e"]


def test_push_errors(client: Client, tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not an onnx model")
    with pytest.raises(errors.InvalidArtifact):
        client.models.push(junk, name="junk")
    with pytest.raises(errors.ModelNotFound):
        client.models.get("junk")  # nothing half-registered


def test_predict_matches_onnxruntime(demo_server: LiveServer, demo_client: Client) -> None:
    x = load_digits().data[:16].astype(np.float32)
    expected = reference_digits(demo_server, x)
    for binary in (True, False):
        out = demo_client.predict("digits", x, binary=binary)
        assert set(out) == {"label", "probabilities"}
        np.testing.assert_array_equal(out["label"], expected["label"])
        np.testing.assert_allclose(out["probabilities"], expected["probabilities"], rtol=1e-6)
    # a dict of inputs, float64 data cast to FP32, one output, an explicit version
    only = demo_client.predict("digits", {"input": x.astype(np.float64)}, outputs=["label"], version=1)
    assert list(only) == ["label"]
    np.testing.assert_array_equal(only["label"], expected["label"])
    # the top classes of an output (Triton's classification extension), over binary and JSON
    for binary in (True, False):
        top = demo_client.predict("digits", x[:2], outputs=["probabilities"], top_classes=2, binary=binary)
        assert top["probabilities"].shape == (2, 2)
        for row, probs in zip(top["probabilities"], expected["probabilities"][:2]):
            best = np.argsort(-probs, kind="stable")[:2]
            assert [bytes(v).decode() for v in row] == [f"{probs[i]:f}:{i}" for i in best]
    with pytest.raises(errors.InvalidInput, match="pass outputs"):
        demo_client.predict("digits", x, top_classes=2)


def test_metadata_is_fetched_once_per_model(demo_server: LiveServer) -> None:
    paths: list[str] = []

    class Recording(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            paths.append(f"{request.method} {request.url.path}")
            return super().handle_request(request)

    with Client(url=demo_server.url, api_key=demo_server.admin_key, transport=Recording()) as c:
        for _ in range(3):
            c.predict("digits", np.zeros((1, 64), np.float32))
        meta = c.metadata("digits")
    assert paths.count("GET /v2/models/digits") == 2  # once for predict, once for metadata()
    assert paths.count("POST /v2/models/digits/infer") == 3
    assert [t.name for t in meta.inputs] == ["input"]
    assert {t.name for t in meta.outputs} == {"label", "probabilities"}


def test_typed_errors_from_the_server(demo_server: LiveServer, demo_client: Client) -> None:
    with Client(url=demo_server.url, api_key="my_000000000000_wrongwrongwrongwrongwrong") as bad:
        with pytest.raises(errors.Unauthenticated):
            list(bad.models.list())
        with pytest.raises(errors.Unauthenticated):
            bad.predict("digits", np.zeros((1, 64), np.float32))
    with Client(url=demo_server.url, api_key="") as anonymous, pytest.raises(errors.Unauthenticated):
        anonymous.whoami()
    with pytest.raises(errors.ModelNotFound):
        demo_client.predict("no-such-model", np.zeros((1, 64), np.float32))
    with pytest.raises(errors.NotFound):
        demo_client.predict("digits", np.zeros((1, 64), np.float32), version=99)
    with pytest.raises(errors.InvalidInput) as info:
        demo_client.predict("digits", np.zeros((1, 5), np.float32))
    assert "input" in info.value.message
    with pytest.raises(errors.InvalidInput, match="no input 'x'"):
        demo_client.predict("digits", {"x": np.zeros((1, 64), np.float32)})


def test_health_whoami_and_unreachable(demo_server: LiveServer, demo_client: Client) -> None:
    assert demo_client.health() == {"live": True, "ready": True}
    me = demo_client.whoami()
    assert me["role"] == "admin"
    with Client(url=f"http://127.0.0.1:{free_port()}", api_key="my_x", timeout=5) as gone:
        with pytest.raises(errors.Unavailable) as info:
            gone.health()
    assert info.value.details["reason"] == "connect"


def test_every_datatype_round_trips(client: Client, tmp_path: Path) -> None:
    """Identity models of each OIP datatype: what goes in comes back, binary and JSON."""
    from tests.integration.onnx_models import DTYPE_CASES, identity_model, sample_for

    for datatype in DTYPE_CASES:
        name = f"id-{datatype.lower()}"
        artifact = tmp_path / f"{name}.onnx"
        artifact.write_bytes(identity_model(datatype))
        client.models.push(artifact, name=name, stage="production")
        x = sample_for(datatype)
        for binary in (True, False):
            y = client.predict(name, x, binary=binary)["y"]
            assert y.shape == x.shape, (datatype, binary)
            if datatype == "BYTES":
                assert y.tolist() == x.tolist(), binary
            else:
                assert y.dtype == x.dtype, (datatype, binary)
                np.testing.assert_array_equal(y, x)
    # plain Python strings reach a BYTES model as UTF-8
    assert client.predict("id-bytes", {"x": [["a", "b", "c", "d"]]})["y"].tolist() == [[b"a", b"b", b"c", b"d"]]


def test_a_bare_array_needs_a_single_input_model(client: Client, tmp_path: Path) -> None:
    from tests.integration.onnx_models import two_input_model

    artifact = tmp_path / "two.onnx"
    artifact.write_bytes(two_input_model())
    client.models.push(artifact, name="two", stage="production")
    with pytest.raises(errors.InvalidInput, match="has 2 inputs .*pass a dict"):
        client.predict("two", np.ones((1, 2), np.float32))
    out = client.predict("two", {"a": np.ones((1, 2), np.float32), "b": [[1, 2]]})
    np.testing.assert_array_equal(out["s"], [[2, 3]])
