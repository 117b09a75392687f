"""Serving settings per model and per version (their ``serving`` tag) through a real server: they
take effect at the next request and go when removed, a model's apply under a version's own, and
bad ones are refused when written and change nothing. The timeout is the setting watched: a
request to the slow model (about 50 ms) answers 504 under a 5 ms timeout and 200 under the default."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from modelyard.cli.main import app
from tests.integration._serving import SLOW_WIDTH, infer_body, register, slow_model
from tests.support.live import LiveServer

SLOW_N = 40_000  # about 50 ms per row on this machine
HURRY = {"timeout_s": 0.005}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("settings")
    live = LiveServer.build(tmp / "home", builtin_models=False, grpc_enabled=False).start()
    for name in ("tagged", "layered", "guarded", "viacli"):
        register(live, name, slow_model(tmp / f"{name}.onnx", SLOW_N))
    register(live, "layered", slow_model(tmp / "layered-2.onnx", SLOW_N))
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def status(client: httpx.Client, model: str, version: int) -> int:
    x = np.zeros((1, SLOW_WIDTH), np.float32)
    return client.post(f"/v2/models/{model}/versions/{version}/infer", json=infer_body(x)).status_code


def patch(client: httpx.Client, path: str, body: dict) -> httpx.Response:
    r = client.patch(f"/api/v1/models/{path}", json=body)
    assert r.status_code == 200, r.text
    return r


def test_a_versions_settings_take_effect_at_the_next_request_and_go_when_removed(client: httpx.Client) -> None:
    assert status(client, "tagged", 1) == 200  # loaded, its settings remembered
    patch(client, "tagged/versions/1", {"tags": {"serving": HURRY, "team": "ml"}})
    assert status(client, "tagged", 1) == 504
    r = patch(client, "tagged/versions/1", {"tags": {"team": "ml"}})
    assert r.json()["tags"] == {"team": "ml"}
    assert status(client, "tagged", 1) == 200  # not the settings remembered before


def test_a_models_settings_apply_to_every_version_under_the_versions_own(client: httpx.Client) -> None:
    assert status(client, "layered", 1) == 200 and status(client, "layered", 2) == 200
    patch(client, "layered", {"tags": {"serving": HURRY}})
    assert status(client, "layered", 1) == 504 and status(client, "layered", 2) == 504
    patch(client, "layered/versions/2", {"tags": {"serving": {"timeout_s": 30}}})
    assert status(client, "layered", 1) == 504 and status(client, "layered", 2) == 200
    patch(client, "layered", {"tags": {}})
    assert status(client, "layered", 1) == 200 and status(client, "layered", 2) == 200


@pytest.mark.parametrize(("serving", "field"), [
    ({"bogus": 1}, "bogus"),
    ({"max_batch_size": 0}, "max_batch_size"),
    ({"isolation": "vm"}, "isolation"),
    ({"timeout_s": -1}, "timeout_s"),
    ({"priority_levels": -1}, "priority_levels"),
    ({"priority_levels": 2, "default_priority_level": 3}, "default_priority_level"),
    ({"priority_queue_policy": {"0": {"max_queue_size": 4}}}, "priority_queue_policy.0"),
    ({"priority_queue_policy": {"2": {"max_queue_size": 0}}}, "priority_queue_policy.2.max_queue_size"),
    ({"priority_levels": 2, "priority_queue_policy": {"3": {"timeout_s": 1}}}, "priority_queue_policy.3"),
    ({"idle_unload_s": -1}, "idle_unload_s"),
    ({"idle_unload_s": "10 minutes"}, "idle_unload_s"),
    ([1, 2], "tags.serving"),
])
def test_bad_settings_are_refused_when_written_and_change_nothing(
    client: httpx.Client, serving: object, field: str
) -> None:
    for path in ("guarded", "guarded/versions/1"):
        r = client.patch(f"/api/v1/models/{path}", json={"tags": {"serving": serving}, "description": "changed"})
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "validation_failed" and error["details"]["field"] == field
        assert client.get(f"/api/v1/models/{path}").json()["description"] == ""
    r = client.post("/api/v1/models/guarded/versions", params={"tags": json.dumps({"serving": serving})},
                    content=b"never read")
    assert r.status_code == 422, r.text
    assert client.get("/api/v1/models/guarded").json()["latest_version"] == 1  # no version added
    assert status(client, "guarded", 1) == 200


def test_the_cli_sets_and_drops_them(server: LiveServer, client: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_URL", server.url)
    monkeypatch.setenv("MODELYARD_API_KEY", server.admin_key)
    runner = CliRunner()
    patch(client, "viacli/versions/1", {"tags": {"owner": "ana"}})

    result = runner.invoke(app, ["models", "update", "viacli", "-v", "1", "--serving", json.dumps(HURRY)])
    assert result.exit_code == 0, result.output
    assert '"timeout_s": 0.005' in result.output
    assert status(client, "viacli", 1) == 504
    result = runner.invoke(app, ["models", "update", "viacli", "-v", "1", "--no-serving", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["tags"] == {"owner": "ana"}  # the other tags stay
    assert status(client, "viacli", 1) == 200

    result = runner.invoke(app, ["models", "update", "viacli", "--serving", '{"max_queue_size": 0}'])
    assert result.exit_code == 2 and "max_queue_size" in result.output, result.output
    for bad, says in [((), "nothing to change"), (("--serving", "[1]"), "JSON object"),
                      (("--serving", "{}", "--no-serving"), "not both")]:
        result = runner.invoke(app, ["models", "update", "viacli", *bad])
        assert result.exit_code == 2 and says in result.output, result.output
