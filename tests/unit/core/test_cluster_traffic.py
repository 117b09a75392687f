"""A deployment's traffic counted over a cluster (no HTTP): servers are ``Deployments`` services on
one database, each with its ``ClusterTraffic``; on SQLite and PostgreSQL. What the servers share,
what they read back, and what the rollback policy, a rollout's evidence and the statistics do
with it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from modelyard.core.cluster import LIVE_S
from modelyard.core.cluster_traffic import ClusterTraffic
from modelyard.core.deployment_spec import Deployment, Route
from modelyard.core.deployment_traffic import DeploymentTraffic, Trip
from modelyard.core.deployments import Deployments
from modelyard.core.platform import Platform
from modelyard.core.traffic_figures import NOBODY, RouteFigures, TrafficFigures
from modelyard.errors import Conflict
from modelyard.store.tables import DeploymentTrafficRow, utcnow
from tests.support.platforms import platform_with_m

ROUTES = [{"model": "m", "version": 1}, {"model": "m", "version": 2}]


@pytest.fixture
def platform(tmp_path: Path, database_url: str) -> Iterator[Platform]:
    p = platform_with_m(tmp_path, database_url=database_url)
    yield p
    asyncio.run(p.aclose())


@pytest.fixture
def tenant(platform: Platform) -> str:
    return platform.keys.ensure_default_tenant()


class Server:
    """One server of the cluster: its deployments service and its share of the traffic."""

    def __init__(self, platform: Platform, name: str) -> None:
        self.deployments = Deployments(platform.db, platform.registry)
        self.cluster = ClusterTraffic(platform.db, self.deployments, server=name)

    def traffic(self, tenant: str, name: str) -> DeploymentTraffic:
        traffic = self.deployments.lookup(tenant, name)
        assert traffic is not None
        return traffic

    def share(self) -> list[tuple[DeploymentTraffic, Route, Trip]]:
        """One round: write this server's figures, read the others'; the canaries that tripped."""
        return self.cluster.hand_out(self.cluster.exchange(self.cluster.mine()))


def _cluster(platform: Platform, n: int) -> list[Server]:
    return [Server(platform, f"server-{i}") for i in range(n)]


def _serve(traffic: DeploymentTraffic, route: int, ok: bool, times: int, latency_s: float = 0.01) -> list[object]:
    return [traffic.record(traffic.deployment.routes[route], ok, latency_s) for _ in range(times)]


def test_figures_go_through_json_and_sum() -> None:
    a = TrafficFigures(1, {"m:1": RouteFigures(10, 2, 0.5, 4, 1, {3: 2, 7: 1})}, {"requests": 3, "agreements": 2},
                       {(1, 100.5): 6})
    b = TrafficFigures(1, {"m:1": RouteFigures(5, 0, 0.25, 5, 0, {3: 1}), "m:2": RouteFigures(1, 1, 0.1, 1, 1, {})},
                       {"requests": 1}, {(1, 100.5): 2, (0, 90.0): 9})
    assert TrafficFigures.from_row(a.to_row()) == a
    total = TrafficFigures.total([a, b])
    assert total.servers == 2
    assert total.routes["m:1"] == RouteFigures(15, 2, 0.75, 9, 1, {3: 3, 7: 1})
    assert total.routes["m:2"] == b.routes["m:2"]
    assert total.shadow == {"requests": 4, "agreements": 2}
    assert total.answered_at((1, 100.5)) == 8 and total.answered_at((0, 90.0)) == 9 and total.answered_at((2, 1.0)) == 0
    assert TrafficFigures.total([]) == NOBODY


@pytest.mark.parametrize("raw", [
    None, [], {}, {"routes": []}, {"routes": {"m:1": {"requests": -1}}},
    {"routes": {"m:1": {"requests": "many"}}}, {"routes": {"m:1": {"latency_s": float("nan")}}},
    {"routes": {}, "shadow": {"requests": -3}}, {"routes": {}, "shadow": {}, "answered": [[1, 2]]},
    {"routes": {"m:1": {"window": [1]}}},
])
def test_an_unreadable_row_is_left_out_not_fatal(raw: object) -> None:
    assert TrafficFigures.from_row(raw) is None


def test_a_canary_failing_on_every_server_is_rolled_back_on_the_clusters_count(platform: Platform, tenant: str) -> None:
    """min_requests 7: three failures on each of two servers trip nothing on either alone, nor
    on their sum; once they have shared their figures, the next failure trips over the cluster's
    window."""
    platform.deployments.create(tenant, "web", routes=ROUTES,
                                rollback={"max_error_rate": 0.5, "min_requests": 7, "window_s": 60})
    a, b = _cluster(platform, 2)
    ta, tb = a.traffic(tenant, "web"), b.traffic(tenant, "web")
    assert not any(_serve(ta, 1, False, 3)) and not any(_serve(tb, 1, False, 3))
    assert not any(_serve(ta, 0, True, 4))  # the primary's answers are not the canary's
    assert a.share() == [] and b.share() == []  # 6 of the 7 the policy needs
    assert tb.peers.servers == 1 and tb.peers.routes["m:2"].window_errors == 3
    (trip,) = _serve(tb, 1, False, 1)
    assert trip == ("error_rate", "error rate 1 over 60s exceeded 0.5")
    assert tb.rolling_back and not ta.rolling_back  # the server that saw it rolls it back


def test_a_canary_whose_failures_came_elsewhere_trips_when_the_figures_come_in(platform: Platform, tenant: str) -> None:
    """min_requests 6: three failures on each of two servers; the second server's round reads
    the first's and finds six, without another failure of its own."""
    platform.deployments.create(tenant, "web", routes=ROUTES,
                                rollback={"max_error_rate": 0.5, "min_requests": 6, "window_s": 60})
    a, b = _cluster(platform, 2)
    ta, tb = a.traffic(tenant, "web"), b.traffic(tenant, "web")
    assert not any(_serve(ta, 1, False, 3)) and not any(_serve(tb, 1, False, 3))
    assert a.share() == []  # it reads nothing yet
    ((traffic, route, trip),) = b.share()
    assert traffic is tb and route.label == "m:2" and trip == ("error_rate", "error rate 1 over 60s exceeded 0.5")
    assert tb.rolling_back and tb.review() is None  # once
    ((traffic, _, _),) = a.share()  # the first finds it too (the rollback itself is written once: below)
    assert traffic is ta


