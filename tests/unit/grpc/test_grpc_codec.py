"""The OIP v2 gRPC protos and codec: wire compatibility with tritonclient.grpc, round trips, errors."""

from __future__ import annotations

import subprocess
import sys
from concurrent import futures

import numpy as np
import pytest

from modelyard.errors import InvalidInput
from modelyard.grpc import codec
from modelyard.grpc.codec import (
    RawMessage,
    call_target,
    infer_call,
    parameters_from_proto,
    parameters_to_proto,
    request_from_proto,
    request_to_proto,
    response_from_proto,
    response_to_proto,
)
from modelyard.grpc.proto import grpc_service_pb2 as pb
from modelyard.grpc.proto import grpc_service_pb2_grpc as pb_grpc
from modelyard.tensors import InferenceRequest, InferenceResponse, RequestedOutput, Tensor

tritongrpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import model_config_pb2 as triton_config_pb  # noqa: E402
from tritonclient.grpc import service_pb2 as triton_pb  # noqa: E402
from tritonclient.grpc._utils import _get_inference_request  # noqa: E402

ALL = ["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
       "FP16", "FP32", "FP64", "BYTES"]


def sample(datatype: str) -> np.ndarray:
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if datatype == "BYTES":
        return np.array([[b"a", b"", "h\u00e9".encode()], [b"\xff" * 9, b"0", b"zz"]], dtype=object)
    dtype = np.dtype(datatype.replace("FP", "float").replace("UINT", "uint").replace("INT", "int").lower())
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.array([[info.min, 0, 1], [info.max, 7, info.max - 1]], dtype=dtype)
    return np.array([[-1.5, 0.0, 2.25], [1e3, -7.0, 0.125]], dtype=dtype)


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    if want.dtype == object:
        assert got.tolist() == want.tolist()
    else:
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def over_the_wire(msg, cls):  # type: ignore[no-untyped-def]
    return cls.FromString(msg.SerializeToString())


# ------------------------------------------------------------------------------ the proto


#: messages from Triton's model_config.proto: ModelYard's carry the fields it fills (a subset)
_CONFIG_MESSAGES = {
    "ModelConfig", "ModelInput", "ModelOutput", "ModelInstanceGroup", "ModelDynamicBatching", "ModelQueuePolicy",
}


def test_messages_and_field_numbers_match_tritons_proto() -> None:
    ours = pb.DESCRIPTOR
    theirs = triton_pb.DESCRIPTOR
    assert ours.package == theirs.package == triton_config_pb.DESCRIPTOR.package == "inference"

    def fields(message):  # type: ignore[no-untyped-def]
        return {f.number: (f.name, f.type, f.label, getattr(f.message_type, "full_name", None),
                           getattr(f.enum_type, "full_name", None)) for f in message.fields}

    def compare(a, b, subset: bool) -> None:  # type: ignore[no-untyped-def]
        assert a.full_name == b.full_name
        fa, fb = fields(a), fields(b)
        if subset:  # every field of ours is Triton's, same number and type; proto3 skips the rest
            assert fa.items() <= fb.items(), a.full_name
        else:
            assert fa == fb, a.full_name
        assert [o.name for o in a.oneofs] == [o.name for o in b.oneofs]
        for nested in a.nested_types:
            compare(nested, b.nested_types_by_name[nested.name], subset)
        for enum in a.enum_types:
            other = b.enum_types_by_name[enum.name]
            assert [(v.name, v.number) for v in enum.values] == [(v.name, v.number) for v in other.values]

    # 15 for inference, 7 for the model repository, 8 for statistics, 12 for model configuration,
    # 2 for log settings, 12 for shared memory (system and CUDA), 2 for trace settings
    assert len(ours.message_types_by_name) == 58
    config = triton_config_pb.DESCRIPTOR
    for name, message in ours.message_types_by_name.items():
        if name in theirs.message_types_by_name:
            compare(message, theirs.message_types_by_name[name], subset=False)
        else:
            compare(message, config.message_types_by_name[name], subset=name in _CONFIG_MESSAGES)
    (data_type,) = ours.enum_types_by_name.values()
    assert [(v.name, v.number) for v in data_type.values] == [
        (v.name, v.number) for v in config.enum_types_by_name["DataType"].values]
    service = ours.services_by_name["GRPCInferenceService"]
    triton_service = theirs.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert {m.name for m in service.methods} == {m.name for m in triton_service.methods}  # every RPC of Triton's
    for method in service.methods:
        other = triton_service.methods_by_name[method.name]
        assert method.input_type.full_name == other.input_type.full_name
        assert method.output_type.full_name == other.output_type.full_name


