"""The server's HTTP/1.1 protocol on raw sockets: inference answered in place, everything else by
the ASGI app, in request order on one connection; early 413, ``Expect: 100-continue``, request
ids, HTTP/1.0, and the audit trail of refused keys."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelyard.core.demo import DEMO_MODEL
from tests.integration._serving import HOLDING_ROWS, queue_full_refusals, wait_for_computing, wait_for_queue
from tests.support.live import LiveServer, wait_until

_SAMPLE = [float(v) for v in np.arange(64) % 16]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home: Path = tmp_path_factory.mktemp("proto") / "home"
    srv = LiveServer.build(home, grpc_enabled=False, demo_model=True, max_request_bytes=4096).start()
    try:
        yield srv
    finally:
        srv.stop()


def _infer_request(key: str, *, extra: str = "", body: bytes | None = None, version: str = "1.1") -> bytes:
    payload = body if body is not None else json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": _SAMPLE}]}
    ).encode()
    head = (
        f"POST /v2/models/{DEMO_MODEL}/infer HTTP/{version}\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n{extra}"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


def _get(path: str, key: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\r\n".encode()


class _Reader:
    """Reads HTTP/1.1 responses (content-length framed) off one socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, b""

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            assert self._fill(), "connection closed before a response"
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            assert self._fill(), "connection closed inside a body"
        body, self.buf = self.buf[:length], self.buf[length:]
        return int(lines[0].split()[1]), headers, body

    def closed(self) -> bool:
        self.sock.settimeout(5)
        return not self._fill()


def _connect(server: LiveServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.settings.http_port), timeout=30)


def test_pipelined_requests_are_answered_in_order(server: LiveServer) -> None:
    """Inference, a management read, inference, a health check: four answers in that order."""
    key = server.admin_key
    with _connect(server) as sock:
        sock.sendall(
            _infer_request(key, extra="X-Request-ID: first\r\n")
            + _get("/api/v1/models", key)
            + _infer_request(key, extra="X-Request-ID: third\r\n")
            + _get("/v2/health/ready", key)
        )
        reader = _Reader(sock)
        answers = [reader.response() for _ in range(4)]
    assert [a[0] for a in answers] == [200, 200, 200, 200]
    assert answers[0][1]["x-request-id"] == "first" and answers[2][1]["x-request-id"] == "third"
    assert json.loads(answers[0][2])["outputs"][0]["name"] == "label"
    assert "items" in json.loads(answers[1][2])
    assert json.loads(answers[2][2])["model_name"] == DEMO_MODEL
    assert answers[3][2] == b"" or json.loads(answers[3][2]) is not None


def test_keep_alive_serves_many_requests_on_one_connection(server: LiveServer) -> None:
    with _connect(server) as sock:
        reader = _Reader(sock)
        ids = set()
        for _ in range(20):
            sock.sendall(_infer_request(server.admin_key))
            status, headers, body = reader.response()
            assert status == 200 and json.loads(body)["outputs"][0]["data"] == [
                json.loads(body)["outputs"][0]["data"][0]
            ]
            ids.add(headers["x-request-id"])
    assert len(ids) == 20, "every answer gets its own request id"


def test_answers_share_their_head_but_carry_the_current_date(server: LiveServer) -> None:
    """Answers' heads are remembered (status line and headers), per ``Date``: a second later the
    same answer carries the new date, and an error answer its own status and headers."""
    with _connect(server) as sock:
        reader = _Reader(sock)
        sock.sendall(_infer_request(server.admin_key))
        status, first, _ = reader.response()
        time.sleep(1.2)  # uvicorn renews its date header every tick; seconds are its resolution
        sock.sendall(_infer_request(server.admin_key))
        _, second, _ = reader.response()
        sock.sendall(_infer_request("my_wrong_key"))
        refused, third, _ = reader.response()
    assert status == 200 and first["content-type"] == second["content-type"] == "application/json"
    assert first["date"] != second["date"], "the remembered head followed the date"
    assert first["x-request-id"] != second["x-request-id"]
    assert refused == 401 and third["www-authenticate"] == "Bearer"


