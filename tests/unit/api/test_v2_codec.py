"""The OIP v2 REST codec: round trips, Triton's own client byte format, and every bad request."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from modelyard.api.v2 import codec
from modelyard.api.v2.codec import (
    decode_infer_request,
    decode_infer_response,
    decode_raw_tensor,
    deserialize_bytes_elements,
    encode_infer_request,
    encode_infer_response,
    encode_raw_tensor,
    serialize_bytes_elements,
)
from modelyard.errors import InvalidInput
from modelyard.tensors import InferenceRequest, InferenceResponse, RequestedOutput, Tensor

tritonhttp = pytest.importorskip("tritonclient.http")
from tritonclient.http._utils import _get_inference_request  # noqa: E402


def sample(datatype: str) -> np.ndarray:
    """A 2x3 array of ``datatype`` that includes the type's extreme values."""
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if datatype == "BYTES":
        return np.array([[b"a", b"", "h\u00e9llo".encode()], [b"x" * 40, b"0", b"zz"]], dtype=object)
    dtype = np.dtype(datatype.replace("FP", "float").replace("UINT", "uint").replace("INT", "int").lower())
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.array([[info.min, 0, 1], [info.max, 7, info.max - 1]], dtype=dtype)
    return np.array([[-1.5, 0.0, 2.25], [1e3, -7.0, 0.125]], dtype=dtype)


ALL = ["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
       "FP16", "FP32", "FP64", "BYTES"]


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    if want.dtype == object:
        assert got.dtype == object
        assert got.tolist() == want.tolist()
    else:
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def body_of(doc: dict) -> bytes:
    return json.dumps(doc).encode()


def raises(body: bytes, header_length: int | None = None) -> str:
    with pytest.raises(InvalidInput) as info:
        decode_infer_request(body, header_length)
    return str(info.value)


# ------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("datatype", ALL)
@pytest.mark.parametrize("binary", [False, True])
def test_request_round_trip_every_datatype(datatype: str, binary: bool) -> None:
    array = sample(datatype)
    req = InferenceRequest(
        inputs=[Tensor.from_array("x", array), Tensor.from_array("y", np.arange(3, dtype=np.int64))],
        outputs=[RequestedOutput("out", {"binary_data": True})],
        id="req-1",
        parameters={"priority": 2},
    )
    body, header_length = encode_infer_request(req, binary_inputs=binary)
    assert (header_length is not None) == binary
    got = decode_infer_request(body, header_length)
    assert [t.name for t in got.inputs] == ["x", "y"]
    x = got.inputs[0]
    assert x.datatype == datatype and x.shape == (2, 3)
    assert_same(x.data, array)
    assert_same(got.inputs[1].data, np.arange(3, dtype=np.int64))
    assert x.parameters == {}  # binary_data_size is framing and is not passed on
    assert got.outputs == [RequestedOutput("out", {"binary_data": True})]
    assert got.id == "req-1"
    assert got.parameters == {"priority": 2}


@pytest.mark.parametrize("datatype", ALL)
@pytest.mark.parametrize("binary", [False, True])
def test_response_round_trip_every_datatype(datatype: str, binary: bool) -> None:
    array = sample(datatype)
    resp = InferenceResponse(
        model_name="m", model_version="3", outputs=[Tensor.from_array("out", array)], id="r9",
        parameters={"sequence_end": True},
    )
    body, header_length = encode_infer_response(resp, requested=None, binary_default=binary)
    assert (header_length is not None) == binary
    got = decode_infer_response(body, header_length)
    assert (got.model_name, got.model_version, got.id) == ("m", "3", "r9")
    assert got.parameters == {"sequence_end": True}
    out = got.outputs[0]
    assert out.datatype == datatype and out.shape == (2, 3)
    assert_same(out.data, array)


@pytest.mark.parametrize("rows", [2, 40_000])  # small outputs are copied, large ones viewed
def test_binary_outputs_small_and_large_round_trip(rows: int) -> None:
    array = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)[:, ::-1]  # not contiguous
    resp = InferenceResponse(model_name="m", model_version="1", outputs=[Tensor.from_array("out", array)])
    body, header_length = encode_infer_response(resp, requested=None, binary_default=True)
    (out,) = decode_infer_response(body, header_length).outputs
    assert len(body) - header_length == array.nbytes
    assert_same(out.data, array)


