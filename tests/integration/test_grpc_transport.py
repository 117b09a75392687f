"""The native HTTP/2 gRPC transport against grpcio's and tritonclient's clients: large messages
through flow control both ways, many calls multiplexed on one connection, unknown methods,
bidirectional streams (messages run concurrently, answers in completion order, deadlines, bad
messages), deadlines, cancelled calls, unparsable messages, graceful stop; and the grpcio
transport, still selectable, answering the same calls."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from modelyard.grpc.proto import grpc_service_pb2 as pb
from tests.integration._serving import (
    HOLDING_ROWS,
    SLOW_WIDTH,
    metric,
    queue_full_refusals,
    register,
    scale_model,
    slow_model,
    wait_for_computing,
    wait_for_queue,
)
from tests.integration.onnx_models import identity_model
from tests.support.live import LiveServer, wait_until

_SERVICE = "/inference.GRPCInferenceService/"



@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home: Path = tmp_path_factory.mktemp("grpc-native") / "home"
    srv = LiveServer.build(home, grpc_enabled=True).start()
    (home / "m").mkdir(parents=True, exist_ok=True)
    (home / "m" / "identity.onnx").write_bytes(identity_model("FP32", ("n", 1024)))
    register(srv, "identity", home / "m" / "identity.onnx")
    register(srv, "scale", scale_model(home / "m" / "scale.onnx", 3.0))
    register(srv, "slow", slow_model(home / "m" / "slow.onnx", 160_000), config={"serving": {"batching": False}})
    # only the cancellation test computes on "patient"; its long call takes seconds
    register(srv, "patient", slow_model(home / "m" / "patient.onnx", 160_000), config={"serving": {"batching": False}})
    register(srv, "tight", slow_model(home / "m" / "tight.onnx", 160_000),
             config={"serving": {"batching": False, "max_queue_size": 1}})
    try:
        yield srv
    finally:
        srv.stop()


def _metadata(server: LiveServer) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {server.admin_key}"),)


def _infer_request(model: str, x: np.ndarray, name: str = "x") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.astype(np.float32).tobytes())
    return request


def _call(channel: grpc.Channel, method: str = "ModelInfer") -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(
        _SERVICE + method,
        request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
        response_deserializer=pb.ModelInferResponse.FromString,
    )


def test_large_messages_flow_both_ways(server: LiveServer) -> None:
    """8 MB in and 8 MB out: far past HTTP/2's default 64 KB windows on either side."""
    x = np.random.default_rng(1).standard_normal((2048, 1024)).astype(np.float32)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("identity", [inp], headers={"authorization": f"Bearer {server.admin_key}"})
    np.testing.assert_array_equal(result.as_numpy("y"), x)


