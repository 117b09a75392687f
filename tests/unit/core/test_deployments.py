"""Deployments in the core (no HTTP): validation, tenant scoping, weights, promote, rollback,
the routing table and its rollback trigger, shadow comparison, and the data plane routing."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from modelyard.core.deployment_spec import Route, parse_routes
from modelyard.core.deployment_traffic import RETIRED_KEPT, DeploymentTraffic
from modelyard.core.deployments import Deployments
from modelyard.engine.manager import parse_serving
from modelyard.core.queue_gates import DeploymentGate
from modelyard.core.platform import Platform
from modelyard.core.principal import Principal
from modelyard.core.routing import ErrorWindow, LatencyWindow, WeightedChoice, key_point, outputs_agree
from modelyard.errors import (
    Conflict,
    DeploymentNotFound,
    ModelNotFound,
    QueueFull,
    ValidationFailed,
    VersionNotFound,
)
from modelyard.tensors import InferenceRequest, Tensor
from tests.support.platforms import platform_with_m
from tests.support.queues import FullQueue


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    p = platform_with_m(tmp_path)
    yield p
    asyncio.run(p.aclose())


@pytest.fixture
def tenant(platform: Platform) -> str:
    return platform.keys.ensure_default_tenant()


def test_create_change_promote_rollback_delete(platform: Platform, tenant: str) -> None:
    d = platform.deployments
    dep = d.create(tenant, "web", routes=[{"model": "m", "version": 1, "weight": 90},
                                          {"model": "m", "version": 2, "weight": 10}],
                   serving={"max_batch_size": 8}, rollback={"max_error_rate": 0.1})
    assert dep.primary == Route("m", 1, 90.0) and dep.revision == 1
    with pytest.raises(Conflict):
        d.create(tenant, "web", routes=[{"model": "m", "version": 1}])
    dep = d.set_weights(tenant, "web", {"m:2": 50})
    assert [r.weight for r in dep.routes] == [90.0, 50.0] and dep.revision == 2
    dep = d.promote(tenant, "web")
    assert dep.routes == (Route("m", 2, 100.0),)
    dep = d.update(tenant, "web", routes=[{"model": "m", "version": 1}, {"model": "m", "version": 2, "weight": 5}])
    dep = d.rollback(tenant, "web", reason="test")
    assert dep.routes == (Route("m", 1, 100.0),)
    assert [e["kind"] for e in dep.events] == ["created", "weights", "promoted", "updated", "rolled_back"]
    assert d.lookup(tenant, "web") is not None
    d.delete(tenant, "web")
    assert d.lookup(tenant, "web") is None
    with pytest.raises(DeploymentNotFound):
        d.get(tenant, "web")


def test_validation(platform: Platform, tenant: str) -> None:
    d = platform.deployments
    with pytest.raises(VersionNotFound):
        d.create(tenant, "x", routes=[{"model": "m", "version": 9}])
    with pytest.raises(ValidationFailed):
        d.create(tenant, "x", routes=[])
    with pytest.raises(ValidationFailed):
        d.create(tenant, "x", routes=[{"model": "m", "version": 1}, {"model": "m", "version": 1}])
    with pytest.raises(ValidationFailed):
        d.create(tenant, "x", routes=[{"model": "m", "version": 1}], shadow={"model": "m", "version": 2, "share": 2})
    with pytest.raises(ValidationFailed):
        d.create(tenant, "../x", routes=[{"model": "m", "version": 1}])
    with pytest.raises(ValidationFailed):
        parse_serving({"instances": 1000})
    with pytest.raises(ValidationFailed):
        parse_routes([{"model": "m", "version": 1, "weight": -1}])


def test_deployments_are_scoped_by_tenant(platform: Platform, tenant: str) -> None:
    platform.deployments.create(tenant, "web", routes=[{"model": "m", "version": 1}])
    assert platform.deployments.lookup("another-tenant", "web") is None
    assert platform.deployments.list("another-tenant").total == 0
    with pytest.raises(DeploymentNotFound):
        platform.deployments.rollback("another-tenant", "web")
    assert platform.deployments.list(tenant).total == 1


def test_weighted_choice_follows_weights() -> None:
    choice = WeightedChoice([70, 30, 0], rng=random.Random(1))
    seen = Counter(choice.pick() for _ in range(10_000))
    assert abs(seen[1] / 10_000 - 0.3) < 0.02 and seen[2] == 0
    with pytest.raises(ValueError):
        WeightedChoice([0, 0])


def test_a_routing_key_picks_the_same_index_while_the_weights_stay() -> None:
    choice = WeightedChoice([70, 30, 0])
    keys = [f"user-{i}" for i in range(5_000)]
    picks = {key: choice.pick_for(key) for key in keys}
    assert all(choice.pick_for(key) == picks[key] for key in keys[:500])
    assert WeightedChoice([70, 30, 0]).pick_for("user-7") == picks["user-7"]  # another chooser, another server
    share = Counter(picks.values())
    assert abs(share[1] / len(keys) - 0.3) < 0.03 and share[2] == 0
    assert 0 <= key_point("é") < 1 and key_point("a") != key_point("b")


def test_a_growing_canary_only_takes_keys_never_gives_them_back() -> None:
    keys = [f"session-{i}" for i in range(2_000)]
    before = {key: WeightedChoice([90, 10]).pick_for(key) for key in keys}
    after = {key: WeightedChoice([50, 50]).pick_for(key) for key in keys}
    assert not [key for key in keys if before[key] == 1 and after[key] == 0]
    moved = sum(1 for key in keys if before[key] == 0 and after[key] == 1)
    assert abs(moved / len(keys) - 0.4) < 0.04


def test_a_route_owed_is_taken_by_the_next_random_pick_only(platform: Platform, tenant: str) -> None:
    """A route picked for a request that went the slow way (its version not loaded yet) is the
    next random pick's; a pick by routing key or while rolling back owes nothing."""
    dep = platform.deployments.create(tenant, "owed", routes=[
        {"model": "m", "version": 1, "weight": 100}, {"model": "m", "version": 2, "weight": 0}])
    traffic = DeploymentTraffic.of(dep)
    canary = dep.routes[1]  # weight 0: never picked at random
    assert {traffic.next_route().version for _ in range(50)} == {1}
    traffic.owe(canary, None)
    traffic.owe(canary, None)
    assert traffic.next_route("user-1").version == 1  # a key's route, whatever is owed
    assert [traffic.next_route().version for _ in range(3)] == [2, 2, 1]
    traffic.owe(canary, "user-1")  # picked by key: the slow way picks the same again
    assert traffic.next_route().version == 1 and not traffic.owed
    traffic.owe(canary, None)
    traffic.rolling_back = True
    assert traffic.next_route().version == 1  # rolling back: the primary, owed or not
    traffic.owe(canary, None)
    assert len(traffic.owed) == 1


