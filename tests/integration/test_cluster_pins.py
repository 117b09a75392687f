"""Two servers on one database and artifact store (a cluster's shape): a version pinned through
one is pinned and loaded by the other within ``pin_sync_s``, and unpinning it through the first
unpins it on the other (where it stays loaded, evictable again). On SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration._serving import cluster_of_two, register, scale_model
from tests.support.live import LiveServer


def _loaded(server: LiveServer) -> dict[tuple[str, int], bool]:
    with server.client() as client:
        r = client.get("/api/v1/loaded")
        assert r.status_code == 200, r.text
        return {(i["model"], i["version"]): i["pinned"] for i in r.json()["items"]}


def _until(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the other server did not follow in time"
        time.sleep(0.05)


@pytest.fixture
def pair(tmp_path: Path, database_url: str) -> Iterator[tuple[LiveServer, LiveServer]]:
    def alpha(first: LiveServer) -> None:
        register(first, "alpha", scale_model(tmp_path / "alpha.onnx", 2.0))

    with cluster_of_two(tmp_path / "home", alpha, database_url=database_url, pin_sync_s=0.2) as servers:
        yield servers


def test_a_pin_reaches_the_other_server(pair: tuple[LiveServer, LiveServer]) -> None:
    first, second = pair
    assert _loaded(second) == {}
    with first.client() as client:
        r = client.post("/api/v1/models/alpha/versions/1/load", json={"pin": True})
        assert r.status_code == 200 and r.json()["pinned"] is True, r.text
    _until(lambda: _loaded(second) == {("alpha", 1): True})

    with first.client() as client:
        assert client.post("/api/v1/models/alpha/versions/1/unload").status_code == 200
    assert _loaded(first) == {}
    # unpinned on the other server too; it stays loaded there until the budget needs the room
    _until(lambda: _loaded(second) == {("alpha", 1): False})


def test_a_server_with_pin_sync_off_takes_pins_only_at_start(tmp_path: Path) -> None:
    shared = {"builtin_models": False, "pin_sync_s": 0, "grpc_enabled": False}
    first = LiveServer.build(tmp_path / "home", **shared).start()
    try:
        register(first, "alpha", scale_model(tmp_path / "alpha.onnx", 2.0))
        second = LiveServer.build(tmp_path / "home", **shared).start()
        try:
            with first.client() as client:
                assert client.post("/api/v1/models/alpha/versions/1/load", json={"pin": True}).status_code == 200
            time.sleep(0.5)
            assert _loaded(second) == {}
        finally:
            second.stop()
        third = LiveServer.build(tmp_path / "home", **shared).start()
        try:
            assert _loaded(third) == {("alpha", 1): True}
        finally:
            third.stop()
    finally:
        first.stop()


def test_the_setting_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pin_sync_s"):
        LiveServer.build(tmp_path / "home", pin_sync_s=-1)