@pytest.mark.parametrize("first", ["tritonclient.grpc", "modelyard.grpc.proto.grpc_service_pb2_grpc"])
def test_our_protos_and_tritonclient_grpc_import_in_one_process(first: str) -> None:
    second = ({"tritonclient.grpc", "modelyard.grpc.proto.grpc_service_pb2_grpc"} - {first}).pop()
    code = (
        f"import {first}, {second}\n"
        "from modelyard.grpc.proto import grpc_service_pb2 as ours\n"
        "from tritonclient.grpc import service_pb2 as theirs\n"
        "m = ours.ModelInferRequest(model_name='m', raw_input_contents=[b'x'])\n"
        "t = theirs.ModelInferRequest.FromString(m.SerializeToString())\n"
        "assert t.model_name == 'm' and list(t.raw_input_contents) == [b'x']\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_tritonclient_grpc_talks_to_a_server_built_from_our_service_definition() -> None:
    """Method paths and messages interoperate with the real client over a real channel."""

    class Echo(pb_grpc.GRPCInferenceServiceServicer):
        def ServerLive(self, request, context):  # type: ignore[no-untyped-def]
            return pb.ServerLiveResponse(live=True)

        def ModelInfer(self, request, context):  # type: ignore[no-untyped-def]
            req = request_from_proto(request)
            outs = [Tensor(name=t.name.replace("IN", "OUT"), datatype=t.datatype, shape=t.shape,
                           data=t.data) for t in req.inputs]
            resp = InferenceResponse(model_name=request.model_name, model_version="1",
                                     outputs=outs, id=req.id)
            return response_to_proto(resp, raw=True, requested=[
                RequestedOutput(o.name, o.parameters) for o in req.outputs or []] or None)

    server = __import__("grpc").server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = tritongrpc.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_live()
        inputs = []
        for i, datatype in enumerate(ALL):
            array = sample(datatype)
            inputs.append(tritongrpc.InferInput(f"IN{i}", list(array.shape), datatype)
                          .set_data_from_numpy(array))
        result = client.infer("echo", inputs, request_id="abc")
        assert result.get_response().id == "abc"
        for i, datatype in enumerate(ALL):
            assert_same(result.as_numpy(f"OUT{i}"), sample(datatype))
        picked = client.infer("echo", inputs[:3], outputs=[tritongrpc.InferRequestedOutput("OUT2")])
        assert [o.name for o in picked.get_response().outputs] == ["OUT2"]
        client.close()
    finally:
        server.stop(None)


# ------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("datatype", ALL)
@pytest.mark.parametrize("raw", [True, False])
def test_request_round_trip_every_datatype(datatype: str, raw: bool) -> None:
    array = sample(datatype)
    req = InferenceRequest(
        inputs=[Tensor.from_array("x", array, note="n"), Tensor.from_array("k", np.arange(2, dtype=np.int32))],
        outputs=[RequestedOutput("y", {"classification": 2})],
        id="r1",
        parameters={"priority": 3, "flag": True},
    )
    msg = over_the_wire(request_to_proto(req, model_name="m", raw=raw), pb.ModelInferRequest)
    assert msg.model_name == "m"
    assert bool(len(msg.raw_input_contents)) == (raw or datatype == "FP16")
    got = request_from_proto(msg)
    x, k = got.inputs
    assert (x.name, x.datatype, x.shape, x.parameters) == ("x", datatype, (2, 3), {"note": "n"})
    assert_same(x.data, array)
    assert_same(k.data, np.arange(2, dtype=np.int32))
    assert got.outputs == [RequestedOutput("y", {"classification": 2})]
    assert got.id == "r1"
    assert got.parameters == {"priority": 3, "flag": True}


@pytest.mark.parametrize("datatype", ALL)
def test_tritonclient_grpc_request_decodes(datatype: str) -> None:
    array = sample(datatype)
    inp = tritongrpc.InferInput("INPUT0", list(array.shape), datatype).set_data_from_numpy(array)
    msg = _get_inference_request(
        "m", [inp], "2", "id-1", [tritongrpc.InferRequestedOutput("OUT")], 7, True, False, 0, None,
        {"custom": "v"},
    )
    got = request_from_proto(pb.ModelInferRequest.FromString(msg.SerializeToString()))
    assert_same(got.inputs[0].data, array)
    assert got.id == "id-1"
    assert got.outputs == [RequestedOutput("OUT", {})]
    assert got.parameters == {"sequence_id": 7, "sequence_start": True, "sequence_end": False,
                              "custom": "v"}


@pytest.mark.parametrize("datatype", ALL)
def test_tritonclient_grpc_reads_our_raw_response(datatype: str) -> None:
    array = sample(datatype)
    resp = InferenceResponse(model_name="m", model_version="4",
                             outputs=[Tensor.from_array("out", array)], id="z")
    wire = response_to_proto(resp, raw=True).SerializeToString()
    result = tritongrpc.InferResult(triton_pb.ModelInferResponse.FromString(wire))
    assert_same(result.as_numpy("out"), array)
    assert result.get_response().model_version == "4"


@pytest.mark.parametrize("datatype", ALL)
@pytest.mark.parametrize("raw", [True, False])
def test_response_round_trip_every_datatype(datatype: str, raw: bool) -> None:
    array = sample(datatype)
    resp = InferenceResponse(model_name="m", model_version="1",
                             outputs=[Tensor.from_array("out", array)], parameters={"n": 1})
    msg = over_the_wire(response_to_proto(resp, raw=raw), pb.ModelInferResponse)
    assert bool(len(msg.raw_output_contents)) == (raw or datatype == "FP16")
    got = response_from_proto(msg)
    assert got.parameters == {"n": 1}
    assert got.id is None
    assert_same(got.outputs[0].data, array)


def test_fp16_makes_a_typed_response_raw_for_every_output() -> None:
    resp = InferenceResponse(model_name="m", model_version="1", outputs=[
        Tensor.from_array("a", np.array([1, 2], np.int32)),
        Tensor.from_array("h", np.array([0.5], np.float16)),
    ])
    msg = response_to_proto(resp, raw=False)
    assert len(msg.raw_output_contents) == 2
    assert not msg.outputs[0].contents.int_contents


def test_requested_outputs_select_and_order() -> None:
    resp = InferenceResponse(model_name="m", model_version="1", outputs=[
        Tensor.from_array("a", np.array([1], np.int32)), Tensor.from_array("b", np.array([2], np.int32))])
    msg = response_to_proto(resp, raw=True, requested=[RequestedOutput("b"), RequestedOutput("a")])
    assert [o.name for o in msg.outputs] == ["b", "a"]
    with pytest.raises(InvalidInput, match="requested output 'c'"):
        response_to_proto(resp, raw=True, requested=[RequestedOutput("c")])


def test_parameters_round_trip() -> None:
    msg = pb.ModelInferRequest()
    params = {"b": True, "i": -5, "u": 2**64 - 1, "f": 0.25, "s": "x", "j": {"k": [1]}, "none": None}
    parameters_to_proto(msg.parameters, params)
    back = parameters_from_proto(over_the_wire(msg, pb.ModelInferRequest).parameters)
    assert back == {"b": True, "i": -5, "u": 2**64 - 1, "f": 0.25, "s": "x", "j": '{"k": [1]}',
                    "none": None}
    assert msg.parameters["u"].WhichOneof("parameter_choice") == "uint64_param"


# ------------------------------------------------------------------------------ bad requests


def request(datatype: str = "FP32", shape: tuple[int, ...] = (2,), **contents: list) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name="m")
    inp = msg.inputs.add(name="x", datatype=datatype, shape=list(shape))
    for field, values in contents.items():
        getattr(inp.contents, field).extend(values)
    return msg


