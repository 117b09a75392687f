"""Upstream engines: ModelYard in front of a second ModelYard (both real servers), with the
upstream key kept server-side, the host allow-list, and 502/504 in OpenAI's shape."""

from __future__ import annotations

import json
import socket
import stat
import threading
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.integration._serving import metric
from tests.support.live import LiveServer, free_port
from tests.unit.llm_api.builders import build_tiny_gpt2, tar_gz

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = build_tiny_gpt2(tmp_path_factory.mktemp("gpt2") / "tiny")
    live = LiveServer.build(tmp_path_factory.mktemp("backend") / "home").start()
    try:
        with live.client() as c:
            r = c.post("/api/v1/models/gpt/versions", params={"format": "hf"}, content=tar_gz(folder))
            assert r.status_code == 201, r.text
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, backend: LiveServer) -> Iterator[LiveServer]:
    live = LiveServer.build(tmp_path_factory.mktemp("gateway") / "home", upstream_timeout_s=1.5).start()
    try:
        with live.client() as c:
            for name, model in (("front", "gpt"), ("remote-embed", "all-minilm-l6-v2")):
                r = c.post(f"/api/v1/models/{name}/upstream", json={
                    "base_url": f"{backend.url}/v1", "upstream_model": model, "api_key": backend.admin_key})
                assert r.status_code == 201, r.text
                assert backend.admin_key not in r.text and r.json()["upstream"]["has_api_key"] is True
        yield live
    finally:
        live.stop()


def _client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.admin_key, max_retries=0, timeout=30)


def test_chat_through_the_gateway_equals_the_backend(gateway: LiveServer, backend: LiveServer) -> None:
    messages = [{"role": "user", "content": "hello model"}]
    direct = _client(backend).chat.completions.create(model="gpt", messages=messages, max_tokens=8, temperature=0)
    via = _client(gateway).chat.completions.create(model="front", messages=messages, max_tokens=8, temperature=0)
    assert via.model == "front"
    assert via.choices[0].message.content == direct.choices[0].message.content
    assert via.usage.completion_tokens == direct.usage.completion_tokens
    chunks = list(_client(gateway).chat.completions.create(
        model="front", messages=messages, max_tokens=8, temperature=0, stream=True))
    assert all(c.model == "front" for c in chunks)
    assert all(c.usage is None for c in chunks)  # the caller did not ask for usage
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == direct.choices[0].message.content
    completion = _client(gateway).completions.create(model="front", prompt="hello", max_tokens=4, temperature=0)
    assert completion.usage.completion_tokens >= 1
    text = httpx.get(f"{gateway.url}/metrics", headers=gateway.headers).text
    assert 'modelyard_tokens_total{kind="completion",model="front",tenant="default",version="1"}' in text
    # a stream relayed from an upstream engine: its first chunk with text is its first token
    assert metric(text, "modelyard_time_to_first_token_seconds_count", model="front") == 1


def test_embeddings_through_the_gateway(gateway: LiveServer, backend: LiveServer) -> None:
    direct = _client(backend).embeddings.create(model="all-minilm-l6-v2", input=["hello"])
    via = _client(gateway).embeddings.create(model="remote-embed", input=["hello"])
    assert via.data[0].embedding == pytest.approx(direct.data[0].embedding, abs=1e-6)


def test_the_upstream_key_never_leaves_the_server(gateway: LiveServer, backend: LiveServer) -> None:
    with gateway.client() as c:
        for path in ("/api/v1/models/front", "/api/v1/models/front/versions", "/api/v1/models/front/versions/1"):
            assert backend.admin_key not in c.get(path).text
        sha = c.get("/api/v1/models/front/versions/1").json()["sha256"]
    assert gateway.platform is not None
    blob = gateway.platform.artifacts.path_for(sha).read_bytes()
    assert backend.admin_key.encode() not in blob
    secrets_file = gateway.settings.resolved_home / "secrets" / "upstream-keys.json"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600


class _Listener:
    """A TCP listener that counts connections and never answers (a hung upstream)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.accepted:
            c.close()


def test_hosts_off_the_allow_list_are_refused_without_a_request(gateway: LiveServer) -> None:
    listener = _Listener("127.0.0.2")
    try:
        with gateway.client() as c:
            for url in (f"http://127.0.0.2:{listener.port}/v1", "http://example.com/v1", "file:///etc/passwd",
                        "http://user:pw@127.0.0.1/v1"):
                r = c.post("/api/v1/models/evil/upstream", json={"base_url": url, "upstream_model": "m"})
                assert r.status_code == 400, (url, r.text)
                assert r.json()["error"]["details"]["param"] == "base_url"
            assert c.get("/api/v1/models/evil").status_code == 404
        assert listener.accepted == []
    finally:
        listener.close()


def test_upstream_down_is_502_and_hung_is_504(gateway: LiveServer, backend: LiveServer) -> None:
    listener = _Listener()
    closed_port = free_port()
    try:
        with gateway.client() as c:
            for name, url, key in (("down", f"http://127.0.0.1:{closed_port}/v1", None),
                                   ("hung", f"http://127.0.0.1:{listener.port}/v1", None),
                                   ("badkey", f"{backend.url}/v1", "my_wrong_key")):
                body = {"base_url": url, "upstream_model": "gpt"} | ({"api_key": key} if key else {})
                assert c.post(f"/api/v1/models/{name}/upstream", json=body).status_code == 201
        client = _client(gateway)
        user = [{"role": "user", "content": "hi"}]
        with pytest.raises(openai.InternalServerError) as down:
            client.chat.completions.create(model="down", messages=user, max_tokens=2)
        assert down.value.status_code == 502 and down.value.body["code"] == "upstream_error"
        with pytest.raises(openai.InternalServerError) as hung:
            client.chat.completions.create(model="hung", messages=user, max_tokens=2)
        assert hung.value.status_code == 504 and hung.value.body["code"] == "upstream_timeout"
        with pytest.raises(openai.InternalServerError) as badkey:
            client.chat.completions.create(model="badkey", messages=user, max_tokens=2, stream=True)
        assert badkey.value.status_code == 502
        assert "my_wrong_key" not in json.dumps(badkey.value.body)
    finally:
        listener.close()


def test_bad_input_is_relayed_as_400(gateway: LiveServer) -> None:
    with pytest.raises(openai.BadRequestError):
        _client(gateway).chat.completions.create(model="front", messages=[{"role": "user", "content": "x"}],
                                                 max_tokens=100_000)