def test_error_window_and_rollback_trigger(platform: Platform, tenant: str) -> None:
    window = ErrorWindow(10)
    for i in range(10):
        window.add(i % 2 == 0, now=100.0 + i)
    assert window.counts(now=109) == (10, 5)
    assert window.counts(now=115) == (5, 3)  # older events left the window
    dep = platform.deployments.create(
        tenant, "c", routes=[{"model": "m", "version": 1}, {"model": "m", "version": 2}],
        rollback={"max_error_rate": 0.5, "min_requests": 4, "window_s": 60},
    )
    traffic = DeploymentTraffic.of(dep)
    assert not any(traffic.record(dep.routes[0], False, 0.01) for _ in range(10))  # primary never trips
    outcomes = [traffic.record(dep.routes[1], ok, 0.01) for ok in (True, False, False, False, False)]
    assert outcomes[:3] == [None] * 3 and outcomes[4] is None  # trips once, at 3 errors of 4
    assert outcomes[3] == ("error_rate", "error rate 0.75 over 60s exceeded 0.5")
    assert traffic.rolling_back


def test_a_rolled_back_canary_keeps_its_counts_in_the_statistics(platform: Platform, tenant: str) -> None:
    """The revision after a rollback has only the primary; what the canary did stays readable
    (``stats.retired``), and the latest few routes that left are kept."""
    d = platform.deployments
    d.create(tenant, "c", routes=[{"model": "m", "version": 1}, {"model": "m", "version": 2}],
             rollback={"max_error_rate": 0.5, "min_requests": 4, "window_s": 60})
    traffic = d.lookup(tenant, "c")
    assert traffic is not None and traffic.stats()["retired"] == []
    primary, canary = traffic.deployment.routes
    traffic.record(primary, True, 0.01)
    for ok in (True, False, False, False):
        traffic.record(canary, ok, 0.02)
    d.rollback(tenant, "c", reason="automatic: test", canary="m:2")
    after = d.lookup(tenant, "c")
    assert after is not None and [r.label for r in after.deployment.routes] == ["m:1"]
    stats = after.stats()
    assert stats["routes"][0]["requests"] == 1
    assert stats["retired"] == [{"model": "m", "version": 2, "requests": 4, "errors": 3, "latency_ms_avg": 20.0}]
    after.record(primary, True, 0.01)
    assert after.counted and after.figures().routes["m:2"].requests == 4  # shared with the cluster too

    # the canary comes back: it starts afresh, and leaves the retired ones
    d.update(tenant, "c", routes=[{"model": "m", "version": 1}, {"model": "m", "version": 2, "weight": 0}])
    again = d.lookup(tenant, "c")
    assert again is not None and again.stats()["retired"] == []
    assert again.stats()["routes"][1]["requests"] == 0