def with_raw(msg: pb.ModelInferRequest, *blobs: bytes) -> pb.ModelInferRequest:
    msg.raw_input_contents.extend(blobs)
    return msg


def duplicate() -> pb.ModelInferRequest:
    msg = request(fp32_contents=[1, 2])
    msg.inputs.add(name="x", datatype="FP32", shape=[1]).contents.fp32_contents.append(1)
    return msg


def shared_memory() -> pb.ModelInferRequest:
    msg = request(fp32_contents=[1, 2])
    msg.inputs[0].parameters["shared_memory_region"].string_param = "r"
    return msg


def nameless() -> pb.ModelInferRequest:
    msg = request(fp32_contents=[1, 2])
    msg.inputs[0].name = ""
    return msg


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        (lambda: request("FP8", fp32_contents=[1, 2]), ["input 'x'", "unknown datatype 'FP8'"]),
        (lambda: request("", fp32_contents=[1, 2]), ["input 'x'", "missing 'datatype'"]),
        (nameless, ["input #0", "missing 'name'"]),
        (duplicate, ["input 'x'", "more than once"]),
        (shared_memory, ["input 'x'", "shared memory"]),
        (lambda: request(shape=(-1, 2), fp32_contents=[1, 2]), ["input 'x'", "negative dimension"]),
        (lambda: request(shape=(3,), fp32_contents=[1, 2]), ["input 'x'", "2 elements", "needs 3"]),
        (lambda: request(), ["input 'x'", "no data", "fp32_contents"]),
        (lambda: request(int_contents=[1, 2]), ["input 'x'", "FP32", "fp32_contents", "int_contents"]),
        (lambda: request("INT32", bytes_contents=[b"a", b"b"]), ["input 'x'", "int_contents", "bytes_contents"]),
        (lambda: request("INT8", int_contents=[1, 300]), ["input 'x'", "out of range for INT8"]),
        (lambda: request("UINT16", uint_contents=[70000, 1]), ["input 'x'", "out of range for UINT16"]),
        (lambda: request("FP16", fp32_contents=[1, 2]), ["input 'x'", "FP16", "raw contents"]),
        (lambda: request("FP16"), ["input 'x'", "FP16", "raw contents"]),
        (lambda: with_raw(request(), b"\0" * 4), ["input 'x'", "4 bytes", "needs 8"]),
        (lambda: with_raw(request(), b"\0" * 8, b"\0" * 8), ["raw_input_contents has 2 entries", "1 inputs"]),
        (lambda: with_raw(request(fp32_contents=[1, 2]), b"\0" * 8), ["input 'x'", "both contents and raw"]),
        (lambda: with_raw(request("BYTES"), b"\x05\0\0\0ab"), ["input 'x'", "claims 5 bytes"]),
        (lambda: with_raw(request("BYTES"), b"\x01\0\0\0a"), ["input 'x'", "1 BYTES elements", "needs 2"]),
        (lambda: with_raw(request("BOOL"), b"\x00\x07"), ["input 'x'", "0 and 1"]),
    ],
)
def test_bad_requests_are_invalid_input(make, fragments: list[str]) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput) as info:
        request_from_proto(over_the_wire(make(), pb.ModelInferRequest))
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_empty_tensor_needs_no_contents() -> None:
    (t,) = request_from_proto(request(shape=(0, 4))).inputs
    assert t.data.shape == (0, 4) and t.data.dtype == np.float32