def _counting_begins(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Inference requests whose head the parser read (``InferenceProtocol._begin``), by path."""
    from modelyard.api.v2.protocol import InferenceProtocol

    begun: list[str] = []
    begin = InferenceProtocol._begin

    def counted(self: InferenceProtocol, name: str, version: str | None, path: str) -> None:
        begun.append(path)
        begin(self, name, version, path)

    monkeypatch.setattr(InferenceProtocol, "_begin", counted)
    return begun


def _recording_connections(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The ``InferenceProtocol`` instances made from now on (one per connection)."""
    from modelyard.api.v2.protocol import InferenceProtocol

    made: list[Any] = []
    connection_made = InferenceProtocol.connection_made

    def recorded(self: InferenceProtocol, transport: Any) -> None:
        made.append(self)
        connection_made(self, transport)

    monkeypatch.setattr(InferenceProtocol, "connection_made", recorded)
    return made


def _attributes_outside_slots(connections: list[Any]) -> set[str]:
    """Attributes the connections keep in an instance dict rather than in the protocol's slots
    (an attribute added to the protocol, or by a new uvicorn, without a slot)."""
    return {name for protocol in connections for name in vars(protocol)}


def test_a_connections_state_lives_in_slots_whatever_it_served(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inference answered in place, a request through the ASGI app behind it, an unknown route,
    a body refused as too large and an HTTP/1.0 request leave nothing in the connections'
    instance dicts: everything is in ``InferenceProtocol.__slots__`` (see its comment)."""
    connections = _recording_connections(monkeypatch)
    key = server.admin_key
    with _connect(server) as sock:
        reader = _Reader(sock)
        sock.sendall(_infer_request(key) + _get("/v2/health/ready", key) + _get("/v2/no/such/route", key))
        assert [reader.response()[0] for _ in range(3)] == [200, 200, 404]
        sock.sendall(_infer_request(key))  # the remembered head: read without the parser
        assert reader.response()[0] == 200
    with _connect(server) as sock:
        sock.sendall(_head(key, "content-length: 100000"))
        assert _Reader(sock).response()[0] == 413
    with _connect(server) as sock:
        sock.sendall(_infer_request(key, version="1.0"))
        assert _Reader(sock).response()[0] == 200
    wait_until(lambda: len(connections) == 3)
    assert _attributes_outside_slots(connections) == set()


def _two_inputs(key: str) -> tuple[bytes, bytes]:
    """Two requests with the same head (the same length) and different inputs."""
    first = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": _SAMPLE}]})
    second = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": _SAMPLE[::-1]}]})
    assert len(first) == len(second)
    return _infer_request(key, body=first.encode()), _infer_request(key, body=second.encode())


def _alone(server: LiveServer, request: bytes) -> dict[str, Any]:
    """The outputs of ``request`` sent first on a connection of its own (read by the parser)."""
    with _connect(server) as sock:
        sock.sendall(request)
        status, _, body = _Reader(sock).response()
    assert status == 200, body
    return dict(json.loads(body))


def test_a_request_with_the_last_heads_bytes_skips_the_parser_and_gets_its_own_answer(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keep-alive client's request whose head is byte for byte its last one's is read without
    the parser; each such request is still answered from its own body, with its own id."""
    first, second = _two_inputs(server.admin_key)
    expected = [_alone(server, first), _alone(server, second)]
    assert expected[0]["outputs"] != expected[1]["outputs"], "the two inputs must tell answers apart"
    begun = _counting_begins(monkeypatch)
    with _connect(server) as sock:
        reader = _Reader(sock)
        answers, ids = [], set()
        for request in (first, second, first, second):
            sock.sendall(request)
            status, headers, body = reader.response()
            assert status == 200, body
            answers.append(json.loads(body))
            ids.add(headers["x-request-id"])
    assert answers == expected * 2
    assert len(ids) == 4
    assert len(begun) == 1, "only the first head was parsed"


def test_a_remembered_head_whose_body_comes_later_or_with_another_request_is_read_as_usual(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The head alone, its body in a later packet: the parser reads it. A request pipelined
    behind one taken without the parser is answered after it, in order."""
    first, second = _two_inputs(server.admin_key)
    expected = [_alone(server, first), _alone(server, second)]
    begun = _counting_begins(monkeypatch)
    head, _, body = second.partition(b"\r\n\r\n")
    with _connect(server) as sock:
        reader = _Reader(sock)
        sock.sendall(first)
        assert json.loads(reader.response()[2]) == expected[0]
        sock.sendall(head + b"\r\n\r\n")
        time.sleep(0.05)
        sock.sendall(body)
        assert json.loads(reader.response()[2]) == expected[1]
        sock.sendall(first + second + _get("/v2/health/live", server.admin_key))
        answers = [reader.response() for _ in range(3)]
    assert [a[0] for a in answers] == [200, 200, 200]
    assert [json.loads(a[2]) for a in answers[:2]] == expected
    assert json.loads(answers[2][2]) == {"live": True}
    assert len(begun) == 2, "the first request and the split one were parsed; the pipelined ones not"


def test_heads_that_differ_are_each_parsed(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another request id, or a request that closes the connection: a head of its own."""
    begun = _counting_begins(monkeypatch)
    with _connect(server) as sock:
        reader = _Reader(sock)
        for given in ("a", "b", "b"):
            sock.sendall(_infer_request(server.admin_key, extra=f"X-Request-ID: {given}\r\n"))
            status, headers, _ = reader.response()
            assert status == 200 and headers["x-request-id"] == given
        sock.sendall(_infer_request(server.admin_key, extra="Connection: close\r\n"))
        status, headers, _ = reader.response()
        assert status == 200 and headers.get("connection") == "close"
        assert reader.closed()
    assert len(begun) == 3, "a, b, then the closing one (the second b was remembered)"


def _head(key: str, framing: str) -> bytes:
    return (
        f"POST /v2/models/{DEMO_MODEL}/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"{framing}\r\n\r\n"
    ).encode()


def test_body_over_the_limit_is_refused_at_once_and_the_connection_closed(server: LiveServer) -> None:
    with _connect(server) as sock:
        sock.sendall(_head(server.admin_key, "Content-Length: 1000000") + b"{" * 100)  # the rest never comes
        reader = _Reader(sock)
        status, headers, body = reader.response()
        assert status == 413 and json.loads(body)["error"]["code"] == "payload_too_large"
        assert headers.get("connection") == "close"
        assert reader.closed()


def test_chunked_body_over_the_limit_is_refused(server: LiveServer) -> None:
    with _connect(server) as sock:
        head = _head(server.admin_key, "Transfer-Encoding: chunked")
        chunk = b"a" * 3000
        sock.sendall(head + b"%x\r\n" % len(chunk) + chunk + b"\r\n" + b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        status, _, body = _Reader(sock).response()
    assert status == 413 and json.loads(body)["error"]["code"] == "payload_too_large"


def test_expect_100_continue_is_answered_before_the_body(server: LiveServer) -> None:
    request = _infer_request(server.admin_key, extra="Expect: 100-continue\r\n")
    head, _, body = request.partition(b"\r\n\r\n")
    with _connect(server) as sock:
        sock.sendall(head + b"\r\n\r\n")
        interim = sock.recv(64)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        reader = _Reader(sock)
        reader.buf = interim[len(b"HTTP/1.1 100 Continue\r\n\r\n"):]
        status, _, _ = reader.response()
    assert status == 200


def test_http_1_0_closes_after_the_answer(server: LiveServer) -> None:
    with _connect(server) as sock:
        sock.sendall(_infer_request(server.admin_key, version="1.0"))
        reader = _Reader(sock)
        status, headers, _ = reader.response()
        assert status == 200 and headers.get("connection") == "close"
        assert reader.closed()


def test_a_refused_key_on_the_inference_path_is_audited(server: LiveServer) -> None:
    with _connect(server) as sock:
        sock.sendall(_infer_request("my_000000000000_not-a-real-key-at-all", extra="X-Request-ID: bad-key-1\r\n"))
        status, headers, body = _Reader(sock).response()
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    assert json.loads(body)["error"]["code"] == "unauthenticated"
    assert server.platform is not None
    server.platform.audit.flush()
    with server.client() as client:
        entries = client.get("/api/v1/audit", params={"page_size": 200}).json()["items"]
    refused = [e for e in entries if e["request_id"] == "bad-key-1"]
    assert refused and refused[0]["result"] == 401 and refused[0]["action"] == "POST"
    assert refused[0]["object"] == f"/v2/models/{DEMO_MODEL}/infer"


def test_malformed_request_line_gets_400(server: LiveServer) -> None:
    with _connect(server) as sock:
        sock.sendall(b"POST /v2/models/x/infer HTTP/1.1\r\nContent-Length: abc\r\n\r\n")
        data = sock.recv(4096)
    assert data.startswith(b"HTTP/1.1 400")


def _slow_server(tmp_path: Path, max_queue_size: int = 1, **settings: object) -> LiveServer:
    """A model that computes slowly, one request at a time. Idle connections stay open for a
    minute: a test's connection may wait for a long request's several seconds on a slow VM."""
    from tests.integration._serving import register, slow_model

    settings.setdefault("keep_alive_s", 60.0)
    srv = LiveServer.build(tmp_path / "home", grpc_enabled=False, **settings).start()
    register(srv, "slow", slow_model(tmp_path / "slow.onnx", 160_000),
             config={"serving": {"batching": False, "max_queue_size": max_queue_size}})
    return srv


def _slow_request(key: str, rows: int, *, body: bytes | None = None, name: str = "slow") -> bytes:
    payload = body if body is not None else json.dumps({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [rows, 64], "data": [0.0] * (rows * 64)}]}).encode()
    return (
        f"POST /v2/models/{name}/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload


def _waiting_for_room(srv: LiveServer) -> int:
    assert srv.platform is not None
    return sum(b.waiting_for_room for m in srv.platform.manager.loaded() for b in m.batchers.values())


def test_a_full_queue_refuses_unread_and_holds_the_refused_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a 429, the same caller's requests for that model are refused before their body is
    read (a malformed body still gets 429, not 400) while the queue stays full, and a connection
    just refused is not read again until the queue has room: its next request waits unread in
    the socket, then is read and answered as usual. A held connection is not idle: the
    keep-alive timeout (made shorter than the hold here) does not close it under its request."""
    from modelyard.engine import batcher as batcher_module

    monkeypatch.setattr(batcher_module, "ROOM_WAIT_MAX_S", 60.0)  # only room lets them in here
    connections = _recording_connections(monkeypatch)
    srv = _slow_server(tmp_path, keep_alive_s=0.25)
    key = srv.admin_key
    try:
        long_conn, queued_conn, conn = _connect(srv), _connect(srv), _connect(srv)
        long_conn.sendall(_slow_request(key, HOLDING_ROWS))  # computes for a couple of seconds
        wait_for_computing(srv)
        queued_conn.sendall(_slow_request(key, 1))  # fills the queue (max_queue_size 1)
        wait_for_queue(srv, 1)
        reader = _Reader(conn)
        conn.sendall(_slow_request(key, 1))
        status, headers, body = reader.response()
        assert status == 429 and "retry-after" in headers, body
        malformed, again = _connect(srv), _connect(srv)
        malformed.sendall(_slow_request(key, 1, body=b"{not json"))
        status, headers, body = _Reader(malformed).response()
        assert status == 429 and json.loads(body)["error"]["code"] == "queue_full"
        assert "retry-after" in headers and headers["x-request-id"]
        again.sendall(_slow_request(key, 1))  # answered from the encoded refusal: its own id
        answer = _Reader(again).response()
        assert answer[0] == 429 and answer[2] == body and answer[1]["retry-after"] == headers["retry-after"]
        assert answer[1]["x-request-id"] != headers["x-request-id"]
        assert _waiting_for_room(srv) == 3, "the three refused connections are not read"
        conn.sendall(_slow_request(key, 1, body=b"{not json"))
        # the next request right behind it (pipelined): sent after the 400, it could come later
        # than the short keep-alive on a stalled machine, and find its idle connection closed
        conn.sendall(_slow_request(key, 1))
        time.sleep(0.1)
        assert _waiting_for_room(srv) == 3, "the queue is still full: the requests wait unread"
        assert _Reader(long_conn).response()[0] == 200
        assert _Reader(queued_conn).response()[0] == 200
        assert reader.response()[0] == 400, "with room in the queue the request is read"
        assert reader.response()[0] == 200, "and the one behind it, as usual"
        assert _waiting_for_room(srv) == 0
        for sock in (long_conn, queued_conn, conn, malformed, again):
            sock.close()
        assert queue_full_refusals(srv, "slow") == (3, 3)
        assert _attributes_outside_slots(connections) == set(), "held and let in, all in slots"
    finally:
        srv.stop()


def test_a_deployments_caller_refused_once_is_refused_unread_while_its_queue_is_full(tmp_path: Path) -> None:
    """A deployment's flood is refused before its bodies are read, as a model's is: after a
    429, a malformed request to the deployment gets 429 (its body unread), not 400; once the
    queue has room the deployment answers again."""
    srv = _slow_server(tmp_path)
    key = srv.admin_key
    try:
        with srv.client() as admin:
            admin.post("/api/v1/deployments", json={"name": "slowdep", "routes": [{"model": "slow", "version": 1}]},
                       ).raise_for_status()
        warm = _connect(srv)
        warm.sendall(_slow_request(key, 1, name="slowdep"))  # loads the version; the deployment known
        assert _Reader(warm).response()[0] == 200
        long_conn, queued_conn = _connect(srv), _connect(srv)
        long_conn.sendall(_slow_request(key, HOLDING_ROWS, name="slowdep"))  # computes for a couple of seconds
        wait_for_computing(srv)
        queued_conn.sendall(_slow_request(key, 1, name="slowdep"))  # fills the queue (max_queue_size 1)
        wait_for_queue(srv, 1)
        refused, malformed = _connect(srv), _connect(srv)
        refused.sendall(_slow_request(key, 1, name="slowdep"))
        status, headers, _ = _Reader(refused).response()
        assert status == 429 and "retry-after" in headers
        malformed.sendall(_slow_request(key, 1, body=b"{not json", name="slowdep"))
        status, _, body = _Reader(malformed).response()
        assert status == 429 and json.loads(body)["error"]["code"] == "queue_full", "refused unread"
        assert _Reader(long_conn).response()[0] == 200
        assert _Reader(queued_conn).response()[0] == 200
        again = _connect(srv)
        again.sendall(_slow_request(key, 1, name="slowdep"))
        assert _Reader(again).response()[0] == 200, "the queue has room: answered"
        for sock in (warm, long_conn, queued_conn, refused, malformed, again):
            sock.close()
    finally:
        srv.stop()


def test_a_refused_caller_waits_below_the_let_in_level_while_others_still_fill_the_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller refused once has its connection held until the queue is below the let-in level
    (two batches), though the queue has room before that; a caller not refused is queued up
    to ``max_queue_size`` meanwhile (a burst is absorbed, not refused)."""
    from modelyard.engine import batcher as batcher_module

    monkeypatch.setattr(batcher_module, "ROOM_WAIT_MAX_S", 60.0)  # only room lets them in here
    monkeypatch.setattr(batcher_module, "LET_IN_MIN", 1)  # the level: two batches of one request
    srv = _slow_server(tmp_path, max_queue_size=4)
    key = srv.admin_key
    assert srv.platform is not None
    try:
        with srv.client() as admin:
            other_key = admin.post("/api/v1/keys", json={"role": "inference"}).json()["secret"]
        # The load comes from another caller, never refused: only the refused caller's own
        # connections are held (each of them, once answered, while the queue is at the level).
        long_conn = _connect(srv)
        long_conn.sendall(_slow_request(other_key, 16))  # computes for about a second
        wait_until(lambda: any(m.batchers for m in srv.platform.manager.loaded()))
        (batcher,) = [b for m in srv.platform.manager.loaded() for b in m.batchers.values()]
        assert batcher.let_in_level == 2
        wait_until(lambda: batcher.in_flight == 1 and batcher.queue_depth == 0)
        queued = [_connect(srv) for _ in range(4)]
        for sock in queued:
            sock.sendall(_slow_request(other_key, 4))
        wait_until(lambda: batcher.full)
        conn, other = _connect(srv), _connect(srv)
        reader = _Reader(conn)
        conn.sendall(_slow_request(key, 1))
        assert reader.response()[0] == 429
        conn.sendall(_slow_request(key, 1))  # waits unread
        wait_until(lambda: batcher.queue_depth == 3)  # the long one is done: room, over the level
        assert _waiting_for_room(srv) == 1 and not batcher.full, "held though the queue has room"
        other.sendall(_slow_request(other_key, 1))  # the caller not refused: queued, over the level
        wait_until(lambda: batcher.queue_depth == 4)
        assert _waiting_for_room(srv) == 1
        assert _Reader(long_conn).response()[0] == 200
        for sock in queued:
            assert _Reader(sock).response()[0] == 200
        assert reader.response()[0] == 200, "let in once the queue went under the level"
        assert _Reader(other).response()[0] == 200
        assert _waiting_for_room(srv) == 0
        for sock in (long_conn, *queued, conn, other):
            sock.close()
        assert queue_full_refusals(srv, "slow") == (1, 1)
    finally:
        srv.stop()


def test_the_callers_of_a_batch_computed_on_the_loop_claim_kept_slots_and_read_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a refused caller's connection waits for room, a batch computed on the event loop
    keeps the room it makes for the callers it answers (``DynamicBatcher.must_wait`` takes a
    kept slot): their connections are not held but read on, and their next requests are served;
    the connection that waited is let in and served too, and only the one request was refused."""
    from modelyard.engine import batcher as batcher_module
    from modelyard.engine.batcher import DynamicBatcher
    from tests.integration._serving import register, slow_model

    monkeypatch.setattr(batcher_module, "ROOM_WAIT_MAX_S", 60.0)  # only room lets a waiter in here
    monkeypatch.setattr(batcher_module, "LET_IN_MIN", 1)  # the level: max_queue_size (2)
    claims: list[bool] = []  # for each connection answered with no room: whether it took a kept slot
    must_wait = DynamicBatcher.must_wait

    def recorded(self: DynamicBatcher) -> bool:
        no_room = self.no_room
        kept = self.kept_slots
        waits = must_wait(self)
        if no_room:
            claims.append(self.kept_slots < kept)
        return waits

    monkeypatch.setattr(DynamicBatcher, "must_wait", recorded)
    # Every batch computes on the loop (after the first few, measured on a thread): the loop
    # reads nothing while one computes, so what is sent meanwhile arrives in one loop turn.
    srv = LiveServer.build(tmp_path / "home", grpc_enabled=False, inline_compute_us=60_000_000).start()
    key = srv.admin_key
    try:
        register(srv, "slow", slow_model(tmp_path / "slow.onnx", 40_000),  # 1 row 50 ms, 64 rows 250 ms
                 config={"serving": {"max_batch_size": 2, "max_queue_size": 2}})
        long_conn = _connect(srv)
        long_reader = _Reader(long_conn)
        for _ in range(3):  # measured on a thread, then on the loop
            long_conn.sendall(_slow_request(key, 1))
            assert long_reader.response()[0] == 200
        assert srv.platform is not None
        (batcher,) = [b for m in srv.platform.manager.loaded() for b in m.batchers.values()]
        assert batcher.let_in_level == 2
        conns = [_connect(srv) for _ in range(3)]
        readers = [_Reader(sock) for sock in conns]
        for sock, reader in zip(conns, readers):  # accepted and read by the server before the batch
            sock.sendall(_get("/v2/health/live", key))
            assert reader.response()[0] == 200
        long_conn.sendall(_slow_request(key, 64))
        wait_until(lambda: batcher.in_flight == 1 and batcher.queue_depth == 0)  # computing, on the loop
        for sock in conns:
            sock.sendall(_slow_request(key, 1))
        assert long_reader.response()[0] == 200
        # Read in one loop turn: two fill the queue, the third is refused and its connection held.
        # The batch of those two is taken while it waits: its two slots are kept for them.
        statuses = [reader.response()[0] for reader in readers]
        assert sorted(statuses) == [200, 200, 429], statuses
        # Connections answered before that batch was taken found no slot kept and are held (the
        # refused one; the long request's too if its answer came after the refusal); each caller
        # of the batch taken while they waited found one.
        wait_until(lambda: claims.count(True) >= 2)
        first = claims.index(True)
        assert 1 <= first <= 2 and claims[first : first + 2] == [True, True], claims
        served = [i for i, status in enumerate(statuses) if status == 200]
        (refused,) = [i for i, status in enumerate(statuses) if status == 429]
        for i in served:  # read on, not held: their next requests are served
            conns[i].sendall(_slow_request(key, 1))
        for i in served:
            assert readers[i].response()[0] == 200
        for sock, reader in ((conns[refused], readers[refused]), (long_conn, long_reader)):
            sock.sendall(_slow_request(key, 1))  # let in by now, or once the kept slots are void
            assert reader.response()[0] == 200
        assert _waiting_for_room(srv) == 0
        for sock in (long_conn, *conns):
            sock.close()
        assert queue_full_refusals(srv, "slow") == (1, 1)
    finally:
        srv.stop()


def test_the_usual_request_is_answered_from_a_callback_and_a_hang_up_drops_its_queued_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once its model is resolved and loaded and its key known, a request is answered from a
    callback on its queued work, not a task (``start_answer``); callers that hang up while
    queued behind a long request have their work dropped: it never computes."""
    from modelyard.api.v2.protocol import InferenceProtocol
    from tests.integration._serving import metric

    tasks: list[str] = []
    answer = InferenceProtocol._answer

    async def counted(self: InferenceProtocol, request: Any, body: bytes) -> None:
        tasks.append(f"{request.path} {request.size}")
        await answer(self, request, body)

    monkeypatch.setattr(InferenceProtocol, "_answer", counted)
    srv = _slow_server(tmp_path, max_queue_size=8)
    key = srv.admin_key
    try:
        long_conn = _connect(srv)
        long_reader = _Reader(long_conn)
        long_conn.sendall(_slow_request(key, 1))
        assert long_reader.response()[0] == 200
        assert len(tasks) == 1, "the first request loads the model: a task"
        long_conn.sendall(_slow_request(key, HOLDING_ROWS))  # computes for a couple of seconds
        time.sleep(0.2)
        for _ in range(3):
            with _connect(srv) as sock:
                sock.sendall(_slow_request(key, 1))
                time.sleep(0.05)  # queued behind the long one, then hang up
        assert long_reader.response()[0] == 200
        long_conn.sendall(_slow_request(key, 1))
        assert long_reader.response()[0] == 200
        assert len(tasks) == 1, f"the usual requests took a task: {tasks}"
        with srv.client() as client:
            computed = metric(client.get("/metrics").text, "modelyard_compute_seconds_count", model="slow")
        assert computed == 3, "the work of callers that hung up ran"
        long_conn.close()
    finally:
        srv.stop()


def test_a_request_held_unread_at_shutdown_is_answered_before_the_connection_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A held connection's next request may already wait in its socket when the server is told
    to stop: it is read once the draining queue has room, answered (``connection: close``), and
    only then is the connection closed, while an idle held connection is closed soon after."""
    import time

    from modelyard.engine import batcher as batcher_module

    monkeypatch.setattr(batcher_module, "ROOM_WAIT_MAX_S", 60.0)  # only room lets them in here
    srv = _slow_server(tmp_path)
    key = srv.admin_key
    assert srv._server is not None
    try:
        long_conn, queued_conn, conn, idle = _connect(srv), _connect(srv), _connect(srv), _connect(srv)
        long_conn.sendall(_slow_request(key, HOLDING_ROWS))  # computes for a couple of seconds
        wait_for_computing(srv)
        queued_conn.sendall(_slow_request(key, 1))  # fills the queue (max_queue_size 1)
        wait_for_queue(srv, 1)
        reader, idle_reader = _Reader(conn), _Reader(idle)
        for sock, sock_reader in ((conn, reader), (idle, idle_reader)):
            sock.sendall(_slow_request(key, 1))
            assert sock_reader.response()[0] == 429
        conn.sendall(_slow_request(key, 1))  # waits unread: the queue is still full
        time.sleep(0.1)
        assert _waiting_for_room(srv) == 2
        stopped = time.monotonic()
        srv._server.should_exit = True  # what SIGTERM does
        assert _Reader(long_conn).response()[0] == 200
        assert _Reader(queued_conn).response()[0] == 200
        status, headers, _ = reader.response()
        assert status == 200, "the request sent before the stop was lost"
        assert headers.get("connection") == "close"
        assert reader.closed() and idle_reader.closed()
        assert time.monotonic() - stopped < 10
        for sock in (long_conn, queued_conn, conn, idle):
            sock.close()
    finally:
        srv.stop()


def test_a_revoked_key_gets_401_not_the_gates_429(tmp_path: Path) -> None:
    """A caller refused with 429 is refused unread while the queue stays full; once its key is
    revoked, its next request is authenticated again: 401, not the remembered 429, on a new
    connection as on the one its gate had refused unread."""
    import time

    from modelyard.client import Client

    srv = _slow_server(tmp_path)
    try:
        with Client(url=srv.url, api_key=srv.admin_key) as admin:
            created = admin.keys.create("inference", name="revoked soon")
        long_conn, queued_conn = _connect(srv), _connect(srv)
        long_conn.sendall(_slow_request(srv.admin_key, 64))  # computes for about a second
        wait_for_computing(srv)
        queued_conn.sendall(_slow_request(srv.admin_key, 1))  # fills the queue (max_queue_size 1)
        wait_for_queue(srv, 1)
        for body in (None, b"{not json"):  # the malformed one is refused unread, from the gate
            with _connect(srv) as conn:
                conn.sendall(_slow_request(created.secret, 1, body=body))
                assert _Reader(conn).response()[0] == 429
        held = _connect(srv)
        held_reader = _Reader(held)
        held.sendall(_slow_request(created.secret, 1))
        assert held_reader.response()[0] == 429, "refused unread, from the gate"
        with Client(url=srv.url, api_key=srv.admin_key) as admin:
            admin.keys.revoke(created.key.id)
        with _connect(srv) as conn:
            conn.sendall(_slow_request(created.secret, 1))
            status, _, body = _Reader(conn).response()
        assert status == 401 and "revoked" in json.loads(body)["error"]["message"]
        held.sendall(_slow_request(created.secret, 1))  # read once there is room (or after 1 s)
        status, _, body = held_reader.response()
        assert status == 401 and "revoked" in json.loads(body)["error"]["message"]
        assert _Reader(long_conn).response()[0] == 200
        assert _Reader(queued_conn).response()[0] == 200
        for sock in (held, long_conn, queued_conn):
            sock.close()
    finally:
        srv.stop()


def test_a_saturated_server_answers_503_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    srv = _slow_server(tmp_path, max_in_flight=1)
    key = srv.admin_key
    try:
        with _connect(srv) as long_conn, _connect(srv) as conn:
            long_conn.sendall(_slow_request(key, HOLDING_ROWS))
            assert srv.platform is not None
            wait_until(lambda: srv.platform.manager.saturated)  # the long one counted in flight
            conn.sendall(_slow_request(key, 1, body=b"{not json"))
            reader = _Reader(conn)
            status, headers, body = reader.response()
            assert status == 503 and headers["retry-after"] == "1"
            assert json.loads(body)["error"]["code"] == "unavailable"
            begun = _counting_begins(monkeypatch)
            for _ in range(2):  # the same head again: refused without the parser too
                conn.sendall(_slow_request(key, 1))
                assert reader.response()[0] == 503
            assert _Reader(long_conn).response()[0] == 200
            conn.sendall(_slow_request(key, 1))
            assert reader.response()[0] == 200
            assert len(begun) == 1
    finally:
        srv.stop()


@pytest.mark.parametrize("keep_alive_s", [1.0, pytest.param(None, marks=pytest.mark.slow)], ids=["1 s", "default 5 s"])
def test_idle_keep_alive_connections_close_and_busy_ones_stay(tmp_path: Path, keep_alive_s: float | None) -> None:
    """One timer per connection replaces uvicorn's timer per answer: an idle connection still
    closes after the keep-alive timeout (``keep_alive_s``, 5 s by default), one that keeps
    asking stays open past it."""
    import time

    settings = {} if keep_alive_s is None else {"keep_alive_s": keep_alive_s}
    srv = LiveServer.build(tmp_path / "home", grpc_enabled=False, demo_model=True, **settings).start()
    timeout = keep_alive_s or 5.0
    try:
        with _connect(srv) as idle, _connect(srv) as busy:
            idle_reader, busy_reader = _Reader(idle), _Reader(busy)

            def keep_asking(seconds: float) -> None:  # on the busy connection, while the idle one waits
                started = time.monotonic()
                while time.monotonic() - started < seconds:
                    busy.sendall(_infer_request(srv.admin_key))
                    assert busy_reader.response()[0] == 200
                    time.sleep(timeout / 8)

            idle.sendall(_infer_request(srv.admin_key))
            assert idle_reader.response()[0] == 200
            keep_asking(timeout * 0.6)
            idle.sendall(_infer_request(srv.admin_key))  # still open short of the timeout
            assert idle_reader.response()[0] == 200
            keep_asking(timeout * 1.5)
            assert idle_reader.closed(), "the idle connection outlived the keep-alive timeout"
            busy.sendall(_infer_request(srv.admin_key))
            assert busy_reader.response()[0] == 200, "the busy connection was closed"
    finally:
        srv.stop()


def test_a_keep_alive_time_out_of_range_is_refused_at_start(tmp_path: Path) -> None:
    from pydantic import ValidationError

    for bad in (0, -1, 7200):
        with pytest.raises(ValidationError, match="keep_alive_s"):
            LiveServer.build(tmp_path / "home", grpc_enabled=False, keep_alive_s=bad)