def test_many_calls_multiplexed_on_one_connection(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each of 200 calls of one shape gets its own answer; after the first, they are read off
    their bytes (the prefix they share with the call before), not parsed again."""
    from modelyard.grpc import codec

    read_off: list[int] = []
    contents = codec._Prepared.contents

    def counted(self: codec._Prepared, data: bytes) -> list[bytes] | None:
        parts = contents(self, data)
        read_off.append(parts is not None)
        return parts

    monkeypatch.setattr(codec._Prepared, "contents", counted)
    rng = np.random.default_rng(2)
    inputs = [rng.standard_normal((1, 4)).astype(np.float32) for _ in range(200)]
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = _call(channel)
        futures = [call.future(_infer_request("scale", x), metadata=_metadata(server)) for x in inputs]
        for x, future in zip(inputs, futures):
            answer = future.result(timeout=60)
            y = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(1, 4)
            np.testing.assert_allclose(y, x * 3.0, rtol=1e-6)
    assert sum(read_off) >= 199, f"{sum(read_off)} of 200 calls read off their bytes"


def test_unknown_methods_are_unimplemented(server: LiveServer) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        with pytest.raises(grpc.RpcError) as info:
            _call(channel, "NoSuchMethod")(b"", metadata=_metadata(server), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def _stream(channel: grpc.Channel) -> grpc.StreamStreamMultiCallable:
    return channel.stream_stream(
        _SERVICE + "ModelStreamInfer",
        request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
        response_deserializer=pb.ModelStreamInferResponse.FromString,
    )


def _tagged(model: str, x: np.ndarray, tag: str, name: str = "x") -> pb.ModelInferRequest:
    request = _infer_request(model, x, name)
    request.id = tag
    return request


def test_a_streams_messages_run_concurrently_and_answer_in_completion_order(server: LiveServer) -> None:
    """A long message, then quick ones and a bad one: the quick answers (and the bad one's
    error, which does not end the stream) come back before the long one; every answer carries
    its request's id, and the stream then ends with OK."""
    quick = [np.full((1, 4), i, np.float32) for i in range(5)]
    messages = [_tagged("patient", np.zeros((64, SLOW_WIDTH), np.float32), "long")]
    messages += [_tagged("scale", x, f"quick-{i}") for i, x in enumerate(quick)]
    messages.append(_tagged("scale", np.ones((1, 3), np.float32), "bad"))  # the model takes [n, 4]
    with grpc.insecure_channel(server.grpc_url) as channel:
        answers = list(_stream(channel)(iter(messages), metadata=_metadata(server), timeout=60))
    assert len(answers) == len(messages)
    order = [a.infer_response.id or "error" for a in answers]
    assert order[-1] == "long", order
    errors = [a.error_message for a in answers if a.error_message]
    assert len(errors) == 1 and "shape" in errors[0]
    for answer in answers:
        if answer.infer_response.id.startswith("quick-"):
            x = quick[int(answer.infer_response.id.split("-")[1])]
            y = np.frombuffer(answer.infer_response.raw_output_contents[0], np.float32).reshape(1, 4)
            np.testing.assert_allclose(y, x * 3.0, rtol=1e-6)


def test_a_stream_with_no_messages_ends_ok_a_bad_key_ends_it_a_bad_message_does_not(server: LiveServer) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        assert list(_stream(channel)(iter([]), metadata=_metadata(server), timeout=10)) == []
        with pytest.raises(grpc.RpcError) as info:
            list(_stream(channel)(iter([_tagged("scale", np.ones((1, 4), np.float32), "a")]), timeout=10))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # a message that is not a ModelInferRequest is that message's error; the stream goes on
        garbage, good = b"\xff\xff\xff\xff", _tagged("scale", np.ones((1, 4), np.float32), "good")
        answers = list(_stream(channel)(iter([garbage, good]), metadata=_metadata(server), timeout=10))
        assert len(answers) == 2 and "cannot be parsed" in answers[0].error_message
        assert answers[1].infer_response.id == "good" and not answers[1].error_message


def test_large_stream_messages_flow_both_ways(server: LiveServer) -> None:
    """Two 8 MB messages each way on one stream: past the default 64 KB windows, answers wait
    for the client's window and the trailers wait for the answers."""
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal((2048, 1024)).astype(np.float32) for _ in range(2)]
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    with grpc.insecure_channel(server.grpc_url, options=options) as channel:
        answers = list(_stream(channel)(iter([_tagged("identity", x, str(i)) for i, x in enumerate(xs)]),
                                        metadata=_metadata(server), timeout=60))
    assert sorted(a.infer_response.id for a in answers) == ["0", "1"]
    for answer in answers:
        y = np.frombuffer(answer.infer_response.raw_output_contents[0], np.float32).reshape(2048, 1024)
        np.testing.assert_array_equal(y, xs[int(answer.infer_response.id)])


def test_a_streams_deadline_ends_it_and_drops_its_work(server: LiveServer) -> None:
    x = np.zeros((64, SLOW_WIDTH), np.float32)  # about a second of work
    with grpc.insecure_channel(server.grpc_url) as channel:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            list(_stream(channel)(iter([_tagged("slow", x, "long")]), metadata=_metadata(server), timeout=0.2))
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 5


def test_a_full_queue_is_resource_exhausted_with_retry_after(server: LiveServer) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = _call(channel)
        long = call.future(_infer_request("tight", np.zeros((HOLDING_ROWS, SLOW_WIDTH), np.float32)), metadata=_metadata(server))
        wait_for_computing(server)
        queued = call.future(_infer_request("tight", np.zeros((1, SLOW_WIDTH), np.float32)), metadata=_metadata(server))
        wait_for_queue(server, 1)  # the queue (one request) is full
        refused = call.future(_infer_request("tight", np.zeros((1, SLOW_WIDTH), np.float32)), metadata=_metadata(server))
        error = refused.exception(timeout=30)
        assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue" in (error.details() or "")
        retry_after = dict(error.trailing_metadata() or ())["retry-after"]
        assert int(retry_after) >= 1
        long.result(timeout=60)
        queued.result(timeout=60)