def test_without_sharing_each_server_judges_by_its_own(platform: Platform, tenant: str) -> None:
    platform.deployments.create(tenant, "web", routes=ROUTES,
                                rollback={"max_error_rate": 0.5, "min_requests": 6, "window_s": 60})
    a, b = _cluster(platform, 2)
    ta, tb = a.traffic(tenant, "web"), b.traffic(tenant, "web")
    assert not any(_serve(ta, 1, False, 5)) and not any(_serve(tb, 1, False, 5))
    assert ta.peers is NOBODY and tb.peers is NOBODY


def test_a_slow_canary_is_judged_on_the_clusters_latencies(platform: Platform, tenant: str) -> None:
    platform.deployments.create(tenant, "lat", routes=ROUTES,
                                rollback={"max_p99_ms": 20, "min_requests": 8, "window_s": 60})
    a, b = _cluster(platform, 2)
    ta, tb = a.traffic(tenant, "lat"), b.traffic(tenant, "lat")
    _serve(ta, 1, True, 6, latency_s=0.05)  # six slow answers on the first server
    _serve(tb, 1, True, 3, latency_s=0.05)  # three on the second: under min_requests alone
    _serve(tb, 0, True, 20, latency_s=0.001)  # (the primary's are not the canary's)
    assert a.share() == [] and tb.review() is None
    ((traffic, route, trip),) = b.share()  # nine over the cluster
    assert traffic is tb and route.label == "m:2" and trip.limit == "latency"
    assert trip.how == "p99 latency 49.78 ms over 60s exceeded 20 ms"  # 50 ms, within its bucket


def test_statistics_show_the_clusters_counters_on_every_server(platform: Platform, tenant: str) -> None:
    dep = platform.deployments.create(tenant, "web", routes=ROUTES, shadow={"model": "m", "version": 2})
    a, b, quiet = _cluster(platform, 3)
    ta, tb = a.traffic(tenant, "web"), b.traffic(tenant, "web")
    _serve(ta, 0, True, 5, 0.01)
    _serve(ta, 1, False, 1, 0.03)
    _serve(tb, 0, True, 3, 0.02)
    ta.shadow.requests, ta.shadow.agreements, tb.shadow.requests, tb.shadow.disagreements = 4, 4, 2, 2
    for server in (a, b, quiet, a):  # a's second round reads what b wrote after its first
        server.share()
    stats = a.deployments.stats(dep)
    assert stats is not None and stats["servers"] == 2
    primary, canary = stats["routes"]
    assert (primary["requests"], primary["errors"], primary["latency_ms_avg"]) == (8, 0, pytest.approx(13.75))
    assert (canary["requests"], canary["errors"]) == (1, 1)
    assert primary["window"]["requests"] == 8 and canary["window"] == {"seconds": 60.0, "requests": 1, "errors": 1}
    shadow = stats["shadow"]
    assert (shadow["requests"], shadow["agreements"], shadow["disagreements"], shadow["agreement_rate"]) == (6, 4, 2, 0.666667)
    # a server that routed nothing of it shows the others' counters, and counts itself out
    seen = quiet.deployments.stats(dep)
    assert seen is not None and seen["servers"] == 2 and seen["routes"][0]["requests"] == 8
    assert Deployments(platform.db, platform.registry).stats(dep) is None  # one that never shared: nothing