def test_answers_of_one_shape_share_a_remembered_header_and_carry_their_own_bytes() -> None:
    """An all-binary answer's JSON header is encoded once per model, version and outputs'
    names, datatypes and shapes; each answer still carries its own values, and anything else
    (another shape, an id, data of another dtype) gets a header of its own."""
    codec._BINARY_HEADS.clear()

    def answer(array: np.ndarray, **fields: object) -> tuple[bytes, int | None]:
        resp = InferenceResponse(model_name="m", model_version="1", outputs=[Tensor.from_array("out", array)],
                                 **fields)  # type: ignore[arg-type]
        return encode_infer_response(resp, requested=None, binary_default=True)

    first, second = np.array([[1, 2, 3]], np.float32), np.array([[4, 5, 6]], np.float32)
    (body1, length1), (body2, length2) = answer(first), answer(second)
    assert len(codec._BINARY_HEADS) == 1 and length1 == length2 and body1[:length1] == body2[:length2]
    assert_same(decode_infer_response(body2, length2).outputs[0].data, second)
    taller = np.arange(6, dtype=np.float32).reshape(2, 3)
    body, length = answer(taller)
    assert_same(decode_infer_response(body, length).outputs[0].data, taller)
    for rid in ("a", "b"):
        body, length = answer(first, id=rid)
        assert decode_infer_response(body, length).id == rid
    wide = Tensor(name="out", datatype="FP32", shape=(1, 3), data=np.array([[7, 8, 9]], np.float64))
    resp = InferenceResponse(model_name="m", model_version="1", outputs=[wide])
    body, length = encode_infer_response(resp, requested=None, binary_default=True)
    assert len(body) - length == 12, "float64 data of an FP32 tensor goes as 4-byte floats"
    assert_same(decode_infer_response(body, length).outputs[0].data, np.array([[7, 8, 9]], np.float32))
    assert len(codec._BINARY_HEADS) == 2, "one header per shape; ids and converted data are not remembered"


@pytest.mark.parametrize("datatype", ALL)
@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_http_request_bytes_decode(datatype: str, binary: bool) -> None:
    """The real client's encoder (JSON and binary extension) is what the server must read."""
    array = sample(datatype)
    if datatype == "BYTES":
        array = np.array([[b"a", b"", "h\u00e9llo".encode()], [b"x" * 40, b"0", b"zz"]], dtype=np.object_)
    inp = tritonhttp.InferInput("INPUT0", list(array.shape), datatype)
    inp.set_data_from_numpy(array, binary_data=binary)
    scalar = tritonhttp.InferInput("INPUT1", [1], "INT32").set_data_from_numpy(
        np.array([5], dtype=np.int32), binary_data=True
    )
    outputs = [tritonhttp.InferRequestedOutput("OUT0", binary_data=True),
               tritonhttp.InferRequestedOutput("OUT1", binary_data=False)]
    body, header_length = _get_inference_request(
        [inp, scalar], "id-7", outputs, 0, False, False, 0, None, {"custom": "v"}
    )
    got = decode_infer_request(body, header_length)
    assert_same(got.inputs[0].data, array)
    assert_same(got.inputs[1].data, np.array([5], dtype=np.int32))
    assert got.id == "id-7"
    assert got.parameters == {"custom": "v"}
    assert got.outputs == [RequestedOutput("OUT0", {"binary_data": True}),
                           RequestedOutput("OUT1", {"binary_data": False})]


def test_tritonclient_without_outputs_asks_for_binary_outputs() -> None:
    inp = tritonhttp.InferInput("x", [2], "FP32").set_data_from_numpy(np.ones(2, np.float32))
    body, header_length = _get_inference_request([inp], "", None, 0, False, False, 0, None, None)
    got = decode_infer_request(body, header_length)
    assert got.outputs is None
    assert got.parameters == {"binary_data_output": True}


@pytest.mark.parametrize("datatype", ALL)
@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_http_reads_our_response(datatype: str, binary: bool) -> None:
    array = sample(datatype)
    resp = InferenceResponse(model_name="m", model_version="1",
                             outputs=[Tensor.from_array("out", array),
                                      Tensor.from_array("k", np.arange(4, dtype=np.int64))])
    body, header_length = encode_infer_response(resp, requested=None, binary_default=binary)
    result = tritonhttp.InferResult.from_response_body(body, header_length=header_length)
    got = result.as_numpy("out")
    if datatype == "BYTES" and not binary:
        # Triton's client keeps JSON strings as str
        assert got.tolist() == [[b.decode() for b in row] for row in array.tolist()]
    else:
        assert_same(got, array)
    np.testing.assert_array_equal(result.as_numpy("k"), np.arange(4))