def test_a_refused_callers_next_calls_are_refused_undecoded_and_its_connection_waits_for_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After RESOURCE_EXHAUSTED, the caller's connection is not read until the queue has room:
    the call it sends meanwhile waits, then is served. Its next calls on other connections for
    that model are refused before their message is decoded (one that is not a valid message
    past its model name still gets RESOURCE_EXHAUSTED, with the same retry-after), and those
    connections wait for room too. Another caller's calls are decoded as usual. Every refusal
    is counted."""
    from modelyard.engine import batcher as batcher_module

    monkeypatch.setattr(batcher_module, "ROOM_WAIT_MAX_S", 60.0)  # only room lets it in here
    srv = LiveServer.build(tmp_path / "home", grpc_enabled=True).start()
    register(srv, "tight", slow_model(tmp_path / "tight.onnx", 160_000),
             config={"serving": {"batching": False, "max_queue_size": 1}})
    assert srv.platform is not None
    try:
        with srv.client() as admin:
            other = admin.post("/api/v1/keys", json={"role": "inference"}).json()["secret"]
        undecodable = b"\x0a\x05tight\xff\xff\xff"  # the model's name, then not a message
        own = [("grpc.use_local_subchannel_pool", 1)]  # its own connection (channels share one by default)
        with (
            grpc.insecure_channel(srv.grpc_url) as channel,
            grpc.insecure_channel(srv.grpc_url, options=own) as second,
            grpc.insecure_channel(srv.grpc_url, options=own) as third,
        ):
            call, meta = _call(channel), _metadata(srv)
            long = call.future(_infer_request("tight", np.zeros((HOLDING_ROWS, SLOW_WIDTH), np.float32)), metadata=meta)
            wait_until(lambda: any(m.batchers for m in srv.platform.manager.loaded()))
            (batcher,) = [b for m in srv.platform.manager.loaded() for b in m.batchers.values()]
            wait_until(lambda: batcher.in_flight == 1 and batcher.queue_depth == 0)
            queued = call.future(_infer_request("tight", np.zeros((1, SLOW_WIDTH), np.float32)), metadata=meta)
            wait_until(lambda: batcher.full)
            refused = call.future(_infer_request("tight", np.zeros((1, SLOW_WIDTH), np.float32)), metadata=meta)
            first = refused.exception(timeout=30)
            assert isinstance(first, grpc.RpcError) and first.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert batcher.waiting_for_room == 1, "the refused connection is not read from then on"
            with pytest.raises(grpc.RpcError) as info:
                _call(second)(undecodable, metadata=(("authorization", f"Bearer {other}"),), timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, "another caller is decoded"
            with pytest.raises(grpc.RpcError) as info:
                _call(third)(undecodable, metadata=meta, timeout=30)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, "refused before decoding"
            assert dict(info.value.trailing_metadata() or ())["retry-after"] == \
                dict(first.trailing_metadata() or ())["retry-after"]
            assert batcher.waiting_for_room == 2, "the caller's other connection waits for room too"
            waiting = call.future(_infer_request("tight", np.ones((1, SLOW_WIDTH), np.float32)), metadata=meta)
            time.sleep(0.2)
            assert not waiting.done() and batcher.full, "its call waits unread while the queue is full"
            long.result(timeout=60)
            queued.result(timeout=60)
            assert len(waiting.result(timeout=60).raw_output_contents) == 1, "read and served once there is room"
            wait_until(lambda: batcher.waiting_for_room == 0)
        assert queue_full_refusals(srv, "tight") == (2, 2)
    finally:
        srv.stop()


def test_a_screened_callers_connection_is_held_after_a_served_call_while_its_queue_has_no_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a caller has been refused, a call of its that is *served* while the queue still has
    no room leaves its connection unread too (as HTTP/1.1 does after an answer): the next call
    sent on it waits in the socket until the connection is let in, then is served."""
    from modelyard.core.queue_gates import QueueGates
    from modelyard.engine import batcher as batcher_module
    from modelyard.grpc import servicer as servicer_module

    monkeypatch.setattr(batcher_module, "ROOM_WAIT_MAX_S", 60.0)  # only room lets them in here
    monkeypatch.setattr(batcher_module, "_ROOM_RECOUNT_S", 60.0)  # a slot let in stays promised
    # the caller's gate outlives the long batch however slow the machine
    monkeypatch.setattr(servicer_module, "QueueGates", lambda: QueueGates(ttl_s=60.0))
    srv = LiveServer.build(tmp_path / "home", grpc_enabled=True).start()
    register(srv, "tight", slow_model(tmp_path / "tight.onnx", 160_000),
             config={"serving": {"batching": False, "max_queue_size": 1}})
    assert srv.platform is not None
    own = [("grpc.use_local_subchannel_pool", 1)]  # a connection each (channels share one by default)
    meta = _metadata(srv)
    x = np.zeros((1, SLOW_WIDTH), np.float32)
    try:
        with (
            grpc.insecure_channel(srv.grpc_url, options=own) as first,
            grpc.insecure_channel(srv.grpc_url, options=own) as second,
            grpc.insecure_channel(srv.grpc_url, options=own) as third,
        ):
            long = _call(first).future(_infer_request("tight", np.zeros((64, SLOW_WIDTH), np.float32)), metadata=meta)
            wait_until(lambda: any(m.batchers for m in srv.platform.manager.loaded()))
            (batcher,) = [b for m in srv.platform.manager.loaded() for b in m.batchers.values()]
            wait_until(lambda: batcher.in_flight == 1 and batcher.queue_depth == 0)
            queued = _call(second).future(_infer_request("tight", x), metadata=meta)
            wait_until(lambda: batcher.full)
            with pytest.raises(grpc.RpcError) as info:
                _call(third)(_infer_request("tight", x), metadata=meta, timeout=30)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert batcher.waiting_for_room == 1, "the refused connection waits for room"
            long.result(timeout=60)  # served as `queued` starts: the refused one is let in, its slot kept
            assert batcher.waiting_for_room == 1, "the served call's connection waits in its place"
            waiting = _call(first).future(_infer_request("tight", np.ones((1, SLOW_WIDTH), np.float32)), metadata=meta)
            filler = _call(third).future(_infer_request("tight", x), metadata=meta)  # takes the kept slot
            time.sleep(0.3)
            assert not waiting.done(), "sent on the held connection: not read yet"
            queued.result(timeout=60)
            filler.result(timeout=60)
            assert len(waiting.result(timeout=60).raw_output_contents) == 1, "read once let in, and served"
        assert queue_full_refusals(srv, "tight") == (1, 1)
    finally:
        srv.stop()