def test_a_rollout_step_waits_for_the_clusters_answers(platform: Platform, tenant: str) -> None:
    dep = platform.deployments.create(
        tenant, "step", routes=[ROUTES[0], {**ROUTES[1], "weight": 0}],
        rollout={"steps": [10, 100], "interval_s": 1, "min_requests": 4})
    assert dep.rollout is not None
    due = dep.rollout.since + 5
    a, b = _cluster(platform, 2)
    _serve(a.traffic(tenant, "step"), 1, True, 2)
    _serve(b.traffic(tenant, "step"), 1, True, 2)
    assert a.deployments.advance_rollouts(due) == [] and b.deployments.advance_rollouts(due) == []
    a.share()
    b.share()
    assert b.traffic(tenant, "step").answered_at_step() == 4
    (done,) = b.deployments.advance_rollouts(due)
    assert done.rollout is None and done.events[-1]["kind"] == "promoted"


def _rows(platform: Platform) -> dict[tuple[str, str], DeploymentTrafficRow]:
    with platform.db.read() as s:
        return {(r.deployment_id, r.server_id): r for r in s.scalars(select(DeploymentTrafficRow))}


def test_a_server_writes_what_changed_and_a_heartbeat_and_drops_what_it_left(platform: Platform, tenant: str) -> None:
    dep = platform.deployments.create(tenant, "web", routes=ROUTES)
    (a,) = _cluster(platform, 1)
    a.cluster.exchange(a.cluster.mine(), now=0.0)
    assert _rows(platform) == {}  # nothing counted: nothing written
    _serve(a.traffic(tenant, "web"), 0, True, 2)
    a.cluster.exchange(a.cluster.mine(), now=1.0)
    first = _rows(platform)[(dep.id, "server-0")].updated_at
    a.cluster.exchange(a.cluster.mine(), now=2.0)  # unchanged, heartbeat not due: not written
    assert _rows(platform)[(dep.id, "server-0")].updated_at == first
    a.cluster.exchange(a.cluster.mine(), now=7.0)  # the heartbeat
    assert _rows(platform)[(dep.id, "server-0")].updated_at > first
    figures = TrafficFigures.from_row(_rows(platform)[(dep.id, "server-0")].figures)
    assert figures is not None and figures.routes["m:1"].requests == 2
    a.cluster.exchange({}, now=8.0)  # it holds the deployment no more
    assert _rows(platform) == {}


def test_a_server_that_stops_writing_stops_counting_and_one_that_leaves_at_once(
    platform: Platform, tenant: str,
) -> None:
    dep = platform.deployments.create(tenant, "web", routes=ROUTES)
    a, b, c = _cluster(platform, 3)
    _serve(a.traffic(tenant, "web"), 0, True, 2)
    _serve(b.traffic(tenant, "web"), 0, True, 3)
    _serve(c.traffic(tenant, "web"), 0, True, 1)
    for server in (a, b, c):  # c, the last, reads both others
        server.share()
    assert c.deployments.stats(dep)["routes"][0]["requests"] == 6  # type: ignore[index]
    with platform.db.transaction() as s:  # a died: its row ages past LIVE_S
        s.execute(update(DeploymentTrafficRow).where(DeploymentTrafficRow.server_id == "server-0")
                  .values(updated_at=utcnow() - timedelta(seconds=LIVE_S + 1)))
    c.share()
    assert c.deployments.stats(dep)["routes"][0]["requests"] == 4  # type: ignore[index]
    b.cluster.leave()
    c.share()
    assert c.traffic(tenant, "web").peers is NOBODY
    assert c.deployments.stats(dep)["servers"] == 1  # type: ignore[index]


def test_a_deployment_removed_meanwhile_is_not_written(platform: Platform, tenant: str) -> None:
    platform.deployments.create(tenant, "web", routes=ROUTES)
    (a,) = _cluster(platform, 1)
    _serve(a.traffic(tenant, "web"), 0, True, 2)
    mine = a.cluster.mine()
    platform.deployments.delete(tenant, "web")
    assert a.cluster.exchange(mine) == {}
    assert _rows(platform) == {}