def test_only_the_latest_routes_that_left_are_kept(platform: Platform, tenant: str) -> None:
    dep = platform.deployments.create(tenant, "c", routes=[{"model": "m", "version": 1}])
    traffic = DeploymentTraffic.of(dep)
    for version in range(2, RETIRED_KEPT + 4):  # each revision routes to one more version
        traffic.record(traffic.deployment.routes[0], True, 0.01)
        nxt = dataclasses.replace(traffic.deployment, routes=(Route("m", version, 100.0),),
                                  revision=traffic.deployment.revision + 1)
        traffic = DeploymentTraffic.of(nxt, traffic)
    retired = traffic.stats()["retired"]
    assert [r["version"] for r in retired] == list(range(3, RETIRED_KEPT + 3))  # 1 and 2 left the list
    assert all(r["requests"] == 1 for r in retired)


def test_a_latency_window_gives_the_quantile_of_what_it_saw_within_its_buckets() -> None:
    rng = np.random.default_rng(3)
    latencies = rng.lognormal(mean=np.log(0.02), sigma=0.8, size=5_000)
    window = LatencyWindow(60)
    assert window.quantile(0.99, now=100.0) == (0, None)
    for i, latency in enumerate(latencies):
        window.add(float(latency), now=100.0 + i / 100)  # 50 s of them
    for q in (0.5, 0.9, 0.99):
        n, estimate = window.quantile(q, now=150.0)
        exact = float(np.quantile(latencies, q, method="inverted_cdf"))
        assert n == 5_000 and estimate == pytest.approx(exact, rel=0.023), q
    # the first 20 s leave the window; what is left is the last 30 s
    n, p99 = window.quantile(0.99, now=180.5)
    assert n == 3_000 and p99 == pytest.approx(float(np.quantile(latencies[2_000:], 0.99, method="inverted_cdf")), rel=0.023)
    assert window.quantile(0.99, now=211.0) == (0, None)
    window.add(0.0, now=300.0)  # anything under the floor counts as the floor
    assert window.quantile(0.5, now=300.0)[1] == pytest.approx(1e-5, rel=0.023)


def test_a_latency_window_holds_buckets_not_requests() -> None:
    """A busy route's latency window keeps its memory bounded: each slice counts the buckets it
    saw, however many requests fell in them."""
    import tracemalloc

    rng = np.random.default_rng(5)
    latencies = rng.lognormal(mean=np.log(0.003), sigma=0.5, size=200_000).tolist()
    window = LatencyWindow(60)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i, latency in enumerate(latencies):  # 100 s at 2k requests a second
        window.add(latency, now=1000.0 + i / 2000)
    grown = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    assert grown < 400_000, f"{grown} bytes held for 200,000 latencies"
    n, p99 = window.quantile(0.99, now=1100.0)
    assert 120_000 <= n <= 122_000
    assert p99 == pytest.approx(float(np.quantile(latencies[-n:], 0.99, method="inverted_cdf")), rel=0.023)


def test_a_canary_slower_than_the_policys_p99_is_rolled_back_once_a_slice_begins(
    platform: Platform, tenant: str,
) -> None:
    dep = platform.deployments.create(
        tenant, "lat", routes=[{"model": "m", "version": 1}, {"model": "m", "version": 2}],
        rollback={"max_p99_ms": 20, "min_requests": 5, "window_s": 60},
    )
    assert dep.rollback is not None and dep.rollback.to_dict()["max_p99_ms"] == 20.0
    assert dep.rollback.to_dict()["max_p99_ratio"] is None
    traffic = DeploymentTraffic.of(dep)
    primary, canary = dep.routes
    # the primary is never rolled back, slow or not; errors and fast answers do not trip the latency
    assert not any(traffic.record(primary, True, 0.5, now=1000.0 + i) for i in range(10))
    assert not any(traffic.record(canary, False, 0.5, now=1000.0) for _ in range(3))
    assert not any(traffic.record(canary, True, 0.004, now=1000.0 + i) for i in range(10))
    # slow answers in the slice under way (a second, of a 60 s window): looked at when the next begins
    assert not any(traffic.record(canary, True, 0.05, now=1009.5) for _ in range(5))
    latencies = traffic.routes["m:2"].latencies
    assert latencies is not None and latencies.quantile(0.99, now=1009.6)[1] == pytest.approx(0.05, rel=0.023)
    trip = traffic.record(canary, True, 0.05, now=1010.1)
    assert trip is not None and trip.limit == "latency"
    assert trip.how.startswith("p99 latency ") and trip.how.endswith(" ms over 60s exceeded 20 ms")
    assert traffic.rolling_back and traffic.record(canary, True, 0.05, now=1011.5) is None  # once