def test_a_revoked_callers_calls_are_authenticated_again_not_screened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller screened after RESOURCE_EXHAUSTED, once its key is revoked, is authenticated
    again: UNAUTHENTICATED, not the remembered refusal."""
    from modelyard.client import Client
    from modelyard.core.queue_gates import QueueGates
    from modelyard.grpc import servicer as servicer_module

    # the gate outlives the revocation's round trips however slow the machine
    monkeypatch.setattr(servicer_module, "QueueGates", lambda: QueueGates(ttl_s=60.0))
    srv = LiveServer.build(tmp_path / "home", grpc_enabled=True).start()
    register(srv, "tight", slow_model(tmp_path / "tight.onnx", 400_000),  # 64 rows: seconds
             config={"serving": {"batching": False, "max_queue_size": 1}})
    assert srv.platform is not None
    try:
        with Client(url=srv.url, api_key=srv.admin_key) as admin:
            created = admin.keys.create("inference", name="revoked soon")
        flood = (("authorization", f"Bearer {created.secret}"),)
        undecodable = b"\x0a\x05tight\xff\xff\xff"
        with grpc.insecure_channel(srv.grpc_url) as channel:
            call = _call(channel)
            long = call.future(_infer_request("tight", np.zeros((64, SLOW_WIDTH), np.float32)), metadata=_metadata(srv))
            wait_until(lambda: any(m.batchers for m in srv.platform.manager.loaded()))
            (batcher,) = [b for m in srv.platform.manager.loaded() for b in m.batchers.values()]
            # computing, not just queued: else `full` below is met by the long call itself, and the
            # flood can reach the queue before the queued call does (and be served)
            wait_until(lambda: batcher.in_flight == 1 and batcher.queue_depth == 0)
            queued = call.future(_infer_request("tight", np.zeros((1, SLOW_WIDTH), np.float32)), metadata=_metadata(srv))
            wait_until(lambda: batcher.full)
            codes = []
            for message in (_infer_request("tight", np.zeros((1, SLOW_WIDTH), np.float32)), undecodable):
                with grpc.insecure_channel(srv.grpc_url) as fresh, pytest.raises(grpc.RpcError) as info:
                    _call(fresh)(message, metadata=flood, timeout=30)
                codes.append(info.value.code())
            assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2, "the second one from the screen"
            with Client(url=srv.url, api_key=srv.admin_key) as admin:
                admin.keys.revoke(created.key.id)
            assert batcher.full, "the queue is still full: only the revocation stops the screen"
            with grpc.insecure_channel(srv.grpc_url) as fresh, pytest.raises(grpc.RpcError) as info:
                _call(fresh)(undecodable, metadata=flood, timeout=30)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            long.result(timeout=60)
            queued.result(timeout=60)
    finally:
        srv.stop()


def test_unparsable_message_is_invalid_argument(server: LiveServer) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        with pytest.raises(grpc.RpcError) as info:
            _call(channel)(b"\xff\xff\xff\xff", metadata=_metadata(server), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot be parsed" in (info.value.details() or "")


def test_deadline_is_enforced(server: LiveServer) -> None:
    x = np.zeros((64, SLOW_WIDTH), np.float32)  # about a second of work
    with grpc.insecure_channel(server.grpc_url) as channel:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            _call(channel)(_infer_request("slow", x), metadata=_metadata(server), timeout=0.2)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 5


def test_cancelled_calls_drop_their_queued_work(server: LiveServer) -> None:
    """Three calls queue behind a long one and are cancelled: their work never runs."""
    with server.client() as http:
        before = metric(http.get("/metrics").text, "modelyard_compute_seconds_count", model="patient")
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = _call(channel)
        long = call.future(_infer_request("patient", np.zeros((HOLDING_ROWS, SLOW_WIDTH), np.float32)),
                           metadata=_metadata(server))
        wait_for_computing(server)
        queued = [call.future(_infer_request("patient", np.zeros((1, SLOW_WIDTH), np.float32)),
                              metadata=_metadata(server))
                  for _ in range(3)]
        wait_for_queue(server, 3)
        assert not long.done(), "the long call must still be computing when the others give up"
        for future in queued:
            future.cancel()
        long.result(timeout=60)
    time.sleep(0.5)
    with server.client() as http:
        after = metric(http.get("/metrics").text, "modelyard_compute_seconds_count", model="patient")
    assert after - before == 1, "cancelled calls must not compute"


def test_a_cancelled_stream_drops_its_queued_messages(server: LiveServer) -> None:
    """A stream's long message computes while three more queue behind it; the stream is
    cancelled: the three never compute."""
    with server.client() as http:
        before = metric(http.get("/metrics").text, "modelyard_compute_seconds_count", model="patient")
    messages = [_tagged("patient", np.zeros((HOLDING_ROWS, SLOW_WIDTH), np.float32), "long")]
    messages += [_tagged("patient", np.zeros((1, SLOW_WIDTH), np.float32), f"q{i}") for i in range(3)]
    opened = threading.Event()

    def requests() -> Iterator[pb.ModelInferRequest]:
        yield from messages
        opened.wait(10)  # keep the client's side open until the stream is cancelled

    with grpc.insecure_channel(server.grpc_url) as channel:
        call = _stream(channel)(requests(), metadata=_metadata(server))
        time.sleep(0.5)
        call.cancel()
        opened.set()
    with server.client() as http:
        deadline = time.monotonic() + 30
        while (after := metric(http.get("/metrics").text, "modelyard_compute_seconds_count", model="patient")) \
                == before and time.monotonic() < deadline:
            time.sleep(0.1)  # the long message computes to its end
        time.sleep(0.5)  # the queued ones (milliseconds each) would have computed by now
        after = metric(http.get("/metrics").text, "modelyard_compute_seconds_count", model="patient")
    assert after - before == 1, "a cancelled stream's queued messages must not compute"


def test_graceful_stop_finishes_calls_in_flight(tmp_path: Path) -> None:
    srv = LiveServer.build(tmp_path / "home", grpc_enabled=True, drain_timeout_s=30).start()
    try:
        (tmp_path / "slow.onnx").parent.mkdir(exist_ok=True)
        register(srv, "slow", slow_model(tmp_path / "slow.onnx", 20_000), config={"serving": {"batching": False}})
        x = np.zeros((4, SLOW_WIDTH), np.float32)
        with grpc.insecure_channel(srv.grpc_url) as channel:
            future = _call(channel).future(_infer_request("slow", x), metadata=_metadata(srv))
            time.sleep(0.3)
            stopper = threading.Thread(target=srv.stop)
            stopper.start()
            answer = future.result(timeout=60)
            stopper.join(timeout=60)
        assert np.frombuffer(answer.raw_output_contents[0], np.float32).shape == (4 * SLOW_WIDTH,)
    finally:
        if srv.platform is not None and srv._thread is not None and srv._thread.is_alive():
            srv.stop()


def test_a_stop_answers_a_streams_messages_in_flight_then_ends_the_open_streams(tmp_path: Path) -> None:
    """Two streams stay open at the stop, one idle and one with a message computing: the message
    is answered, then both end with UNAVAILABLE, and the stop does not wait for the drain
    timeout (30 s here) for clients that never end their streams."""
    srv = LiveServer.build(tmp_path / "home", grpc_enabled=True, drain_timeout_s=30).start()
    release = threading.Event()
    try:
        register(srv, "scale", scale_model(tmp_path / "scale.onnx", 2.0))
        register(srv, "slow", slow_model(tmp_path / "slow.onnx", 20_000), config={"serving": {"batching": False}})

        def requests(message: pb.ModelInferRequest) -> Iterator[pb.ModelInferRequest]:
            yield message
            release.wait(60)  # the client never ends its side on its own

        with grpc.insecure_channel(srv.grpc_url) as channel:
            idle = _stream(channel)(requests(_tagged("scale", np.ones((1, 4), np.float32), "idle")),
                                    metadata=_metadata(srv))
            assert next(idle).infer_response.id == "idle"
            busy = _stream(channel)(requests(_tagged("slow", np.zeros((4, SLOW_WIDTH), np.float32), "busy")),
                                    metadata=_metadata(srv))
            time.sleep(0.3)  # the slow message is computing
            started = time.monotonic()
            stopper = threading.Thread(target=srv.stop)
            stopper.start()
            assert next(busy).infer_response.id == "busy", "the message in flight is answered"
            for stream in (busy, idle):
                with pytest.raises(grpc.RpcError) as info:
                    next(stream)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "open a new stream" in (info.value.details() or "")
            stopper.join(timeout=60)
            assert time.monotonic() - started < 10, "the open streams held the stop up"
            release.set()
    finally:
        release.set()
        if srv.platform is not None and srv._thread is not None and srv._thread.is_alive():
            srv.stop()


def test_grpcio_transport_answers_the_same(tmp_path: Path) -> None:
    srv = LiveServer.build(tmp_path / "home", grpc_enabled=True, grpc_transport="grpcio").start()
    try:
        register(srv, "scale", scale_model(tmp_path / "scale.onnx", 2.0))
        client = grpcclient.InferenceServerClient(srv.grpc_url)
        headers = {"authorization": f"Bearer {srv.admin_key}"}
        assert client.is_server_live(headers=headers)
        inp = grpcclient.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(np.ones((1, 4), np.float32))
        np.testing.assert_allclose(client.infer("scale", [inp], headers=headers).as_numpy("y"), 2.0)
        with grpc.insecure_channel(srv.grpc_url) as channel:
            messages = [_tagged("scale", np.ones((1, 4), np.float32), "a"),
                        _tagged("scale", np.ones((1, 3), np.float32), "bad"),
                        _tagged("scale", np.full((1, 4), 2.0, np.float32), "b")]
            answers = list(_stream(channel)(iter(messages), metadata=(("authorization", headers["authorization"]),),
                                            timeout=30))
        assert [a.infer_response.id for a in answers] == ["a", "", "b"]
        assert "shape" in answers[1].error_message
        y = np.frombuffer(answers[2].infer_response.raw_output_contents[0], np.float32)
        np.testing.assert_allclose(y, 4.0)
    finally:
        srv.stop()


def test_native_server_serves_on_a_bare_loop() -> None:
    """The transport needs nothing but a running loop (no grpcio server objects)."""
    from modelyard.grpc.http2 import Http2GrpcServer

    async def main() -> int:
        async def echo(request: pb.ServerLiveRequest, context: object) -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=True)

        server = Http2GrpcServer({_SERVICE + "ServerLive": (pb.ServerLiveRequest.FromString, echo)},
                                 max_message_bytes=1024)
        await server.start("127.0.0.1", 0)
        port = server.port

        def call() -> bool:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                live = channel.unary_unary(_SERVICE + "ServerLive",
                                           request_serializer=pb.ServerLiveRequest.SerializeToString,
                                           response_deserializer=pb.ServerLiveResponse.FromString)
                return bool(live(pb.ServerLiveRequest(), timeout=10).live)

        ok = await asyncio.to_thread(call)
        await server.stop(grace=1)
        return int(ok)

    assert asyncio.run(main()) == 1


def _raw_call(server: LiveServer, message: bytes, *, preface: bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
              extra: tuple[tuple[str, str], ...] = (), method: str = "ModelInfer") -> dict[bytes, bytes] | None:
    """One call on a raw socket, frames built by hand, ``message`` in one DATA frame that ends
    the client's side; the answer's headers and trailers (``None`` when the server closed the
    connection without answering)."""
    import socket

    import hpack

    def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
        return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload

    block = hpack.Encoder().encode([
        (":method", "POST"), (":scheme", "http"), (":path", _SERVICE + method),
        (":authority", "x"), ("content-type", "application/grpc"), ("te", "trailers"),
        ("authorization", f"Bearer {server.admin_key}"), *extra,
    ])
    host, port = server.grpc_url.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(preface + frame(4, 0, 0, b"") + frame(1, 0x4, 1, block) + frame(0, 0x1, 1, message))
        decoder, answer, buf = hpack.Decoder(), {}, b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return answer or None
            buf += chunk
            while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                length, kind, flags = int.from_bytes(buf[:3], "big"), buf[3], buf[4]
                payload, buf = buf[9 : 9 + length], buf[9 + length :]
                if kind == 1:
                    answer.update(dict(decoder.decode(payload, raw=True)))
                    if flags & 0x1:
                        return answer


def test_a_client_that_does_not_speak_http2_is_sent_away(server: LiveServer) -> None:
    assert _raw_call(server, b"", preface=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"-" * 8) is None


def test_a_message_whose_length_prefix_lies_is_refused(server: LiveServer) -> None:
    body = _infer_request("scale", np.ones((1, 4), np.float32)).SerializeToString()
    answer = _raw_call(server, b"\x00" + (len(body) + 10).to_bytes(4, "big") + body)
    assert answer is not None and answer[b"grpc-status"] == b"13"
    assert b"not one uncompressed gRPC message" in answer[b"grpc-message"]


def test_a_stream_that_ends_inside_a_message_is_refused(server: LiveServer) -> None:
    body = _infer_request("scale", np.ones((1, 4), np.float32)).SerializeToString()
    whole = b"\x00" + len(body).to_bytes(4, "big") + body
    answer = _raw_call(server, whole + whole[:7], method="ModelStreamInfer")
    assert answer is not None and answer[b"grpc-status"] == b"13"
    assert b"ended inside a message" in answer[b"grpc-message"]
    answer = _raw_call(server, whole + whole, method="ModelStreamInfer")  # the frames are right
    assert answer is not None and answer[b"grpc-status"] == b"0"


def test_compressed_messages_are_unimplemented(server: LiveServer) -> None:
    with grpc.insecure_channel(server.grpc_url, compression=grpc.Compression.Gzip) as channel:
        with pytest.raises(grpc.RpcError) as info:
            _call(channel)(_infer_request("scale", np.ones((1, 4))), metadata=_metadata(server), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "gzip" in (info.value.details() or "")


def test_a_well_formed_raw_call_is_answered(server: LiveServer) -> None:
    """The hand-built frames above are right: the same call with a true prefix succeeds."""
    body = _infer_request("scale", np.ones((1, 4), np.float32)).SerializeToString()
    answer = _raw_call(server, b"\x00" + len(body).to_bytes(4, "big") + body)
    assert answer is not None and answer[b"grpc-status"] == b"0"


def test_the_usual_call_is_answered_without_a_task(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once its model is loaded and its key known, a ``ModelInfer`` call is queued and answered
    from a callback (``InferenceServicer.start``), not a task; its answer is the same, and a
    failure found before the queue (an unknown output) still gets its status."""
    from modelyard.grpc.http2 import _Connection

    tasks: list[int] = []
    call_task = _Connection._call

    async def counted(self: _Connection, stream: Any, body: bytes) -> None:
        tasks.append(stream.id)
        await call_task(self, stream, body)

    monkeypatch.setattr(_Connection, "_call", counted)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = _call(channel)
        call(_infer_request("scale", x), metadata=_metadata(server), timeout=30)  # may load: a task
        before = len(tasks)
        for _ in range(3):
            answer = call(_infer_request("scale", x), metadata=_metadata(server))
            assert np.array_equal(np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(2, 4), x * 3)
        assert len(tasks) == before, "the usual calls took a task"
        request = _infer_request("scale", x)
        request.outputs.add(name="nope")
        with pytest.raises(grpc.RpcError) as info:
            call(request, metadata=_metadata(server))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "nope" in (info.value.details() or "")
        assert len(tasks) == before