def test_raw_numeric_input_decodes_without_extra_copies() -> None:
    data = np.arange(16, dtype=np.float32)
    got = request_from_proto(with_raw(request(shape=(4, 4)), data.tobytes()))
    assert_same(got.inputs[0].data, data.reshape(4, 4))
    assert not got.inputs[0].data.flags.writeable


@pytest.mark.parametrize("name, version", [("tiny", ""), ("tiny", "3"), ("é" * 100, "12")])
def test_call_target_reads_the_model_off_the_first_fields(name: str, version: str) -> None:
    message = pb.ModelInferRequest(model_name=name, model_version=version, id="x")
    message.raw_input_contents.append(b"\0" * 16)
    data = message.SerializeToString()
    assert call_target(data) == (name, version)
    assert call_target(b"\0\0\0\0\0" + data, 5) == (name, version), "after the gRPC frame prefix"


@pytest.mark.parametrize("data", [
    b"", pb.ModelInferRequest(id="x").SerializeToString(), b"\x0a\x05ab", b"\x0a\xff", b"\x0a\x02\xff\xfe",
])
def test_call_target_is_none_unless_the_message_starts_with_a_model_name(data: bytes) -> None:
    assert call_target(data) is None


def test_calls_that_differ_only_in_raw_contents_are_read_off_their_bytes_each_its_own() -> None:
    """After one call has been decoded, the next whose bytes are the same other fields followed
    by its raw contents is not parsed again, and still gets its own values; bytes that say
    anything more (another field after the contents, a content of another size) are parsed."""
    def call(values: list[float], tail: bytes = b"") -> bytes:
        message = pb.ModelInferRequest(model_name="m", id="a")
        message.inputs.add(name="x", datatype="FP32", shape=[1, len(values)])
        message.raw_input_contents.append(np.array(values, np.float32).tobytes())
        return message.SerializeToString() + tail

    first = infer_call(RawMessage(call([1, 2, 3])))
    assert codec._last is not None and call([4, 5, 6]).startswith(codec._last.prefix)
    second = infer_call(RawMessage(call([4, 5, 6])))
    assert (second.model_name, second.request.id) == ("m", "a")
    assert_same(first.request.inputs[0].data, np.array([[1, 2, 3]], np.float32))
    assert_same(second.request.inputs[0].data, np.array([[4, 5, 6]], np.float32))
    assert codec._last.contents(call([7, 8, 9], tail=b"\x1a\x01z")) is None
    later = infer_call(RawMessage(call([7, 8, 9], tail=b"\x1a\x01z")))  # field 3 again: id "z"
    assert later.request.id == "z"
    assert_same(later.request.inputs[0].data, np.array([[7, 8, 9]], np.float32))
    short = pb.ModelInferRequest.FromString(call([1, 2, 3]))
    short.raw_input_contents[0] = b"\0" * 8
    assert codec._last.contents(short.SerializeToString()) is None
    with pytest.raises(InvalidInput, match=r"input .x.: binary data is 8 bytes but shape \[1, 3\] of FP32 needs 12"):
        infer_call(RawMessage(short.SerializeToString()))