def test_a_canary_slower_than_a_multiple_of_the_primarys_p99_is_rolled_back(platform: Platform, tenant: str) -> None:
    dep = platform.deployments.create(
        tenant, "rel", routes=[{"model": "m", "version": 1}, {"model": "m", "version": 2}],
        rollback={"max_p99_ratio": 2, "min_requests": 5, "window_s": 60},
    )
    traffic = DeploymentTraffic.of(dep)
    primary, canary = dep.routes
    # the canary at 30 ms: slow, but the primary's answers are not in yet (fewer than min_requests)
    assert not any(traffic.record(canary, True, 0.03, now=1000.0 + i) for i in range(6))
    assert not any(traffic.record(primary, True, 0.02, now=1005.5) for _ in range(10))
    assert traffic.record(canary, True, 0.03, now=1006.1) is None  # 1.5x the primary's 20 ms: within 2x
    assert not any(traffic.record(primary, True, 0.01, now=1006.5) for _ in range(2_000))  # the primary got faster
    trip = traffic.record(canary, True, 0.03, now=1007.1)
    assert trip is not None and trip.limit == "latency"
    assert re.fullmatch(r"p99 latency (29|30)\.\d+ ms over 60s exceeded 2x the primary's (9\.9|10\.0)\d ms", trip.how), trip.how


def test_a_changed_rollback_policy_gives_the_routes_its_windows_and_keeps_their_counts(
    platform: Platform, tenant: str,
) -> None:
    dep = platform.deployments.create(tenant, "pol", routes=[{"model": "m", "version": 1}, {"model": "m", "version": 2}])
    traffic = DeploymentTraffic.of(dep)
    traffic.record(dep.routes[1], True, 0.01)
    assert traffic.routes["m:2"].latencies is None and traffic.routes["m:2"].window.window_s == 60
    changed = platform.deployments.update(tenant, "pol", rollback={"max_p99_ms": 100, "window_s": 10})
    after = DeploymentTraffic.of(changed, traffic)
    stats = after.routes["m:2"]
    assert stats.requests == 1 and stats.window.window_s == 10 and stats.latencies is not None
    assert after.stats()["routes"][1]["window"] == {"seconds": 10.0, "requests": 0, "errors": 0, "p99_ms": None}
    plain = DeploymentTraffic.of(platform.deployments.update(tenant, "pol", rollback=None), after)
    assert plain.routes["m:2"].latencies is None and "p99_ms" not in plain.stats()["routes"][1]["window"]


@pytest.mark.parametrize("policy, field", [
    ({"max_p99_ms": 0}, "rollback.max_p99_ms"),
    ({"max_p99_ms": -5}, "rollback.max_p99_ms"),
    ({"max_p99_ms": 4e6}, "rollback.max_p99_ms"),
    ({"max_p99_ms": "fast"}, "rollback"),
    ({"max_p99_ratio": 0.9}, "rollback.max_p99_ratio"),
    ({"max_p99_ratio": 1001}, "rollback.max_p99_ratio"),
    ({"max_p99": 10}, "rollback"),
])
def test_a_bad_latency_limit_is_refused_and_names_its_field(
    platform: Platform, tenant: str, policy: dict, field: str,
) -> None:
    with pytest.raises(ValidationFailed) as caught:
        platform.deployments.create(tenant, "bad", routes=[{"model": "m", "version": 1}], rollback=policy)
    assert caught.value.details["field"] == field
    with pytest.raises(DeploymentNotFound):
        platform.deployments.get(tenant, "bad")


def test_an_error_window_holds_slices_not_requests() -> None:
    """A busy route's window keeps its memory bounded: outcomes are counted per slice of the
    window (a sixtieth), and a slice leaves once all of it is older than the window."""
    import tracemalloc

    window = ErrorWindow(60)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(200_000):  # 100 s at 2k requests a second, one in ten an error
        window.add(i % 10 != 0, now=1000.0 + i / 2000)
    grown = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    assert grown < 50_000, f"{grown} bytes held for 200,000 outcomes"
    n, errors = window.counts(now=1100.0)
    assert 120_000 <= n <= 122_000 and errors * 10 == pytest.approx(n, abs=10)  # the last 60-61 s
    assert window.counts(now=1161.0) == (0, 0), "all of it older than the window"


