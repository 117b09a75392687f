"""``client.llm`` and ``modelyard llm`` against a real server: push a Hugging Face folder, add an
upstream, chat and embed; errors come back typed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelyard.cli.main import app
from modelyard.client import Client
from modelyard.errors import BadRequest, UnsafeContent
from tests.support.live import LiveServer
from tests.unit.llm_api.builders import build_tiny_gpt2

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("gpt2") / "tiny")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer.build(tmp_path_factory.mktemp("sdk") / "home").start()
    try:
        yield live
    finally:
        live.stop()


def _cli(server: LiveServer, *args: str):  # noqa: ANN202
    env = {"MODELYARD_URL": server.url, "MODELYARD_API_KEY": server.admin_key, "COLUMNS": "160"}
    return CliRunner().invoke(app, list(args), env=env)


def test_sdk_push_folder_chat_and_embed(server: LiveServer, folder: Path, tmp_path: Path) -> None:
    with Client(url=server.url, api_key=server.admin_key) as client:
        version = client.llm.push_hf(folder, name="sdk-gpt")
        assert version.format == "hf-text-generation"
        assert "sdk-gpt" in client.llm.models()
        reply = client.llm.chat("sdk-gpt", [{"role": "user", "content": "hello"}], max_tokens=4, temperature=0)
        assert reply["usage"]["completion_tokens"] >= 1
        vectors = client.llm.embed("all-minilm-l6-v2", ["hello", "world"], dimensions=32)
        assert len(vectors) == 2 and len(vectors[0]) == 32
        up = client.llm.add_upstream("sdk-up", base_url=f"{server.url}/v1", upstream_model="sdk-gpt",
                                     api_key=server.admin_key)
        assert up.format == "upstream"
        via = client.llm.complete("sdk-up", "hello", max_tokens=3, temperature=0)
        assert via["model"] == "sdk-up"
        bad = tmp_path / "bad"
        bad.mkdir()
        for f in folder.iterdir():
            (bad / f.name).write_bytes(f.read_bytes())
        (bad / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
        with pytest.raises(UnsafeContent):
            client.llm.push_hf(bad, name="sdk-bad")
        with pytest.raises(BadRequest):
            client.llm.add_upstream("sdk-evil", base_url="http://example.com/v1", upstream_model="m")


def test_cli_push_upstream_chat_embed(server: LiveServer, folder: Path) -> None:
    r = _cli(server, "llm", "push-hf", str(folder), "--name", "cli-gpt", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["format"] == "hf-text-generation"
    r = _cli(server, "llm", "upstream", "cli-up", "--base-url", f"{server.url}/v1", "--upstream-model", "cli-gpt",
             "--api-key", server.admin_key)
    assert r.exit_code == 0, r.output
    assert server.admin_key not in r.output
    r = _cli(server, "llm", "chat", "cli-up", "hello", "--max-tokens", "3", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["model"] == "cli-up"
    r = _cli(server, "llm", "embed", "hello")
    assert r.exit_code == 0 and len(json.loads(r.stdout)[0]) == 384
    r = _cli(server, "llm", "models")
    assert "cli-gpt" in r.output and "all-minilm-l6-v2" in r.output
    r = _cli(server, "llm", "upstream", "x", "--base-url", "http://example.com/v1", "--upstream-model", "m")
    assert r.exit_code == 2 and "allow-list" in r.output