def test_a_unary_calls_whole_message_in_one_frame_is_started_at_once_and_answered_its_own(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A HEADERS frame whose block the connection has decoded before opens its stream at once
    (``_new_call``), and a DATA frame that holds a unary call's whole message and ends its
    stream, on a stream that received nothing else, starts the call at once
    (``_whole_message``), whether it follows its HEADERS frame, comes after the HEADERS frames of
    several calls (as h2load sends them), or arrives in a later read; each call gets its own
    answer. Calls framed otherwise take the frame-by-frame path and are answered the same: a
    message in two DATA frames, an empty DATA frame ending the stream, a call with
    ``grpc-timeout``, a message whose prefix lies, a frame shorter than a prefix."""
    import socket

    import hpack

    from modelyard.grpc.http2 import _Connection

    def taken_by(fast_path: str) -> list[int]:
        """The stream ids for which ``_Connection.<fast_path>`` took its frame."""
        taken: list[int] = []
        original = getattr(_Connection, fast_path)

        def counted(self: _Connection, stream_id: int, payload: bytes) -> bool:
            took = original(self, stream_id, payload)
            if took:
                taken.append(stream_id)
            return bool(took)

        monkeypatch.setattr(_Connection, fast_path, counted)
        return taken

    started, opened = taken_by("_whole_message"), taken_by("_new_call")

    def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
        return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload

    encoder, decoder = hpack.Encoder(), hpack.Decoder()
    headers = [
        (":method", "POST"), (":scheme", "http"), (":path", _SERVICE + "ModelInfer"), (":authority", "x"),
        ("content-type", "application/grpc"), ("te", "trailers"), ("authorization", f"Bearer {server.admin_key}"),
    ]
    rng = np.random.default_rng(5)
    host, port = server.grpc_url.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b""))
        buf = b""
        answers: dict[int, tuple[dict[bytes, bytes], bytes]] = {}
        data: dict[int, bytes] = {}

        def answer(stream_id: int) -> tuple[dict[bytes, bytes], bytes]:
            nonlocal buf
            while stream_id not in answers:
                while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                    length, kind, flags = int.from_bytes(buf[:3], "big"), buf[3], buf[4]
                    sid = int.from_bytes(buf[5:9], "big")
                    payload, buf = buf[9 : 9 + length], buf[9 + length :]
                    if sid == 0:
                        continue  # settings, window updates
                    if kind == 0:
                        data[sid] = data.get(sid, b"") + payload
                    elif kind == 1:
                        fields = dict(decoder.decode(payload, raw=True))
                        if flags & 0x1:
                            answers[sid] = (fields, data.pop(sid, b""))
                if stream_id in answers:
                    break
                chunk = sock.recv(65536)
                assert chunk, "the server closed the connection"
                buf += chunk
            return answers.pop(stream_id)

        def message(x: np.ndarray) -> bytes:
            body = _infer_request("scale", x).SerializeToString()
            return b"\x00" + len(body).to_bytes(4, "big") + body

        def check(stream_id: int, x: np.ndarray) -> None:
            fields, body = answer(stream_id)
            assert fields[b"grpc-status"] == b"0", fields
            y = np.frombuffer(pb.ModelInferResponse.FromString(body[5:]).raw_output_contents[0], np.float32)
            np.testing.assert_allclose(y.reshape(x.shape), x * 3.0, rtol=1e-6)

        ids = iter(range(1, 1000, 2))
        block = encoder.encode(headers)
        for _ in range(3):  # each call's frames one after the other
            sid, x = next(ids), rng.standard_normal((1, 4)).astype(np.float32)
            sock.sendall(frame(1, 0x4, sid, block) + frame(0, 0x1, sid, message(x)))
            check(sid, x)
            block = encoder.encode(headers)  # the table has them now: the same block from here on
        calls = [(next(ids), rng.standard_normal((1, 4)).astype(np.float32)) for _ in range(4)]
        sock.sendall(b"".join(frame(1, 0x4, sid, block) for sid, _ in calls)
                     + b"".join(frame(0, 0x1, sid, message(x)) for sid, x in calls))  # as h2load sends them
        for sid, x in calls:
            check(sid, x)
        sid, x = next(ids), rng.standard_normal((1, 4)).astype(np.float32)
        sock.sendall(frame(1, 0x4, sid, block))
        time.sleep(0.05)
        sock.sendall(frame(0, 0x1, sid, message(x)))  # in a later read
        check(sid, x)
        assert started == list(range(1, sid + 1, 2)), started

        whole = message(x)
        sid = next(ids)
        sock.sendall(frame(1, 0x4, sid, block) + frame(0, 0, sid, whole[:9]) + frame(0, 0x1, sid, whole[9:]))
        check(sid, x)
        sid = next(ids)
        sock.sendall(frame(1, 0x4, sid, block) + frame(0, 0, sid, whole) + frame(0, 0x1, sid, b""))
        check(sid, x)
        sid = next(ids)
        timed = encoder.encode([*headers, ("grpc-timeout", "10S")])
        sock.sendall(frame(1, 0x4, sid, timed) + frame(0, 0x1, sid, whole))
        check(sid, x)
        block = encoder.encode(headers)  # the timeout's header went into the table: indices moved
        sid = next(ids)
        sock.sendall(frame(1, 0x4, sid, block) + frame(0, 0x1, sid, whole[:1] + b"\xff" + whole[2:]))
        fields, _ = answer(sid)
        assert fields[b"grpc-status"] == b"13", fields
        assert b"not one uncompressed gRPC message" in fields[b"grpc-message"]
        sid = next(ids)
        sock.sendall(frame(1, 0x4, sid, block) + frame(0, 0x1, sid, whole[:3]))  # shorter than a prefix
        fields, _ = answer(sid)
        assert fields[b"grpc-status"] == b"13", fields
        assert len(started) == 8, "calls framed otherwise took the frame-by-frame path"
        sid = next(ids)
        sock.sendall(frame(1, 0x4, sid, block) + frame(0, 0x1, sid, whole))
        check(sid, x)
        assert started[-1] == sid and len(started) == 9
        # A HEADERS frame whose block was decoded before on the connection, while the table
        # stayed as it was, opens its stream without the general path: not the first two calls
        # (their blocks changed the table, then were seen for the first time), nor the timeout's,
        # nor the first call after it changed the table again.
        assert opened == [5, 7, 9, 11, 13, 15, 17, 19, sid - 2, sid], opened


def test_an_unexpected_failure_ends_the_call_internal_on_every_path(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An error that is not a ``ModelYardError`` ends a ``ModelInfer`` call ``INTERNAL`` with a
    pointer to the log, whether it happens in the call's task, before a callback-path call is
    queued, or as its answer is made; the details are logged, not sent."""
    from modelyard.core.inference import DataPlane

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret detail")

    async def broken_infer(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret detail")

    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = _call(channel)
        call(_infer_request("scale", x), metadata=_metadata(server), timeout=30)  # loaded and known
        for where, patches in (
            ("the task", {"start": lambda *a, **k: None, "infer": broken_infer}),
            ("before the queue", {"start": broken}),
        ):
            with monkeypatch.context() as m:
                for name, value in patches.items():
                    m.setattr(DataPlane, name, value)
                with pytest.raises(grpc.RpcError) as info:  # no deadline: the callback path may take it
                    call(_infer_request("scale", x), metadata=_metadata(server))
            assert info.value.code() == grpc.StatusCode.INTERNAL, where
            assert info.value.details() == "internal server error; see the server log", where
        with monkeypatch.context() as m:  # after the request was released: nothing left in flight
            m.setattr(DataPlane, "_answered", broken)
            with pytest.raises(grpc.RpcError) as info:
                call(_infer_request("scale", x), metadata=_metadata(server))
        assert info.value.code() == grpc.StatusCode.INTERNAL, "as its answer is made"
        answer = call(_infer_request("scale", x), metadata=_metadata(server))
        assert np.array_equal(np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(2, 4), x * 3)
    assert server.platform is not None and server.platform.manager.in_flight == 0
    assert "secret detail" in caplog.text