def test_outputs_agree() -> None:
    a = {"y": np.array([[1.0, 2.0]], np.float32), "label": np.array([3])}
    assert outputs_agree(a, {"y": a["y"] + 1e-7, "label": np.array([3])})
    assert not outputs_agree(a, {"y": a["y"], "label": np.array([4])})
    assert not outputs_agree(a, {"z": a["y"]})


def test_dataplane_routes_a_deployment_and_mirrors(platform: Platform, tenant: str) -> None:
    platform.deployments.create(
        tenant, "web", routes=[{"model": "m", "version": 1}], shadow={"model": "m", "version": 2},
    )
    principal = Principal(key_id="k", tenant_id=tenant, tenant_name="default", role="inference")
    x = np.ones((2, 4), np.float32)

    async def main() -> None:
        request = InferenceRequest(inputs=[Tensor.from_array("x", x)], id="1")
        response = await platform.dataplane.infer(principal, "web", None, request)
        assert response.model_name == "web" and response.model_version == "1"
        np.testing.assert_allclose(response.outputs[0].data, x)
        await asyncio.sleep(0.2)  # the shadow runs after the answer

    asyncio.run(main())
    stats = platform.deployments.lookup(tenant, "web").shadow  # type: ignore[union-attr]
    assert stats.requests == 1 and stats.disagreements == 1


def test_start_queues_a_deployments_request_and_finishes_as_infer_does(platform: Platform, tenant: str) -> None:
    """``DataPlane.start`` (the callback path of REST and gRPC) serves a deployment once it and
    its versions are in memory: each request takes a route by weight, is answered in the
    deployment's name, and is counted as ``infer`` counts it: on the route's statistics (the
    canary's error window), on the deployment's usage, and mirrored to the shadow."""
    platform.deployments.create(
        tenant, "web", routes=[{"model": "m", "version": 1, "weight": 50}, {"model": "m", "version": 2, "weight": 50}],
        shadow={"model": "m", "version": 2},
    )
    who = Principal(key_id="k", tenant_id=tenant, tenant_name="default", role="inference")
    x = np.ones((2, 4), np.float32)
    plane = platform.dataplane

    def request() -> InferenceRequest:
        return InferenceRequest(inputs=[Tensor.from_array("x", x)], id="1")

    async def main() -> Counter[str]:
        assert plane.start(who, "web", None, request()) is None, "its versions not loaded yet: await infer"
        for version in ("1", "2"):
            await plane.infer(who, "m", version, request())  # both routes resolved and loaded
        await plane.infer(who, "web", None, request())
        with pytest.raises(ModelNotFound):  # the caller's scopes are checked from memory too
            plane.start(Principal(key_id="s", tenant_id=tenant, tenant_name="default", role="inference",
                                  scopes=("else",)), "web", None, request())
        versions: Counter[str] = Counter()
        for _ in range(40):
            pending = plane.start(who, "web", None, request())
            assert pending is not None
            await asyncio.wait_for(asyncio.shield(pending.future), 10)
            response = pending.finish()
            assert response.model_name == "web"
            np.testing.assert_allclose(response.outputs[0].data, x * float(response.model_version))
            versions[response.model_version] += 1
        await asyncio.sleep(0.3)  # the shadow runs after the answer
        return versions

    versions = asyncio.run(main())
    assert set(versions) == {"1", "2"} and sum(versions.values()) == 40
    traffic = platform.deployments.lookup(tenant, "web")
    assert traffic is not None
    assert sum(stats.requests for stats in traffic.routes.values()) == 41
    shadow = traffic.shadow  # version 2's answers agree with the shadow (version 2), version 1's do not
    assert shadow.requests == 41
    assert (shadow.agreements, shadow.disagreements) == (traffic.routes["m:2"].requests, traffic.routes["m:1"].requests)
    usage = {r.model: r.requests for r in platform.usage.query(tenant_id=tenant)}
    assert usage["web"] == 41 and usage["m"] == 2