# ------------------------------------------------------------------------------ JSON layout


def test_nested_json_data_is_accepted() -> None:
    doc = {"inputs": [
        {"name": "a", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4.5]]},
        {"name": "b", "datatype": "BYTES", "shape": [2, 1], "data": [["x"], ["y"]]},
        {"name": "c", "datatype": "INT8", "shape": [1, 2, 2], "data": [[[1, 2], [3, 4]]]},
        {"name": "d", "datatype": "BOOL", "shape": [3], "data": [True, False, True]},
    ]}
    got = {t.name: t.data for t in decode_infer_request(body_of(doc)).inputs}
    assert_same(got["a"], np.array([[1, 2], [3, 4.5]], np.float32))
    assert_same(got["b"], np.array([[b"x"], [b"y"]], dtype=object))
    assert_same(got["c"], np.array([[[1, 2], [3, 4]]], np.int8))
    assert_same(got["d"], np.array([True, False, True]))


def test_flat_json_data_is_reshaped_and_integers_are_accepted_for_floats() -> None:
    doc = {"inputs": [{"name": "a", "datatype": "FP64", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]}]}
    (t,) = decode_infer_request(body_of(doc)).inputs
    assert_same(t.data, np.arange(1, 7, dtype=np.float64).reshape(2, 3))


def test_scalar_and_empty_tensors() -> None:
    doc = {"inputs": [
        {"name": "s", "datatype": "INT32", "shape": [], "data": [7]},
        {"name": "e", "datatype": "FP32", "shape": [0, 3], "data": []},
        {"name": "eb", "datatype": "BYTES", "shape": [0], "data": []},
    ]}
    s, e, eb = decode_infer_request(body_of(doc)).inputs
    assert_same(s.data, np.array(7, dtype=np.int32))
    assert_same(e.data, np.zeros((0, 3), np.float32))
    assert eb.data.shape == (0,)
    resp = InferenceResponse(model_name="m", model_version="1", outputs=[s, e, eb])
    for binary in (False, True):
        body, hl = encode_infer_response(resp, requested=None, binary_default=binary)
        back = decode_infer_response(body, hl)
        assert_same(back.outputs[0].data, s.data)
        assert_same(back.outputs[1].data, e.data)
        assert back.outputs[2].data.shape == (0,)


def test_json_response_data_is_flat_and_fp16_is_numbers() -> None:
    resp = InferenceResponse(model_name="m", model_version="1", outputs=[
        Tensor.from_array("h", np.array([[0.5, 1.5]], np.float16)),
        Tensor.from_array("b", np.array([["hi", "\u00e9"]], dtype=object)),
    ])
    body, header_length = encode_infer_response(resp, requested=None, binary_default=False)
    assert header_length is None
    doc = json.loads(body)
    assert doc["outputs"][0] == {"name": "h", "datatype": "FP16", "shape": [1, 2], "data": [0.5, 1.5]}
    assert doc["outputs"][1]["data"] == ["hi", "\u00e9"]
    assert "id" not in doc and "parameters" not in doc


def test_json_fallback_without_orjson_gives_the_same_documents(monkeypatch: pytest.MonkeyPatch) -> None:
    resp = InferenceResponse(model_name="m", model_version="1", outputs=[
        Tensor.from_array(dt, sample(dt)) for dt in ALL
    ], parameters={"n": np.int64(3)})
    fast, _ = encode_infer_response(resp, requested=None, binary_default=False)
    monkeypatch.setattr(codec, "_orjson", None)
    slow, _ = encode_infer_response(resp, requested=None, binary_default=False)
    assert json.loads(fast) == json.loads(slow)
    back = decode_infer_response(slow)
    for t, want in zip(back.outputs, resp.outputs):
        assert_same(t.data, want.data)
    assert raises(b"{nope") .startswith("malformed JSON")


# ------------------------------------------------------------------------------ binary details


