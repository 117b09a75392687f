"""Triton's logging extension through a real server: ``tritonclient.http`` and ``tritonclient.grpc``
(both gRPC transports) read the log settings and change the server's log level; only
administrators change them; bad settings get 400 / INVALID_ARGUMENT and change nothing."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from tests.integration._serving import on_grpc_transport
from tests.support.live import LiveServer

ROOT = logging.getLogger()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer.build(tmp_path_factory.mktemp("logging") / "home", builtin_models=False).start()
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(autouse=True)
def root_level() -> Iterator[None]:
    """The live server shares this process's root logger: leave its level as it was."""
    level = ROOT.level
    yield
    ROOT.setLevel(level)


def test_tritonclient_http_reads_and_changes_the_level(server: LiveServer) -> None:
    triton = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    headers = server.headers
    ROOT.setLevel(logging.WARNING)
    assert triton.get_log_settings(headers=headers) == {
        "log_file": "", "log_info": False, "log_warning": True, "log_error": True,
        "log_verbose_level": 0, "log_format": "default",
    }
    after = triton.update_log_settings({"log_verbose_level": 1}, headers=headers)
    assert after["log_verbose_level"] == 1 and after["log_info"] is True
    assert ROOT.level == logging.DEBUG
    after = triton.update_log_settings({"log_verbose_level": 0, "log_info": False, "log_warning": False},
                                       headers=headers)
    assert ROOT.level == logging.ERROR and (after["log_warning"], after["log_error"]) == (False, True)
    triton.update_log_settings({"log_error": False}, headers=headers)
    assert not ROOT.isEnabledFor(logging.CRITICAL)  # all off
    triton.close()


@pytest.mark.parametrize(("changes", "param"), [
    ({"log_info": "yes"}, "log_info"),
    ({"log_verbose_level": -1}, "log_verbose_level"),
    ({"log_verbose_level": True}, "log_verbose_level"),
    ({"log_file": "/tmp/server.log"}, "log_file"),
    ({"log_format": "ISO8601"}, "log_format"),
    ({"log_colour": True}, "log_colour"),
])
def test_bad_settings_change_nothing(server: LiveServer, changes: dict, param: str) -> None:
    ROOT.setLevel(logging.INFO)
    with server.client() as admin:
        r = admin.post("/v2/logging", json={"log_warning": False, **changes})
        assert r.status_code == 400 and r.json()["error"]["details"]["param"] == param, r.text
    assert ROOT.level == logging.INFO


def test_only_administrators_change_them(server: LiveServer) -> None:
    with server.client() as admin:
        developer = admin.post("/api/v1/keys", json={"role": "developer"}).json()["secret"]
    with server.client(developer) as dev:
        assert dev.get("/v2/logging").status_code == 200
        r = dev.post("/v2/logging", json={"log_verbose_level": 1})
        assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied", r.text
        r = dev.post("/v2/logging", content=b"[1]")
        assert r.status_code == 400
    with server.client(key="my_not_a_key") as stranger:
        assert stranger.get("/v2/logging").status_code == 401


@pytest.mark.parametrize("transport", ["native", "grpcio"])
def test_tritonclient_grpc_reads_and_changes_the_level(server: LiveServer, tmp_path: Path, transport: str) -> None:
    with on_grpc_transport(server, tmp_path, transport) as live:
        triton = triton_grpc.InferenceServerClient(live.grpc_url)
        headers = {"authorization": f"Bearer {live.admin_key}"}
        ROOT.setLevel(logging.INFO)
        settings = triton.get_log_settings(headers=headers, as_json=True)["settings"]
        assert settings["log_info"] == {"bool_param": True} and settings["log_file"] == {"string_param": ""}
        changed = triton.update_log_settings({"log_verbose_level": 2}, headers=headers, as_json=True)["settings"]
        assert changed["log_verbose_level"] == {"uint32_param": 1} and ROOT.level == logging.DEBUG
        with pytest.raises(InferenceServerException) as bad:
            triton.update_log_settings({"log_file": "x.log"}, headers=headers)
        assert bad.value.status() == "StatusCode.INVALID_ARGUMENT"
        with pytest.raises(InferenceServerException) as nokey:
            triton.get_log_settings()
        assert nokey.value.status() == "StatusCode.UNAUTHENTICATED"
        triton.close()