def test_a_deployments_gate_refuses_while_its_heaviest_routes_queue_is_full(
    platform: Platform, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a 429 a deployment's caller is refused unread (``DataPlane.queue_gate``, as for a
    model) while the queue of the deployment's heaviest route is full, and no longer once the
    deployment changed. Refusals count on that version's errors and on the deployment's usage,
    as a request refused after it was read."""
    platform.deployments.create(
        tenant, "web", routes=[{"model": "m", "version": 1, "weight": 10}, {"model": "m", "version": 2, "weight": 90}],
    )
    who = Principal(key_id="k", tenant_id=tenant, tenant_name="default", role="inference")
    plane = platform.dataplane
    x = np.ones((1, 4), np.float32)
    assert plane.queue_gate(who, "web", None) is None, "its versions are not loaded: no gate"

    async def load() -> None:
        for version in ("1", "2"):
            await plane.infer(who, "m", version, InferenceRequest(inputs=[Tensor.from_array("x", x)]))

    asyncio.run(load())
    gate = plane.queue_gate(who, "web", None)
    assert isinstance(gate, DeploymentGate) and gate.refusal() is None, "an empty queue: let through"
    real = platform.manager.loaded_batcher
    full = FullQueue()  # version 2's queue full, version 1's empty
    monkeypatch.setattr(platform.manager, "loaded_batcher",
                        lambda source, options=None: full if source.version == "2" else real(source, options))
    gate = plane.queue_gate(who, "web", None)
    assert gate is not None and isinstance(gate.refusal(), QueueFull), "gated on the heaviest route"
    monkeypatch.undo()

    traffic = platform.deployments.lookup(tenant, "web")
    assert traffic is not None
    heaviest = FullQueue()
    gate = DeploymentGate(plane, who, traffic, platform.registry.resolve(tenant, "m", "2"), heaviest)
    assert isinstance(gate.refusal(), QueueFull)
    heaviest.full = False
    assert gate.refusal() is None
    assert heaviest.counted == 1, "the refusal made is counted once the gate lets through"
    heaviest.full = True
    assert isinstance(gate.refusal(), QueueFull)
    platform.deployments.set_weights(tenant, "web", {"m:1": 50, "m:2": 50})
    assert gate.refusal() is None, "the deployment changed since the gate was made"
    assert heaviest.counted == 2
    errors = platform.metrics.registry.get_sample_value(
        "modelyard_inference_errors_total", {"tenant": "default", "model": "m", "version": "2", "code": "queue_full"}
    )
    assert errors == 3, "two refusals here, and the first gate's one"
    usage = {r.model: (r.requests, r.errors) for r in platform.usage.query(tenant_id=tenant)}
    assert usage["web"] == (3, 3)


def test_a_request_routed_off_the_gated_route_frees_its_slot_there(
    platform: Platform, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deployment's callers wait for room on its heaviest route's queue (``DeploymentGate``),
    so a slot kept there may be for a request that the weights then send to a lighter route: each
    such request frees one slot on the heaviest route's queue, and a request to the heaviest
    route takes its slot there as it is queued (the slot is not freed twice). While rolling
    back, every request goes to the primary, and the gate waits on its queue."""
    from modelyard.engine.batcher import DynamicBatcher

    platform.deployments.create(
        tenant, "web", routes=[{"model": "m", "version": 1, "weight": 30}, {"model": "m", "version": 2, "weight": 70}],
    )
    who = Principal(key_id="k", tenant_id=tenant, tenant_name="default", role="inference")
    plane = platform.dataplane
    x = np.ones((1, 4), np.float32)
    freed: list[int] = []
    monkeypatch.setattr(DynamicBatcher, "spent_elsewhere", lambda self: freed.append(id(self)))

    def request() -> InferenceRequest:
        return InferenceRequest(inputs=[Tensor.from_array("x", x)])

    async def main() -> Counter[str]:
        for version in ("1", "2"):
            await plane.infer(who, "m", version, request())  # both routes resolved and loaded
        versions: Counter[str] = Counter()
        for _ in range(100):
            pending = plane.start(who, "web", None, request())
            assert pending is not None
            await asyncio.wait_for(asyncio.shield(pending.future), 10)
            versions[pending.finish().model_version] += 1
        return versions

    versions = asyncio.run(main())
    assert versions["1"] > 0 and versions["2"] > 0
    assert len(freed) == versions["1"], "one slot freed per request routed off the heaviest route"
    heaviest = plane._loaded_queue(tenant, "m", "2")
    assert heaviest is not None and set(freed) == {id(heaviest[1])}, "freed on the heaviest route's queue"

    traffic = platform.deployments.lookup(tenant, "web")
    assert traffic is not None and traffic.gate_route.version == 2
    traffic.rolling_back = True
    assert traffic.gate_route == traffic.deployment.primary and traffic.next_route() == traffic.deployment.primary


def test_a_new_revision_keeps_the_shadows_comparisons_only_for_the_same_shadow(platform: Platform, tenant: str) -> None:
    d = platform.deployments
    first = d.create(tenant, "mirror", routes=[{"model": "m", "version": 1}], shadow={"model": "m", "version": 2})
    traffic = DeploymentTraffic.of(first)
    traffic.shadow.requests, traffic.shadow.agreements = 5, 4
    same = d.update(tenant, "mirror", description="same shadow, a new revision")
    kept = DeploymentTraffic.of(same, traffic)
    assert kept.shadow is traffic.shadow and kept.shadow.agreements == 4
    other = d.update(tenant, "mirror", shadow={"model": "m", "version": 1})
    fresh = DeploymentTraffic.of(other, kept)
    assert fresh.shadow.requests == 0 and fresh.shadow is not traffic.shadow  # v1's answers, not v2's
    gone = d.update(tenant, "mirror", shadow=None)
    assert DeploymentTraffic.of(gone, fresh).shadow.requests == 0