def test_binary_numeric_input_is_a_zero_copy_read_only_view() -> None:
    data = np.arange(1024, dtype=np.float32)
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1024],
                                     "parameters": {"binary_data_size": data.nbytes}}]}).encode()
    pad = b" " * (-len(header) % 4)  # JSON may end in whitespace; align the tensor
    body = header + pad + data.tobytes()
    (t,) = decode_infer_request(body, len(header) + len(pad)).inputs
    assert_same(t.data, data)
    assert not t.data.flags.writeable
    assert not t.data.flags.owndata


def test_binary_unaligned_input_is_copied_and_correct() -> None:
    data = np.arange(5, dtype=np.float64)
    raw = data.tobytes()
    got = decode_raw_tensor(memoryview(b"?" + raw)[1:], datatype="FP64", shape=[5], name="input 'x'")
    assert got.flags.aligned
    assert_same(got, data)


@pytest.mark.parametrize("pad", [0, 1])
def test_requests_sharing_a_header_each_get_their_own_checked_data(pad: int) -> None:
    """The second request with a header seen before is read from the remembered header: its
    arrays are still its own bytes, copied when unaligned, and BOOL bytes are still checked."""
    codec._PREPARED.clear()
    header = json.dumps({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 3], "parameters": {"binary_data_size": 12}},
        {"name": "m", "datatype": "BOOL", "shape": [2], "parameters": {"binary_data_size": 2}},
    ]}).encode() + b" " * pad
    decoded = []
    for row in ([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]):
        data = np.array([row], dtype=np.float32)
        decoded.append(decode_infer_request(header + data.tobytes() + b"\x01\x00", len(header)))
    assert header in codec._PREPARED  # the second request took the remembered header's path
    for request, want in zip(decoded, ([[1, 2, 3]], [[4, 5, 6]])):
        x, m = request.inputs
        assert x.data.flags.aligned
        assert_same(x.data, np.array(want, dtype=np.float32))
        assert_same(m.data, np.array([True, False]))
        assert x.parameters == {} and m.parameters == {}
    bad = header + np.zeros((1, 3), np.float32).tobytes() + b"\x02\x00"
    assert "BOOL binary data must hold only bytes 0 and 1" in raises(bad, len(header))
    short = header + np.zeros((1, 3), np.float32).tobytes() + b"\x01"
    assert "binary" in raises(short, len(header)), "a body short of the remembered sizes is refused"


def test_bytes_serialization_matches_tritonclient() -> None:
    from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

    array = np.array([b"abc", b"", "\u00e9".encode(), b"\x00\xff"], dtype=object)
    ours = serialize_bytes_elements(array)
    assert ours == serialize_byte_tensor(array).item()
    assert deserialize_bytes_tensor(ours).tolist() == array.tolist()
    assert deserialize_bytes_elements(ours) == array.tolist()
    assert encode_raw_tensor(np.array(["x", "yz"], dtype=object), "BYTES") == b"\x01\x00\x00\x00x\x02\x00\x00\x00yz"


def test_mixed_binary_and_json_inputs_keep_order() -> None:
    a = np.array([1, 2, 3], np.int16)
    c = np.array([b"q", b"rs"], dtype=object)
    header = json.dumps({"inputs": [
        {"name": "a", "datatype": "INT16", "shape": [3], "parameters": {"binary_data_size": 6}},
        {"name": "b", "datatype": "FP32", "shape": [1], "data": [1.0]},
        {"name": "c", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 11, "k": 1}},
    ]}).encode()
    body = header + a.tobytes() + serialize_bytes_elements(c)
    a_t, b_t, c_t = decode_infer_request(body, len(header)).inputs
    assert_same(a_t.data, a)
    assert_same(b_t.data, np.array([1.0], np.float32))
    assert_same(c_t.data, c)
    assert c_t.parameters == {"k": 1}


# ------------------------------------------------------------------------------ outputs


def make_response() -> InferenceResponse:
    return InferenceResponse(model_name="m", model_version="1", outputs=[
        Tensor.from_array("p", np.array([0.25, 0.75], np.float32)),
        Tensor.from_array("label", np.array([1], np.int64)),
    ])