def test_inputs_and_outputs_in_shared_memory_as_tritonclient_sends_them() -> None:
    """tritonclient sends raw contents only for the inputs not in a region; the request is never
    remembered (its region inputs are not in the message); an output written to a region keeps
    its place among the raw output contents, empty."""
    in_region = tritongrpc.InferInput("a", [2], "FP32")
    in_region.set_shared_memory("r", 8, offset=16)
    raw = tritongrpc.InferInput("b", [2], "INT32")
    raw.set_data_from_numpy(np.array([3, 4], np.int32))
    out = tritongrpc.InferRequestedOutput("y")
    out.set_shared_memory("o", 8)
    msg = _get_inference_request("m", [in_region, raw], "", "", [out], 0, False, False, 0, None, None)
    wire = msg.SerializeToString()
    for _ in range(3):  # the same bytes again: decoded as fully as the first time
        got = infer_call(RawMessage(wire)).request
        assert got.shared_memory
        assert got.inputs[0].data.size == 0 and got.inputs[0].parameters == {
            "shared_memory_region": "r", "shared_memory_byte_size": 8, "shared_memory_offset": 16}
        assert_same(got.inputs[1].data, np.array([3, 4], np.int32))
        assert got.outputs is not None and got.outputs[0].parameters["shared_memory_region"] == "o"
    bad = pb.ModelInferRequest.FromString(wire)
    bad.raw_input_contents.append(b"\0" * 8)
    with pytest.raises(InvalidInput, match="2 entries but the request has 1 inputs outside shared memory"):
        request_from_proto(bad)

    response = InferenceResponse("m", "1", [
        Tensor("y", "FP32", (2,), np.array([1, 2], np.float32),
               {"shared_memory_region": "o", "shared_memory_byte_size": 8}),
        Tensor.from_array("z", np.array([5, 6], np.float32)),
    ])
    answer = triton_pb.ModelInferResponse.FromString(codec.encode_response(response))
    assert list(answer.raw_output_contents) == [b"", np.array([5, 6], np.float32).tobytes()]
    assert answer.outputs[0].parameters["shared_memory_byte_size"].int64_param == 8
    result = tritongrpc.InferResult(answer)
    assert_same(result.as_numpy("z"), np.array([5, 6], np.float32))
