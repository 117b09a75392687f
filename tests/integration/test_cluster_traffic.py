"""A deployment's traffic counted over a cluster, through real servers: two servers on one
database (SQLite, then PostgreSQL) share what they counted. A canary failing on both, too few
times on either for the rollback policy, is rolled back once on the cluster's count; every
server shows the cluster's statistics; a rollout step waits for the canary answers of both; a
server that stops leaves the sum at once; with sharing off, neither server rolls it back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.integration._serving import canary_models, cluster_of_two, infer_body, metric
from tests.support.live import LiveServer, wait_until

BAD = np.full((1, 4), 50.0, np.float32)  # "flaky" fails at run time on it
#: all traffic on the canary, so the test knows how many requests each server's canary saw
GUARDED = {
    "name": "guarded",
    "routes": [{"model": "double", "version": 1, "weight": 0}, {"model": "flaky", "version": 1, "weight": 100}],
    "rollback": {"max_error_rate": 0.5, "window_s": 60, "min_requests": 10},
}


@pytest.fixture
def pair(tmp_path: Path, database_url: str) -> Iterator[tuple[LiveServer, LiveServer]]:
    with cluster_of_two(tmp_path / "home", lambda first: canary_models(first, tmp_path),
                        database_url=database_url, traffic_share_s=0.1, rollout_check_s=0.05) as servers:
        yield servers


def _fail(client: httpx.Client, times: int) -> None:
    for _ in range(times):
        r = client.post("/v2/models/guarded/infer", json=infer_body(BAD))
        assert r.status_code == 400, r.text


def _deployment(client: httpx.Client) -> dict[str, Any]:
    r = client.get("/api/v1/deployments/guarded")
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_a_canary_failing_on_both_servers_is_rolled_back_once_on_the_clusters_count(
    pair: tuple[LiveServer, LiveServer],
) -> None:
    first, second = pair
    with first.client() as client, second.client() as other:
        assert client.post("/api/v1/deployments", json=GUARDED).status_code == 201
        _fail(client, 6)  # 6 of the 10 answers the policy needs, on the first server
        # the second server has routed nothing of it, yet shows what the first counted (once the
        # first's round after its sixth request was written, and the second's round read it)
        wait_until(lambda: (_deployment(other)["stats"] or {"routes": [{}, {}]})["routes"][1].get("requests") == 6,
                   timeout=5)
        stats = _deployment(other)["stats"]
        canary = stats["routes"][1]
        assert stats["servers"] == 1 and (canary["errors"], canary["window"]["errors"]) == (6, 6), stats
        assert len(_deployment(client)["routes"]) == 2  # not rolled back: 6 < 10

        _fail(other, 4)  # 4 more on the second: 10 over the cluster, all errors
        dep = _deployment(other)
        deadline = time.monotonic() + 5
        while len(dep["routes"]) != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
            dep = _deployment(other)
        assert dep["routes"] == [{"model": "double", "version": 1, "weight": 100.0}]
        rolled = [e for e in dep["events"] if e["kind"] == "rolled_back"]
        assert len(rolled) == 1, dep["events"]
        assert rolled[0]["reason"] == "automatic: canary flaky:1 error rate 1 over 60s exceeded 0.5"

        # the second server's fourth failure tripped it (6 + 4 in its window); the first may have
        # tripped too, on the second's figures, before it routed by the new revision: each server
        # counts the trips it saw, and the rollback above was written once all the same
        assert metric(other.get("/metrics").text, "modelyard_automatic_rollbacks_total", deployment="guarded") == 1
        assert metric(client.get("/metrics").text, "modelyard_automatic_rollbacks_total", deployment="guarded") <= 1


def test_with_sharing_off_each_server_judges_by_its_own(tmp_path: Path) -> None:
    with cluster_of_two(tmp_path / "home", lambda first: canary_models(first, tmp_path), traffic_share_s=0) as (first, second):
        with first.client() as client, second.client() as other:
            assert client.post("/api/v1/deployments", json=GUARDED).status_code == 201
            _fail(client, 6)
            _fail(other, 6)
            time.sleep(0.5)
            dep = _deployment(client)
            assert len(dep["routes"]) == 2 and [e["kind"] for e in dep["events"]] == ["created"], dep
            assert dep["stats"]["servers"] == 1 and dep["stats"]["routes"][1]["requests"] == 6


def _canary_answers(client: httpx.Client, name: str, wanted: int) -> None:
    """Call deployment ``name`` through ``client`` until its canary (``double`` version 2) has
    answered ``wanted`` requests there."""
    answered = 0
    for _ in range(200):
        r = client.post(f"/v2/models/{name}/infer", json=infer_body(np.ones((1, 4), np.float32)))
        assert r.status_code == 200, r.text
        answered += r.json()["model_version"] == "2"
        if answered == wanted:
            return
    raise AssertionError(f"the canary answered {answered} of 200 requests")


def test_a_rollout_step_waits_for_the_canary_answers_of_every_server(pair: tuple[LiveServer, LiveServer]) -> None:
    """min_requests 8: the canary answers 4 on each server. Neither saw 8; the cluster did."""
    first, second = pair
    with first.client() as client, second.client() as other:
        r = client.post("/api/v1/deployments", json={
            "name": "proven", "routes": [{"model": "double", "version": 1}, {"model": "double", "version": 2, "weight": 0}],
            "rollout": {"steps": [50, 100], "interval_s": 0.2, "min_requests": 8}})
        assert r.status_code == 201, r.text
        _canary_answers(client, "proven", 4)
        time.sleep(0.6)  # due for 0.4 s, both servers looking every 0.05 s: 4 answers are not 8
        dep = client.get("/api/v1/deployments/proven").json()
        assert dep["rollout"] is not None and dep["rollout"]["step"] == 0, dep
        assert dep["stats"]["rollout"]["canary_answered"] == 4
        _canary_answers(other, "proven", 4)
        wait_until(lambda: client.get("/api/v1/deployments/proven").json()["rollout"] is None, timeout=10)
        done = client.get("/api/v1/deployments/proven").json()
        assert done["routes"] == [{"model": "double", "version": 2, "weight": 100.0}]
        assert [e["kind"] for e in done["events"]] == ["created", "promoted"]


def test_a_server_that_stops_leaves_the_sum_at_once(pair: tuple[LiveServer, LiveServer]) -> None:
    first, second = pair

    def seen(client: httpx.Client) -> tuple[int, int]:
        stats = client.get("/api/v1/deployments/plain").json()["stats"]
        return stats["servers"], stats["routes"][0]["requests"]

    with first.client() as client, second.client() as other:
        assert client.post("/api/v1/deployments", json={
            "name": "plain", "routes": [{"model": "double", "version": 1}]}).status_code == 201
        for caller, times in ((client, 3), (other, 5)):
            for _ in range(times):
                assert caller.post("/v2/models/plain/infer", json=infer_body(np.ones((1, 4), np.float32))
                                   ).status_code == 200
        wait_until(lambda: seen(client) == (2, 8), timeout=5)
        second.stop()  # its shutdown removes its rows
        # within 5 s: a server that died without removing them would still count for 15 s
        wait_until(lambda: seen(client) == (1, 3), timeout=5)