def test_binary_choice_per_requested_output() -> None:
    body, header_length = encode_infer_response(
        make_response(),
        requested=[RequestedOutput("label", {"binary_data": True}), RequestedOutput("p")],
        binary_default=False,
    )
    assert header_length is not None
    doc = json.loads(body[:header_length])
    assert [o["name"] for o in doc["outputs"]] == ["label", "p"]
    assert doc["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert "data" not in doc["outputs"][0]
    assert doc["outputs"][1]["data"] == [0.25, 0.75]
    assert body[header_length:] == np.array([1], np.int64).tobytes()


def test_binary_default_applies_unless_an_output_says_otherwise() -> None:
    body, header_length = encode_infer_response(
        make_response(), requested=[RequestedOutput("p", {"binary_data": False}), RequestedOutput("label")],
        binary_default=True,
    )
    doc = json.loads(body[:header_length])
    assert doc["outputs"][0]["data"] == [0.25, 0.75]
    assert doc["outputs"][1]["parameters"]["binary_data_size"] == 8
    everything, hl = encode_infer_response(make_response(), requested=None, binary_default=True)
    assert all("data" not in o for o in json.loads(everything[:hl])["outputs"])


def test_requested_output_the_model_lacks_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="requested output 'nope'.*'p', 'label'"):
        encode_infer_response(make_response(), requested=[RequestedOutput("nope")], binary_default=False)


def test_non_utf8_bytes_output_goes_binary_even_when_json_was_asked() -> None:
    resp = InferenceResponse(model_name="m", model_version="1",
                             outputs=[Tensor.from_array("b", np.array([b"\xff\xfe"], dtype=object))])
    body, header_length = encode_infer_response(resp, requested=None, binary_default=False)
    assert header_length is not None
    assert decode_infer_response(body, header_length).outputs[0].data.tolist() == [b"\xff\xfe"]


def test_sdk_binary_outputs_flag_sets_request_and_output_parameters() -> None:
    req = InferenceRequest(inputs=[Tensor.from_array("x", np.zeros(2, np.float32))],
                           outputs=[RequestedOutput("y"), RequestedOutput("z", {"binary_data": False})])
    body, header_length = encode_infer_request(req, binary_inputs=False, binary_outputs=True)
    got = decode_infer_request(body, header_length)
    assert got.parameters == {"binary_data_output": True}
    assert got.outputs == [RequestedOutput("y", {"binary_data": True}),
                           RequestedOutput("z", {"binary_data": False})]


def test_encoding_a_tensor_whose_data_does_not_match_its_shape_is_refused() -> None:
    bad = Tensor(name="x", datatype="FP32", shape=(3,), data=np.zeros(2, np.float32))
    with pytest.raises(InvalidInput, match=r"input 'x'.*2 elements.*needs 3"):
        encode_infer_request(InferenceRequest(inputs=[bad]))


# ------------------------------------------------------------------------------ bad requests