TWO_ROUTES = [{"model": "m", "version": 1}, {"model": "m", "version": 2, "weight": 0}]


@pytest.mark.parametrize("rollout, field", [
    ({"steps": []}, "rollout.steps"),
    ({"steps": "10,50"}, "rollout.steps"),
    ({"steps": [10, 10]}, "rollout.steps.1"),
    ({"steps": [50, 20]}, "rollout.steps.1"),
    ({"steps": [0, 100]}, "rollout.steps.0"),
    ({"steps": [10, 101]}, "rollout.steps.1"),
    ({"steps": [10, True]}, "rollout.steps.1"),
    ({"steps": [10], "interval_s": 0}, "rollout.interval_s"),
    ({"steps": [10], "interval_s": 8 * 86_400}, "rollout.interval_s"),
    ({"steps": [10], "every": 5}, "rollout"),
    ([10, 50], "rollout"),
    ({"steps": [10], "min_requests": -1}, "rollout.min_requests"),
    ({"steps": [10], "min_requests": 2.5}, "rollout.min_requests"),
    ({"steps": [10], "min_requests": True}, "rollout.min_requests"),
    ({"steps": [10], "min_requests": 10**8}, "rollout.min_requests"),
])
def test_a_bad_rollout_is_refused_naming_its_field(platform: Platform, tenant: str, rollout: object, field: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        platform.deployments.create(tenant, "web", routes=TWO_ROUTES, rollout=rollout)
    assert refused.value.details == {"field": field}
    with pytest.raises(DeploymentNotFound):
        platform.deployments.get(tenant, "web")


def test_a_rollout_needs_a_primary_and_one_canary(platform: Platform, tenant: str) -> None:
    with pytest.raises(ValidationFailed, match="exactly two routes") as refused:
        platform.deployments.create(tenant, "web", routes=TWO_ROUTES[:1], rollout={"steps": [10]})
    assert refused.value.details == {"field": "rollout"}


def test_a_rollout_raises_the_canary_step_by_step_and_promotes_it(platform: Platform, tenant: str) -> None:
    d = platform.deployments
    dep = d.create(tenant, "web", routes=TWO_ROUTES, rollout={"steps": [10, 50, 100], "interval_s": 60})
    assert [r.weight for r in dep.routes] == [90.0, 10.0]
    assert dep.rollout is not None and dep.rollout.share == 10 and dep.rollout.to_dict()["next_step_at"]
    start = dep.rollout.since
    assert d.advance_rollouts(start + 59) == []  # not due yet
    (step,) = d.advance_rollouts(start + 60)
    assert [r.weight for r in step.routes] == [50.0, 50.0] and step.rollout is not None and step.rollout.step == 1
    assert step.events[-1]["kind"] == "rollout_step" and step.events[-1]["share"] == 50
    assert d.advance_rollouts(start + 61) == []  # the next step counts from this one
    (done,) = d.advance_rollouts(start + 121)
    assert done.routes == (Route("m", 2, 100.0),) and done.rollout is None
    assert done.events[-1]["kind"] == "promoted" and done.events[-1]["reason"] == "rollout"
    assert d.get(tenant, "web") == done and d.advance_rollouts(start + 1000) == []
    assert d.lookup(tenant, "web").deployment.revision == done.revision  # the routing table follows


def test_a_step_with_min_requests_waits_for_the_canarys_answers_at_the_step_before(
    platform: Platform, tenant: str
) -> None:
    d = platform.deployments
    dep = d.create(tenant, "web", routes=TWO_ROUTES, rollout={"steps": [10, 50, 100], "interval_s": 60, "min_requests": 3})
    assert dep.rollout is not None and dep.rollout.to_dict()["min_requests"] == 3
    start = dep.rollout.since
    assert d.advance_rollouts(start + 600) == []  # due long ago, but this server saw no answer of the canary
    traffic = d.lookup(tenant, "web")
    assert traffic is not None
    primary, canary = traffic.deployment.routes
    traffic.record(canary, True, 0.001)
    traffic.record(canary, False, 0.001)  # an error is no evidence
    traffic.record(primary, True, 0.001)  # nor is the primary's answer
    assert traffic.answered_at_step() == 1 and traffic.stats()["rollout"] == {"step": 0, "canary_answered": 1}
    assert d.advance_rollouts(start + 600) == []
    traffic.record(canary, True, 0.001)
    traffic.record(canary, True, 0.001)
    (step,) = d.advance_rollouts(start + 600)
    assert step.rollout is not None and step.rollout.step == 1 and [r.weight for r in step.routes] == [50.0, 50.0]

    after = d.lookup(tenant, "web")
    assert after is not None and after.answered_at_step() == 0  # counted afresh at the new step
    after.record(after.deployment.routes[1], True, 0.001)
    d.update(tenant, "web", description="halfway")  # a change that is not a step keeps the count
    kept = d.lookup(tenant, "web")
    assert kept is not None and kept is not after and kept.answered_at_step() == 1
    assert d.advance_rollouts(step.rollout.since + 60) == []
    kept.record(kept.deployment.routes[1], True, 0.001)
    kept.record(kept.deployment.routes[1], True, 0.001)
    (done,) = d.advance_rollouts(step.rollout.since + 60)
    assert done.routes == (Route("m", 2, 100.0),) and done.rollout is None
    assert [e["kind"] for e in done.events][-3:] == ["rollout_step", "updated", "promoted"], done.events


def test_another_servers_count_is_not_this_ones(platform: Platform, tenant: str) -> None:
    """Each server counts what it served itself: one that saw the canary answer enough takes the
    step, one that saw none does not."""
    d = platform.deployments
    dep = d.create(tenant, "web", routes=TWO_ROUTES, rollout={"steps": [10, 100], "interval_s": 1, "min_requests": 2})
    assert dep.rollout is not None
    quiet = Deployments(platform.db, platform.registry)
    assert quiet.lookup(tenant, "web") is not None  # it routes by the step, but serves nothing
    traffic = d.lookup(tenant, "web")
    assert traffic is not None
    for _ in range(2):
        traffic.record(traffic.deployment.routes[1], True, 0.001)
    assert quiet.advance_rollouts(dep.rollout.since + 5) == []
    (done,) = d.advance_rollouts(dep.rollout.since + 5)
    assert done.rollout is None and done.events[-1]["kind"] == "promoted"


def test_a_schedule_ending_under_100_stays_at_its_last_split(platform: Platform, tenant: str) -> None:
    d = platform.deployments
    dep = d.create(tenant, "web", routes=TWO_ROUTES, rollout={"steps": [5, 30], "interval_s": 1})
    assert dep.rollout is not None
    (last,) = d.advance_rollouts(dep.rollout.since + 1)
    assert [r.weight for r in last.routes] == [70.0, 30.0] and last.rollout is not None and last.rollout.last
    assert last.rollout.to_dict()["next_step_at"] is None and d.advance_rollouts(dep.rollout.since + 100) == []


def test_taking_the_wheel_stops_a_rollout(platform: Platform, tenant: str) -> None:
    d = platform.deployments
    for stop in ("weights", "rollback", "promote", "remove", "routes"):
        name = f"web-{stop}"
        d.create(tenant, name, routes=TWO_ROUTES, rollout={"steps": [10, 100], "interval_s": 1})
        if stop == "weights":
            changed = d.set_weights(tenant, name, {"m:2": 20})
        elif stop == "rollback":
            changed = d.rollback(tenant, name)
        elif stop == "promote":
            changed = d.promote(tenant, name)
        elif stop == "remove":
            changed = d.update(tenant, name, rollout=None)
        else:
            changed = d.update(tenant, name, routes=TWO_ROUTES)
        assert changed.rollout is None, stop
        assert changed.events[-1].get("rollout") == "stopped", (stop, changed.events[-1])
    assert d.advance_rollouts(10**12) == []
    # a rollout set on a deployment already serving starts at its first step, now
    started = d.update(tenant, "web-weights", rollout={"steps": [40, 100], "interval_s": 5})
    assert [r.weight for r in started.routes] == [60.0, 40.0] and started.rollout is not None


def test_servers_racing_for_a_step_take_it_once(platform: Platform, tenant: str) -> None:
    """Eight services on one database (the servers of a cluster) see the same step due at the
    same moment: the writes are conditional on the revision read, so one lands and the others
    find the step taken."""
    servers = [Deployments(platform.db, platform.registry) for _ in range(8)]
    dep = platform.deployments.create(tenant, "web", routes=TWO_ROUTES, rollout={"steps": [10, 50], "interval_s": 1})
    assert dep.rollout is not None
    due = dep.rollout.since + 1
    start = threading.Barrier(len(servers))

    def race(server: Deployments) -> int:
        start.wait()
        return len(server.advance_rollouts(due))

    with ThreadPoolExecutor(len(servers)) as pool:
        taken = sum(pool.map(race, servers))
    assert taken == 1
    events = [e["kind"] for e in platform.deployments.get(tenant, "web").events]
    assert events == ["created", "rollout_step"]