def test_removing_a_deployment_removes_its_figures(platform: Platform, tenant: str) -> None:
    platform.deployments.create(tenant, "web", routes=ROUTES)
    (a,) = _cluster(platform, 1)
    _serve(a.traffic(tenant, "web"), 0, True, 2)
    a.share()
    assert len(_rows(platform)) == 1
    platform.deployments.delete(tenant, "web")
    assert _rows(platform) == {}


def test_an_automatic_rollback_happens_once_however_many_servers_saw_the_canary_fail(
    platform: Platform, tenant: str,
) -> None:
    d = platform.deployments
    dep: Deployment = d.create(tenant, "web", routes=ROUTES)
    canary = dep.routes[1].label
    done = d.rollback(tenant, "web", reason="automatic: first", canary=canary)
    assert [r.label for r in done.routes] == ["m:1"]
    with pytest.raises(Conflict, match="takes no traffic now"):
        d.rollback(tenant, "web", reason="automatic: second", canary=canary)
    assert [e["kind"] for e in d.get(tenant, "web").events] == ["created", "rolled_back"]
    d.rollback(tenant, "web")  # by hand: always
    assert [e["kind"] for e in d.get(tenant, "web").events] == ["created", "rolled_back", "rolled_back"]


def test_another_servers_unreadable_row_is_left_out_and_said_once(
    platform: Platform, tenant: str, caplog: pytest.LogCaptureFixture,
) -> None:
    dep = platform.deployments.create(tenant, "web", routes=ROUTES)
    a, b = _cluster(platform, 2)
    _serve(a.traffic(tenant, "web"), 0, True, 2)
    _serve(b.traffic(tenant, "web"), 0, True, 3)
    a.share()
    with platform.db.transaction() as s:  # another version of the code, or damage
        s.execute(update(DeploymentTrafficRow).where(DeploymentTrafficRow.server_id == "server-0")
                  .values(figures={"routes": "many"}))
    with caplog.at_level("WARNING", logger="modelyard.core.cluster_traffic"):
        b.share()
        b.share()
    assert b.traffic(tenant, "web").peers is NOBODY
    assert b.deployments.stats(dep)["routes"][0]["requests"] == 3  # type: ignore[index]
    said = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert said == [f"left out the unreadable traffic figures of deployment {dep.id} from server server-0"]


def test_the_servers_rounds_hand_a_trip_on_the_clusters_figures_to_the_data_plane(
    platform: Platform, tenant: str,
) -> None:
    """``follow`` as a server runs it: each round writes, reads, hands out, and gives a canary
    that tripped on the others' figures to ``on_trip`` with its tenant's name."""
    platform.deployments.create(tenant, "web", routes=ROUTES,
                                rollback={"max_error_rate": 0.5, "min_requests": 6, "window_s": 60})
    a, b = _cluster(platform, 2)
    _serve(a.traffic(tenant, "web"), 1, False, 3)
    _serve(b.traffic(tenant, "web"), 1, False, 3)
    a.share()  # a's figures are in
    tripped: list[tuple[str, str, str, str]] = []
    follower = ClusterTraffic(
        platform.db, b.deployments, server="server-1", tenant_name=lambda tenant_id: f"name of {tenant_id}",
        on_trip=lambda traffic, route, trip, name: tripped.append((traffic.deployment.name, route.label, trip.limit, name)),
    )

    async def rounds() -> None:
        task = asyncio.create_task(follower.follow(0.01))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if tripped:
                break
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(rounds())
    assert tripped == [("web", "m:2", "error_rate", f"name of {tenant}")]  # once: rolling back since
    follower.leave()
    assert set(_rows(platform)) == {(b.traffic(tenant, "web").deployment.id, "server-0")}  # a's stays


def test_a_rolled_back_canarys_counts_stay_in_the_clusters_statistics(platform: Platform, tenant: str) -> None:
    """After the rollback, what the canary did on one server is still in the statistics every
    server shows (``retired``), summed over the servers that routed it."""
    platform.deployments.create(tenant, "web", routes=ROUTES)
    a, b, c = _cluster(platform, 3)
    _serve(a.traffic(tenant, "web"), 1, False, 3)
    _serve(b.traffic(tenant, "web"), 1, True, 2)
    platform.deployments.rollback(tenant, "web", reason="by hand")
    for server in (a, b):
        server.deployments.refresh(tenant, "web")  # each server learns of the new revision
    for server in (a, b, c):
        server.share()
    stats = c.deployments.stats(platform.deployments.get(tenant, "web"))
    assert stats is not None and stats["retired"] == [
        {"model": "m", "version": 2, "requests": 5, "errors": 3, "latency_ms_avg": 10.0}]
    assert [r["model"] + ":" + str(r["version"]) for r in stats["routes"]] == ["m:1"]