def one(**fields: object) -> bytes:
    tensor = {"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]}
    tensor.update(fields)
    tensor = {k: v for k, v in tensor.items() if v is not ...}
    return body_of({"inputs": [tensor]})


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        (b"{not json", ["malformed JSON"]),
        (b"\xff\xfe", ["malformed JSON"]),
        (b"[1, 2]", ["malformed JSON", "object"]),
        (b"{}", ["missing 'inputs'"]),
        (body_of({"inputs": {}}), ["'inputs' must be a JSON array"]),
        (body_of({"inputs": [3]}), ["input #0", "JSON object"]),
        (one(name=...), ["input #0", "missing 'name'"]),
        (one(datatype=...), ["input 'x'", "missing 'datatype'"]),
        (one(shape=...), ["input 'x'", "missing 'shape'"]),
        (one(data=...), ["input 'x'", "missing 'data'"]),
        (one(datatype="FP8"), ["input 'x'", "unknown datatype 'FP8'", "FP32"]),
        (one(datatype="BF16"), ["input 'x'", "unknown datatype 'BF16'"]),
        (one(shape=[3]), ["input 'x'", "2 elements", "needs 3"]),
        (one(shape=[-1, 2]), ["input 'x'", "negative dimension"]),
        (one(shape=[2.5]), ["input 'x'", "'shape' must be a list of integers"]),
        (one(shape="2"), ["input 'x'", "'shape' must be a list of integers"]),
        (one(data="1,2"), ["input 'x'", "'data' must be a JSON array"]),
        (one(data=["a", "b"]), ["input 'x'", "FP32", "must hold numbers", "strings"]),
        (one(data=[True, False]), ["input 'x'", "FP32", "booleans"]),
        (one(data=[1.0, None]), ["input 'x'", "FP32", "must hold numbers"]),
        (one(datatype="INT32", data=[1.5, 2]), ["input 'x'", "INT32", "integers", "floats"]),
        (one(datatype="INT8", data=[1, 300]), ["input 'x'", "out of range for INT8"]),
        (one(datatype="UINT8", data=[-1, 3]), ["input 'x'", "out of range for UINT8"]),
        (one(datatype="BOOL", data=[1, 0]), ["input 'x'", "BOOL", "true/false"]),
        (one(datatype="BYTES", data=[1, 2]), ["input 'x'", "BYTES", "strings", "int"]),
        (one(shape=[2, 2], data=[[1, 2], [3]]), ["input 'x'", "ragged"]),
        (one(datatype="BYTES", shape=[2, 2], data=[["a", "b"], ["c"]]), ["input 'x'", "ragged"]),
        (one(datatype="BYTES", data=["a", ["b"]]), ["input 'x'", "ragged"]),
        (one(shape=[4], data=[[1, 2], [3, 4]]), ["input 'x'", "nested 'data' has shape [2, 2]", "[4]"]),
        (one(shape=[1, 2], data=[[1], [2]]), ["input 'x'", "nested 'data' has shape [2, 1]"]),
        (one(parameters=[1]), ["input 'x'", "'parameters' must be a JSON object"]),
        (one(parameters={"shared_memory_region": "r"}), ["input 'x'", "shared memory"]),
        (one(parameters={"binary_data_size": 8}), ["input 'x'", "both 'data' and", "binary_data_size"]),
        (body_of({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2],
                              "parameters": {"binary_data_size": 8}}]}),
         ["input 'x'", "no Inference-Header-Content-Length"]),
        (body_of({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]},
                             {"name": "x", "datatype": "FP32", "shape": [1], "data": [2]}]}),
         ["input 'x'", "more than once"]),
        (body_of({"inputs": [], "id": 5}), ["'id' must be a string"]),
        (body_of({"inputs": [], "parameters": "p"}), ["request", "'parameters' must be a JSON object"]),
        (body_of({"inputs": [], "outputs": "y"}), ["'outputs' must be a JSON array"]),
        (body_of({"inputs": [], "outputs": [{"parameters": {}}]}), ["requested output #0", "missing 'name'"]),
        (body_of({"inputs": [], "outputs": [{"name": "y", "parameters": 3}]}),
         ["requested output 'y'", "'parameters' must be a JSON object"]),
    ],
)
def test_bad_json_requests_are_invalid_input(body: bytes, fragments: list[str]) -> None:
    message = raises(body)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def binary_body(tensors: list[dict], payload: bytes) -> tuple[bytes, int]:
    header = body_of({"inputs": tensors})
    return header + payload, len(header)


def fp32(name: str, shape: list[int], size: int) -> dict:
    return {"name": name, "datatype": "FP32", "shape": shape, "parameters": {"binary_data_size": size}}


@pytest.mark.parametrize(
    ("tensors", "payload", "header_delta", "fragments"),
    [
        ([fp32("x", [2], 8)], b"\0" * 8, 100, ["Inference-Header-Content-Length is", "body is only"]),
        ([fp32("x", [2], 8)], b"\0" * 8, None, ["must not be negative"]),
        ([fp32("x", [3], 8)], b"\0" * 8, 0, ["input 'x'", "8 bytes", "shape [3] of FP32 needs 12"]),
        ([fp32("x", [2], 12)], b"\0" * 8, 0, ["input 'x'", "binary_data_size is 12", "only 8"]),
        ([fp32("x", [2], 8)], b"\0" * 11, 0, ["3 bytes of binary data", "do not add up"]),
        ([fp32("x", [2], -8)], b"\0" * 8, 0, ["input 'x'", "non-negative integer"]),
        ([fp32("x", [2], "8")], b"\0" * 8, 0, ["input 'x'", "non-negative integer"]),
        ([fp32("x", [2], 8), fp32("y", [1], 4)], b"\0" * 10, 0, ["input 'y'", "binary_data_size is 4", "only 2"]),
        ([{"name": "b", "datatype": "BOOL", "shape": [2], "parameters": {"binary_data_size": 2}}],
         b"\x01\x02", 0, ["input 'b'", "BOOL", "0 and 1"]),
        ([{"name": "s", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 5}}],
         b"\x01\0\0\0a", 0, ["input 's'", "1 BYTES elements", "needs 2"]),
        ([{"name": "s", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}],
         b"\x01\0\0\0ab", 0, ["input 's'"]),
        ([{"name": "s", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}],
         b"\x09\0\0\0ab", 0, ["input 's'", "claims 9 bytes", "only 2 remain"]),
        ([{"name": "s", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 3}}],
         b"\x01\0\0", 0, ["input 's'", "inside a 4-byte length prefix"]),
    ],
)
def test_bad_binary_requests_are_invalid_input(
    tensors: list[dict], payload: bytes, header_delta: int | None, fragments: list[str]
) -> None:
    body, header_length = binary_body(tensors, payload)
    message = raises(body, -1 if header_delta is None else header_length + header_delta)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_header_length_must_be_an_integer() -> None:
    assert "must be an integer" in raises(one(), "ten")  # type: ignore[arg-type]
    assert decode_infer_request(one(), str(len(one()))).inputs[0].name == "x"


def test_header_length_cutting_the_json_is_malformed_json() -> None:
    assert raises(one(), 5).startswith("malformed JSON")


def test_binary_response_errors_are_invalid_input() -> None:
    body, header_length = encode_infer_response(make_response(), requested=None, binary_default=True)
    with pytest.raises(InvalidInput, match="do not add up"):
        decode_infer_response(body + b"x", header_length)
    with pytest.raises(InvalidInput, match="output 'label'"):
        decode_infer_response(body[:-1], header_length)


def test_length_prefixed_helpers_reject_truncation() -> None:
    data = struct.pack("<I", 3) + b"ab"
    with pytest.raises(InvalidInput, match="claims 3 bytes"):
        deserialize_bytes_elements(data, name="output 'o'")


def test_codec_imports_nothing_server_side() -> None:
    """The SDK imports this module, so it must not pull in a web or gRPC server."""
    code = (
        "import sys, modelyard.api.v2.codec as c; "
        "bad = [m for m in ('fastapi', 'starlette', 'grpc', 'uvicorn', 'sqlalchemy') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_inputs_and_outputs_in_shared_memory_as_tritonclient_sends_them() -> None:
    """An input in a region beside one in the binary part: the region's is left to the data
    plane, and the header is never remembered (the next request with it must be read the same
    way); an output written to a region is answered without data."""
    in_region = tritonhttp.InferInput("a", [2], "FP32")
    in_region.set_shared_memory("r", 8)
    binary = tritonhttp.InferInput("b", [2], "INT32")
    binary.set_data_from_numpy(np.array([3, 4], np.int32), binary_data=True)
    out = tritonhttp.InferRequestedOutput("y")
    out.set_shared_memory("o", 8, offset=4)
    body, header_length = _get_inference_request([in_region, binary], "", [out], 0, False, False, 0, None, None)
    for _ in range(3):
        got = decode_infer_request(body, header_length)
        assert got.shared_memory and got.inputs[0].data.size == 0
        assert got.inputs[0].parameters == {"shared_memory_region": "r", "shared_memory_byte_size": 8}
        assert_same(got.inputs[1].data, np.array([3, 4], np.int32))
        assert got.outputs is not None and got.outputs[0].parameters.items() >= {
            "shared_memory_region": "o", "shared_memory_byte_size": 8, "shared_memory_offset": 4}.items()
    plain = decode_infer_request(json.dumps({"inputs": [
        {"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}]}).encode())
    assert not plain.shared_memory

    response = InferenceResponse("m", "1", [
        Tensor("y", "FP32", (2,), np.array([1, 2], np.float32),
               {"shared_memory_region": "o", "shared_memory_byte_size": 8}),
        Tensor.from_array("z", np.array([5, 6], np.float32)),
    ])
    payload, length = encode_infer_response(response, requested=None, binary_default=False)
    assert length is None
    assert json.loads(payload)["outputs"] == [
        {"name": "y", "datatype": "FP32", "shape": [2],
         "parameters": {"shared_memory_region": "o", "shared_memory_byte_size": 8}},
        {"name": "z", "datatype": "FP32", "shape": [2], "data": [5.0, 6.0]},
    ]
