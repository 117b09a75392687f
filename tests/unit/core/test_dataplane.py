"""The data plane and the model manager without HTTP: resolution, validation, shared loads,
inference off the event loop, unload on delete, metrics."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from modelyard.config import Settings
from modelyard.core.inference import validate_inputs
from modelyard.core.queue_gates import GATE_BUNDLE, QueueGate, QueueGates
from modelyard.core.platform import Platform
from modelyard.core.principal import Principal
from modelyard.core.scheduling import request_priority, request_timeout, routing_key, scheduling
from modelyard.engine.manager import ServingOptions, parse_serving
from modelyard.errors import (
    InvalidInput, ModelNotFound, PermissionDenied, QueueFull, RateLimited, ValidationFailed, VersionNotFound,
)
from modelyard.store.tables import ModelRow
from modelyard.tensors import InferenceRequest, RequestedOutput, Tensor, TensorSpec
from tests.integration.onnx_models import add_model, identity_model, softmax_model
from tests.support.queues import FullQueue


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    p = Platform.open(Settings(home=tmp_path / "home", builtin_models=False, grpc_enabled=False))
    yield p
    asyncio.run(p.aclose())


@pytest.fixture
def tenant(platform: Platform) -> str:
    return platform.keys.ensure_default_tenant()


def _principal(tenant: str, role: str = "developer", scopes: tuple[str, ...] = ()) -> Principal:
    return Principal(key_id="k", tenant_id=tenant, tenant_name="default", role=role, scopes=scopes)


def _push(platform: Platform, tenant: str, name: str = "add", add: float = 1.0, **kw):
    staged = platform.artifacts.stage_bytes(add_model(add))
    return platform.registry.register_version(tenant_id=tenant, model_name=name, staged=staged, **kw)


def _req(x: np.ndarray, outputs: list[str] | None = None, **parameters: object) -> InferenceRequest:
    return InferenceRequest(
        inputs=[Tensor.from_array("x", x)],
        outputs=[RequestedOutput(n) for n in outputs] if outputs else None,
        id="r1",
        parameters=dict(parameters),
    )


def test_validate_inputs_names_the_problem() -> None:
    specs = [TensorSpec("x", "FP32", (-1, 3))]
    validate_inputs(specs, [Tensor.from_array("x", np.zeros((5, 3), np.float32))])
    cases = [
        ([Tensor.from_array("y", np.zeros((1, 3), np.float32))], "'y'"),
        ([Tensor.from_array("x", np.zeros((1, 3), np.int32))], "INT32"),
        ([Tensor.from_array("x", np.zeros((1, 4), np.float32))], "[1, 4]"),
        ([Tensor.from_array("x", np.zeros((3,), np.float32))], "[3]"),
        ([], "missing"),
    ]
    for tensors, words in cases:
        with pytest.raises(InvalidInput, match=words.replace("[", r"\[").replace("]", r"\]")):
            validate_inputs(specs, tensors)


def test_infer_resolves_and_matches(platform: Platform, tenant: str) -> None:
    _push(platform, tenant, add=1.0)
    _push(platform, tenant, add=5.0, stage="production")
    _push(platform, tenant, add=9.0)
    who = _principal(tenant)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)

    async def run() -> None:
        resp = await platform.dataplane.infer(who, "add", None, _req(x))
        assert resp.model_version == "2" and resp.id == "r1"
        assert [o.name for o in resp.outputs] == ["y", "z"]
        np.testing.assert_array_equal(resp.outputs[0].data, x + 5)
        resp = await platform.dataplane.infer(who, "add", "3", _req(x, ["z"]))
        assert [o.name for o in resp.outputs] == ["z"]
        np.testing.assert_array_equal(resp.outputs[0].data, x * 2)
        with pytest.raises(InvalidInput, match="nope"):
            await platform.dataplane.infer(who, "add", None, _req(x, ["nope"]))
        with pytest.raises(ModelNotFound):
            await platform.dataplane.infer(who, "other", None, _req(x))
        with pytest.raises(VersionNotFound):
            await platform.dataplane.infer(who, "add", "7", _req(x))
        with pytest.raises(ModelNotFound):  # outside the key's scopes looks like not found
            await platform.dataplane.infer(_principal(tenant, scopes=("else",)), "add", None, _req(x))
        with pytest.raises(ModelNotFound):  # another tenant's model is not visible
            await platform.dataplane.infer(_principal("t-2"), "add", None, _req(x))
        meta = await platform.dataplane.model_metadata(who, "add", None)
        assert meta["versions"] == ["2"] and meta["inputs"][0]["name"] == "x"

    asyncio.run(run())
    text = platform.metrics.render().decode()
    assert 'modelyard_inference_requests_total{model="add",protocol="rest",tenant="default",version="2"} 2.0' in text
    assert 'modelyard_inference_errors_total{code="invalid_input",model="add",tenant="default",version="2"} 1.0' in text


def test_permission_is_checked(platform: Platform, tenant: str) -> None:
    _push(platform, tenant)
    nobody = Principal(key_id="k", tenant_id=tenant, tenant_name="d", role="nobody")
    x = np.zeros((1, 3), np.float32)

    async def run() -> None:
        with pytest.raises(PermissionDenied):
            await platform.dataplane.infer(nobody, "add", None, _req(x))
        await platform.dataplane.infer(_principal(tenant), "add", None, _req(x))  # now answered from memory
        with pytest.raises(PermissionDenied):
            await platform.dataplane.infer(nobody, "add", None, _req(x))

    asyncio.run(run())


def test_concurrent_first_requests_share_one_load(platform: Platform, tenant: str) -> None:
    _push(platform, tenant)
    who = _principal(tenant)
    x = np.ones((1, 3), np.float32)

    async def run() -> list:
        return await asyncio.gather(*(platform.dataplane.infer(who, "add", None, _req(x)) for _ in range(16)))

    results = asyncio.run(run())
    assert all(np.array_equal(r.outputs[0].data, x + 1) for r in results)
    text = platform.metrics.render().decode()
    assert 'modelyard_model_loads_total{model="add",tenant="default",version="1"} 1.0' in text
    assert 'modelyard_model_load_seconds_count{model="add",tenant="default",version="1"} 1.0' in text
    assert len(platform.manager.loaded()) == 1


def test_inference_runs_off_the_event_loop(platform: Platform, tenant: str) -> None:
    info = _push(platform, tenant)
    threads: list[str] = []
    source = platform.dataplane.source(info)

    async def run() -> None:
        model = await platform.manager.acquire(source)
        original = model.runtime.predict

        def spy(inputs, names):  # type: ignore[no-untyped-def]
            threads.append(threading.current_thread().name)
            return original(inputs, names)

        model.runtime.predict = spy  # type: ignore[method-assign]
        await platform.manager.predict(source, {"x": np.ones((1, 3), np.float32)}, None)

    asyncio.run(run())
    assert threads and threads[0] != threading.main_thread().name


def test_delete_unloads(platform: Platform, tenant: str) -> None:
    info = _push(platform, tenant)
    asyncio.run(platform.dataplane.model_ready(_principal(tenant), "add", None))  # eager load
    assert platform.manager.is_loaded(info.key)
    platform.registry.delete_model(tenant, "add")
    assert not platform.manager.is_loaded(info.key)
    assert platform.manager.loaded() == []


def test_failed_load_is_not_cached(platform: Platform, tenant: str) -> None:
    info = _push(platform, tenant)
    path = platform.artifacts.path_for(info.sha256)
    good = path.read_bytes()
    path.write_bytes(good[:-10])  # corrupt on disk: the hash check refuses it
    who = _principal(tenant)
    x = np.ones((1, 3), np.float32)
    with pytest.raises(Exception) as exc:
        asyncio.run(platform.dataplane.infer(who, "add", None, _req(x)))
    assert "hash" not in str(getattr(exc.value, "public_message", ""))  # 5xx: no internals
    path.write_bytes(good)
    resp = asyncio.run(platform.dataplane.infer(who, "add", None, _req(x)))
    np.testing.assert_array_equal(resp.outputs[0].data, x + 1)


def test_a_queue_gate_reuses_its_answer_and_counts_every_refusal(platform: Platform, tenant: str) -> None:
    """A flood is answered with one error object per bundle of refusals; every refusal is
    counted (metrics, usage) once the bundle fills, the queue has room, or the gate is flushed."""
    info = _push(platform, tenant)
    queue = FullQueue()
    gate = QueueGate(platform.dataplane, _principal(tenant), info, queue)
    flood = GATE_BUNDLE * 2 + 5
    answers = [gate.refusal() for _ in range(flood)]
    assert all(isinstance(a, QueueFull) and a.retry_after == 0.5 for a in answers)
    assert len({id(a) for a in answers}) == queue.made == 3, "one error object per bundle"
    assert queue.counted == 1 + GATE_BUNDLE * 2, "the first refusal at once, then each full bundle"
    queue.full = False
    assert gate.refusal() is None
    assert queue.counted == flood, "the rest is counted when the queue has room"
    errors = platform.metrics.registry.get_sample_value(
        "modelyard_inference_errors_total", {"tenant": "default", "model": "add", "version": "1", "code": "queue_full"}
    )
    assert errors == flood
    (usage,) = platform.usage.query(tenant_id=tenant, model="add")
    assert (usage.requests, usage.errors) == (flood, flood)
    queue.full = True
    gate.refusal()
    gate.flush()
    gate.flush()
    assert queue.counted == flood + 1


def _refusal(table: QueueGates, key: str, now: float) -> object:
    gate = table.get(key, now)
    return None if gate is None else gate.refusal()


def test_a_gate_leaving_the_table_counts_its_pending_refusals(platform: Platform, tenant: str) -> None:
    """Expired, replaced or cleared for room: no refusal a gate answered goes uncounted."""
    info = _push(platform, tenant)
    who = _principal(tenant)
    table = QueueGates(ttl_s=1.0, max_entries=2)
    queues = [FullQueue() for _ in range(4)]
    gates = [QueueGate(platform.dataplane, who, info, q) for q in queues]

    table.put("a", gates[0], now=0.0)
    assert all(_refusal(table, "a", now=0.5) is not None for _ in range(3))
    assert _refusal(table, "b", now=0.5) is None, "no gate for that caller"
    assert _refusal(table, "a", now=1.6) is None, "expired"
    assert queues[0].counted == 3 and len(table) == 0

    table.put("a", gates[1], now=2.0)
    _refusal(table, "a", now=2.1)
    _refusal(table, "a", now=2.1)
    table.put("a", gates[2], now=2.2)  # replaced
    assert queues[1].counted == 2
    assert _refusal(table, "a", now=2.3) is not None

    table.put("b", gates[3], now=2.4)
    _refusal(table, "b", now=2.4)
    table.put("c", gates[3], now=2.5)  # the table is full: every gate in it is dropped
    assert (queues[2].counted, queues[3].counted) == (1, 1)
    assert len(table) == 1


def test_a_gate_renewed_while_its_caller_finds_no_room_outlives_its_ttl(platform: Platform, tenant: str) -> None:
    """A flood held below the queue's limit is refused no more, so no new gate is put; renewing
    keeps its gate (and the holding) while its connections keep finding no room."""
    info = _push(platform, tenant)
    table = QueueGates(ttl_s=1.0)
    gate = QueueGate(platform.dataplane, _principal(tenant), info, FullQueue())
    table.put("a", gate, now=0.0)
    for now in (0.8, 1.6, 2.4):
        gate.seen = now  # what a transport does when the caller finds no room again
        assert table.get("a", now + 0.5) is gate, f"renewed at {now}"
    assert table.get("a", 3.5) is None, "not renewed for over its ttl: gone"
    assert len(table) == 0


def test_the_key_service_remembers_only_keys_it_authenticated_and_not_revoked_since(
    platform: Platform, tenant: str
) -> None:
    """What an overload gate asks before it answers a caller from memory."""
    from modelyard.core.keys import bearer_token
    from modelyard.errors import Unauthenticated

    keys = platform.keys
    info, secret = keys.create(tenant_id=tenant, role="inference")
    for value in (None, "", secret):
        assert not keys.remembers_key(value), f"{value!r}: none, or never authenticated"
    assert keys.known(secret) is None and keys.known(None) is None
    principal = asyncio.run(keys.authenticate_async(secret))
    assert keys.remembers_key(bearer_token(f"Bearer {secret}")) and keys.remembers_key(bearer_token(f"bearer  {secret} "))
    assert keys.known(secret) == principal, "the callback path's authentication, from memory"
    keys.revoke(tenant, info.id)
    assert not keys.remembers_key(secret), "a revocation forgets it"
    assert keys.known(secret) is None
    assert bearer_token(None) is None and bearer_token("Bearer  k ") == "k"
    with pytest.raises(Unauthenticated, match="malformed authorization metadata"):
        bearer_token("Basic abc", source="authorization metadata")


def test_start_queues_what_memory_answers_and_finishes_as_infer_does(platform: Platform, tenant: str) -> None:
    """``DataPlane.start`` (the REST callback path) queues a request without a coroutine only
    once its model is resolved and loaded, answers what ``infer`` answers, counts the same, and
    a cancelled one drops its work and leaves nothing in flight."""
    _push(platform, tenant, add=5.0, stage="production")
    who = _principal(tenant)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    plane = platform.dataplane

    async def run() -> None:
        assert plane.start(who, "add", None, _req(x)) is None, "not resolved yet: await infer"
        expected = await plane.infer(who, "add", None, _req(x))  # resolves and loads
        pending = plane.start(who, "add", None, _req(x, ["z"]))
        assert pending is not None and platform.manager.in_flight == 1
        await asyncio.wait_for(asyncio.shield(pending.future), 10)
        resp = pending.finish()
        assert platform.manager.in_flight == 0
        assert resp.model_version == expected.model_version and [o.name for o in resp.outputs] == ["z"]
        np.testing.assert_array_equal(resp.outputs[0].data, x * 2)
        with pytest.raises(InvalidInput, match="nope"):
            plane.start(who, "add", None, _req(x, ["nope"]))
        with pytest.raises(ModelNotFound):  # the caller's scopes are checked from memory too
            plane.start(_principal(tenant, scopes=("else",)), "add", None, _req(x))
        cancelled = plane.start(who, "add", None, _req(x))
        assert cancelled is not None
        cancelled.cancel()  # the caller went away before its batch was taken
        await asyncio.sleep(0.05)
        assert cancelled.future.cancelled()
        with pytest.raises(asyncio.CancelledError):
            cancelled.finish()
        assert platform.manager.in_flight == 0

    asyncio.run(run())
    text = platform.metrics.render().decode()
    assert 'modelyard_inference_requests_total{model="add",protocol="rest",tenant="default",version="1"} 4.0' in text
    assert 'modelyard_inference_errors_total{code="invalid_input",model="add",tenant="default",version="1"} 1.0' in text
    assert 'modelyard_inference_errors_total{code="cancelled",model="add",tenant="default",version="1"} 1.0' in text


def test_start_refuses_in_infers_order_the_rate_limit_before_the_scope(platform: Platform, tenant: str) -> None:
    """A caller both over its rate limit and outside the model's scopes gets 429 from the
    callback path, as from ``infer``; with a token left, 404."""
    _push(platform, tenant, add=1.0, stage="production")
    x = np.zeros((1, 3), np.float32)
    plane = platform.dataplane
    outside = Principal(key_id="s", tenant_id=tenant, tenant_name="default", role="developer",
                        scopes=("else",), rate_limit=0.001)

    async def run() -> None:
        await plane.infer(_principal(tenant), "add", None, _req(x))  # resolved and loaded
        with pytest.raises(ModelNotFound):  # the bucket's one token taken, then the scope
            plane.start(outside, "add", None, _req(x))
        with pytest.raises(RateLimited):
            plane.start(outside, "add", None, _req(x))
        with pytest.raises(RateLimited):
            await plane.infer(outside, "add", None, _req(x))
        assert platform.manager.in_flight == 0

    asyncio.run(run())


def test_start_leaves_a_tenant_with_a_daily_quota_to_infer_without_taking_a_token(
    platform: Platform, tenant: str
) -> None:
    """A daily quota is counted in the database, which the callback path does not do: ``start``
    answers ``None`` before the key's rate limit is applied, so ``infer`` applies it once."""
    from modelyard.core.tenants import Quotas

    limited = platform.tenants.create("limited", quotas=Quotas(requests_per_day=100))
    _push(platform, limited.id, add=1.0, stage="production")
    who = Principal(key_id="k2", tenant_id=limited.id, tenant_name="limited", role="developer", rate_limit=0.001)
    x = np.zeros((1, 3), np.float32)
    plane = platform.dataplane

    async def run() -> None:
        await plane.infer(who, "add", None, _req(x))  # the bucket's one token; quotas now known
        assert plane.start(who, "add", None, _req(x)) is None
        with pytest.raises(RateLimited):
            await plane.infer(who, "add", None, _req(x))

    asyncio.run(run())


def test_restoring_pins_loads_the_pinned_and_survives_one_that_cannot_load(platform: Platform, tenant: str) -> None:
    """What a starting server does before it answers (``Residency.restore_pins``): a pinned
    version whose artifact went bad is logged and skipped, never a failed start."""
    good, bad = _push(platform, tenant, "good"), _push(platform, tenant, "bad", add=7.0)
    _push(platform, tenant, "unpinned", add=3.0)
    for info in (good, bad):
        platform.registry.set_pinned(tenant, info.model_name, info.version, True)
    platform.artifacts.verified_path(bad.sha256).write_bytes(b"corrupted")

    async def run() -> int:
        return await platform.residency.restore_pins()

    assert asyncio.run(run()) == 1
    manager = platform.manager
    assert manager.is_loaded(good.key) and manager.is_pinned(good.key)
    assert not manager.is_loaded(bad.key) and manager.is_pinned(bad.key)  # left for its first request
    assert not any(m.source.name == "unpinned" for m in manager.loaded())


def test_a_pin_made_here_while_the_records_are_read_wins(platform: Platform, tenant: str) -> None:
    """``Residency.sync_pins`` reads the records in a thread; a pin made on this server in the
    meantime must not be undone by the round's older view."""
    info = _push(platform, tenant, "raced")
    residency, registry, manager = platform.residency, platform.registry, platform.manager
    admin = Principal(key_id="k", tenant_id=tenant, tenant_name="default", role="admin")
    read = registry.pinned_versions

    async def pin_here() -> None:
        await residency.load(admin, "raced", "1", pin=True)

    async def sync(during_read: bool) -> tuple[int, int]:
        loop = asyncio.get_running_loop()

        def read_then_pin_here() -> list:  # type: ignore[type-arg]
            seen = read()  # the round's view: unpinned by another server
            asyncio.run_coroutine_threadsafe(pin_here(), loop).result()  # ...and pinned here again since
            return seen

        if during_read:
            registry.pinned_versions = read_then_pin_here  # type: ignore[method-assign]
        try:
            return await residency.sync_pins()
        finally:
            registry.pinned_versions = read  # type: ignore[method-assign]

    asyncio.run(pin_here())
    registry.set_pinned(tenant, "raced", 1, False)  # another server unpins it
    assert asyncio.run(sync(during_read=True)) == (0, 0)  # the round leaves it be
    assert manager.is_pinned(info.key) and manager.is_loaded(info.key)
    assert asyncio.run(sync(during_read=False)) == (0, 0)  # the records say what this server holds

    registry.set_pinned(tenant, "raced", 1, False)  # unpinned elsewhere, nothing here meanwhile
    assert asyncio.run(sync(during_read=False)) == (0, 1)
    assert not manager.is_pinned(info.key) and manager.is_loaded(info.key)  # evictable, still loaded
    registry.set_pinned(tenant, "raced", 1, True)  # and pinned elsewhere again
    assert asyncio.run(sync(during_read=False)) == (1, 0)
    assert manager.is_pinned(info.key)


def test_an_unpin_made_here_while_a_round_loads_wins(platform: Platform, tenant: str) -> None:
    """A round pins every version pinned elsewhere before it loads the first: one unpinned here
    while another one loads is neither loaded nor pinned again by that round."""
    first, second = _push(platform, tenant, "first"), _push(platform, tenant, "second", add=2.0)
    residency, registry, manager, plane = platform.residency, platform.registry, platform.manager, platform.dataplane
    admin = Principal(key_id="k", tenant_id=tenant, tenant_name="default", role="admin")
    for info in (first, second):
        registry.set_pinned(tenant, info.model_name, info.version, True)  # pinned on another server
    load = plane.load

    async def load_then_unload_the_other(info, deployment=None):  # type: ignore[no-untyped-def]
        await load(info, deployment)
        if info.key == first.key:
            await residency.unload(admin, "second", "1")  # meanwhile, here

    async def run() -> tuple[int, int]:
        plane.load = load_then_unload_the_other  # type: ignore[method-assign]
        try:
            return await residency.sync_pins()
        finally:
            plane.load = load  # type: ignore[method-assign]

    assert asyncio.run(run()) == (1, 0)
    assert manager.is_pinned(first.key) and manager.is_loaded(first.key)
    assert not manager.is_pinned(second.key) and not manager.is_loaded(second.key)
    assert [info.model_name for info in registry.pinned_versions()] == ["first"]


def test_a_requests_timeout_parameter_shortens_its_deadline_and_never_extends_it() -> None:
    x = np.zeros((1, 3), np.float32)
    thirty, unbounded = 30.0, None
    assert request_timeout(_req(x), thirty) == 30.0
    assert request_timeout(_req(x, timeout=0), thirty) == 30.0  # Triton's "the model's own"
    assert request_timeout(_req(x, timeout=250_000), thirty) == 0.25  # microseconds
    assert request_timeout(_req(x, timeout=60_000_000), thirty) == 30.0  # capped at the operator's
    assert request_timeout(_req(x, timeout=60_000_000), unbounded) == 60.0
    assert request_timeout(_req(x), unbounded) is None
    assert request_timeout(_req(x, binary_data_output=True), thirty) == 30.0  # other parameters: no matter
    for bad in (-1, 1.5, 0.0, "100", True, [1]):
        with pytest.raises(InvalidInput, match="'timeout' must be a whole number of microseconds") as info:
            request_timeout(_req(x, timeout=bad), thirty)
        assert info.value.details == {"field": "parameters.timeout"}


def test_both_paths_queue_a_request_with_its_own_deadline(platform: Platform, tenant: str) -> None:
    """``start`` (callbacks) and ``infer`` (awaited) give the batcher the request's deadline; a
    bad ``timeout`` is refused before anything is queued, and counted as a bad input."""
    _push(platform, tenant, add=5.0, stage="production")
    who = _principal(tenant)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    plane = platform.dataplane

    async def run() -> None:
        await plane.infer(who, "add", None, _req(x, timeout=5_000_000))  # resolves and loads
        loop = asyncio.get_running_loop()
        pending = plane.start(who, "add", None, _req(x, timeout=5_000_000))
        assert pending is not None
        queued = pending._queued  # noqa: SLF001 (what the batcher was given)
        assert queued.deadline is not None and abs(queued.deadline - (loop.time() + 5.0)) < 0.5
        await asyncio.wait_for(asyncio.shield(pending.future), 10)
        pending.finish()
        plain = plane.start(who, "add", None, _req(x))
        assert plain is not None and plain._queued.deadline is not None  # noqa: SLF001
        assert plain._queued.deadline - loop.time() > 25  # noqa: SLF001 (the default 30 s)
        await asyncio.wait_for(asyncio.shield(plain.future), 10)
        plain.finish()
        for bad in ("soon", -5):
            with pytest.raises(InvalidInput, match="'timeout'"):
                plane.start(who, "add", None, _req(x, timeout=bad))
            with pytest.raises(InvalidInput, match="'timeout'"):
                await plane.infer(who, "add", None, _req(x, timeout=bad))
        assert platform.manager.in_flight == 0

    asyncio.run(run())
    text = platform.metrics.render().decode()
    assert 'modelyard_inference_errors_total{code="invalid_input",model="add",tenant="default",version="1"} 4.0' in text


def test_a_requests_priority_parameter_is_a_whole_number_at_least_0() -> None:
    x = np.zeros((1, 3), np.float32)
    free = ServingOptions()
    assert request_priority(_req(x), free) == 0 == free.default_priority
    assert [request_priority(_req(x, priority=p), free) for p in (0, 1, 7, 2**64 - 1)] == [0, 1, 7, 2**64 - 1]
    for bad in (-1, 2**64, 1.0, "1", True):
        with pytest.raises(InvalidInput, match="'priority' must be a whole number") as info:
            request_priority(_req(x, priority=bad), free)
        assert info.value.details == {"field": "parameters.priority"}


def test_a_routing_key_is_text_of_1_to_256_characters() -> None:
    x = np.zeros((1, 3), np.float32)
    assert routing_key(_req(x, routing_key="user-42")) == "user-42"
    assert routing_key(_req(x)) is None
    assert scheduling(_req(x, routing_key="k" * 256), ServingOptions()) == (None, 0, None)
    for bad in ("", "k" * 257, 42, None, ["a"]):
        assert routing_key(_req(x, routing_key=bad)) is None  # picked at random; refused below
        with pytest.raises(InvalidInput, match="'routing_key' must be text") as info:
            scheduling(_req(x, routing_key=bad), ServingOptions())
        assert info.value.details == {"field": "parameters.routing_key"}


def test_declared_priority_levels_map_none_and_those_past_them_to_the_default_level() -> None:
    """As in Triton: with ``priority_levels`` N, a request's level is 1..N; 0, none or past N is
    the default level (the lowest, N, unless set)."""
    x = np.zeros((1, 3), np.float32)
    levels = ServingOptions(priority_levels=3, default_priority_level=2)
    assert [request_priority(_req(x, priority=p), levels) for p in (0, 1, 3, 4, 2**64 - 1)] == [2, 1, 3, 2, 2]
    assert request_priority(_req(x), levels) == 2 == levels.default_priority
    lowest = ServingOptions(priority_levels=3)
    assert (request_priority(_req(x, priority=9), lowest), lowest.default_priority) == (3, 3)
    with pytest.raises(InvalidInput, match="'priority'"):
        request_priority(_req(x, priority=-1), levels)  # still checked


@pytest.mark.parametrize("settings", [
    {"priority_levels": -1}, {"priority_levels": 2**64}, {"priority_levels": True}, {"priority_levels": 2.0},
    {"default_priority_level": -1}, {"default_priority_level": "1"},
    {"priority_levels": 2, "default_priority_level": 3},  # past the levels declared beside it
])
def test_priority_level_settings_out_of_range_are_refused_when_written(settings: dict) -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_serving(settings, where="tags.serving")
    assert info.value.details == {"field": next(reversed(settings))}


def test_a_levels_queue_policy_gives_its_requests_their_bound_and_deadline() -> None:
    """``priority_queue_policy``: a level's own queue bound goes with its requests, and its
    deadline replaces the version's; a request's ``timeout`` still only shortens it; the fast
    path (no parameters) takes the default level's policy."""
    x = np.zeros((1, 3), np.float32)
    options = ServingOptions(timeout_s=30.0, priority_levels=2, default_priority_level=2).merged(
        parse_serving({"priority_queue_policy": {"2": {"max_queue_size": 8, "timeout_s": 2}}})
    )
    assert scheduling(_req(x), options) == (2, 2, 8)  # the default level, and its policy
    assert scheduling(_req(x, priority=1), options) == (30.0, 1, None)  # level 1 has none of its own
    assert scheduling(_req(x, priority=2, timeout=500_000), options) == (0.5, 2, 8)
    assert scheduling(_req(x, priority=2, timeout=9_000_000), options) == (2, 2, 8)  # never longer
    assert scheduling(_req(x), ServingOptions(timeout_s=30.0)) == (30.0, 0, None)


@pytest.mark.parametrize("policy, field", [
    ([1], "priority_queue_policy"),
    ({"0": {"max_queue_size": 1}}, "priority_queue_policy.0"),
    ({"low": {"max_queue_size": 1}}, "priority_queue_policy.low"),
    ({"01": {"max_queue_size": 1}}, "priority_queue_policy.01"),
    ({"2": {}}, "priority_queue_policy.2"),
    ({"2": {"max_queue_size": 0}}, "priority_queue_policy.2.max_queue_size"),
    ({"2": {"max_queue_size": True}}, "priority_queue_policy.2.max_queue_size"),
    ({"2": {"timeout_s": 0}}, "priority_queue_policy.2.timeout_s"),
    ({"2": {"timeout_s": "5"}}, "priority_queue_policy.2.timeout_s"),
    ({"2": {"timeout_action": "DELAY"}}, "priority_queue_policy.2.timeout_action"),
])
def test_a_queue_policy_that_is_not_one_is_refused_naming_the_field(policy: object, field: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_serving({"priority_queue_policy": policy})
    assert info.value.details == {"field": field}


def test_a_queue_policys_levels_are_among_those_declared_beside_it() -> None:
    parse_serving({"priority_queue_policy": {"3": {"max_queue_size": 4}}})  # levels may come from another layer
    with pytest.raises(ValidationFailed, match="1 to 2, the priority_levels declared beside it") as info:
        parse_serving({"priority_levels": 2, "priority_queue_policy": {"3": {"max_queue_size": 4}}})
    assert info.value.details == {"field": "priority_queue_policy.3"}


def test_a_default_level_past_the_levels_of_another_layer_is_the_lowest() -> None:
    """Layers of settings are checked apart (a version's default level may come with its model's
    levels), so their merge never fails: a default past the levels is the lowest level."""
    model = ServingOptions().merged(parse_serving({"priority_levels": 4}))
    assert model.merged(parse_serving({"default_priority_level": 2})).default_priority == 2
    assert model.merged(parse_serving({"default_priority_level": 9})).default_priority == 4
    assert ServingOptions(default_priority_level=2).default_priority == 0  # no levels: after every level


def test_an_output_asked_as_classes_gets_a_trained_versions_labels(platform: Platform, tenant: str) -> None:
    """A version ModelYard trained knows its ``probabilities`` classes (its lineage): an output
    asked for with ``classification`` gets ``value:index:label``; the raw outputs otherwise."""
    staged = platform.artifacts.stage_bytes(softmax_model(3))
    platform.registry.register_version(tenant_id=tenant, model_name="animals", staged=staged, stage="production",
                                       lineage={"source": "training", "classes": ["cat", "dog", "eel"]})
    who = _principal(tenant)
    x = np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]], np.float32)
    request = InferenceRequest(inputs=[Tensor.from_array("x", x)],
                               outputs=[RequestedOutput("probabilities", {"classification": 2})])

    async def run() -> list:
        resp = await platform.dataplane.infer(who, "animals", None, request)
        (out,) = resp.outputs
        assert (out.datatype, out.shape) == ("BYTES", (2, 2))
        return [[v.decode().split(":", 1)[1] for v in row] for row in out.data]

    assert asyncio.run(run()) == [["1:dog", "2:eel"], ["0:cat", "1:dog"]]


def test_a_pushed_version_names_its_classes_with_a_labels_tag(platform: Platform, tenant: str) -> None:
    """A version pushed from elsewhere names its classes with its ``labels`` tag (or its model's):
    checked against its outputs when written, a bad one refused with nothing registered."""
    registry = platform.registry

    def push(tags: dict) -> None:
        registry.register_version(tenant_id=tenant, model_name="animals", stage="production", tags=tags,
                                  staged=platform.artifacts.stage_bytes(softmax_model(3)))

    with pytest.raises(ValidationFailed, match="has 3 classes per row") as info:
        push({"labels": {"probabilities": ["cat", "dog"]}})
    assert info.value.details == {"field": "tags.labels.probabilities"}
    with pytest.raises(ModelNotFound):
        registry.list_versions(tenant, "animals")  # nothing registered, not even the model
    push({"labels": {"probabilities": ["cat", "dog", "eel"]}})
    request = InferenceRequest(inputs=[Tensor.from_array("x", np.array([[0.0, 2.0, 1.0]], np.float32))],
                               outputs=[RequestedOutput("probabilities", {"classification": 2})])

    def classes() -> list:
        (out,) = asyncio.run(platform.dataplane.infer(_principal(tenant), "animals", None, request)).outputs
        return [v.decode().split(":", 1)[1] for v in out.data[0]]

    assert classes() == ["1:dog", "2:eel"]
    registry.update_model(tenant, "animals", tags={"labels": {"probabilities": ["Cat", "Dog", "Eel"]}})
    assert classes() == ["1:dog", "2:eel"]  # the version's own labels go over its model's
    with pytest.raises(ValidationFailed, match="no output 'label'"):
        registry.update_version(tenant, "animals", 1, tags={"labels": {"label": ["a"]}})
    assert registry.get_version(tenant, "animals", 1).tags["labels"]["probabilities"][0] == "cat"  # unchanged
    registry.update_version(tenant, "animals", 1, tags={})
    assert classes() == ["1:Dog", "2:Eel"]


def test_a_bytes_output_cannot_be_asked_as_classes(platform: Platform, tenant: str) -> None:
    platform.registry.register_version(tenant_id=tenant, model_name="echo", stage="production",
                                       staged=platform.artifacts.stage_bytes(identity_model("BYTES", ("n", 2))))
    x = np.array([[b"a", b"b"]], dtype=object)
    request = InferenceRequest(inputs=[Tensor.from_array("x", x)], outputs=[RequestedOutput("y", {"classification": 1})])
    with pytest.raises(InvalidInput, match="'y' is BYTES") as info:
        asyncio.run(platform.dataplane.infer(_principal(tenant), "echo", None, request))
    assert info.value.details == {"field": "outputs.y.parameters.classification"}


def test_a_labels_tag_written_before_labels_were_checked_breaks_nothing(platform: Platform, tenant: str) -> None:
    """Tags were free-form before ``labels`` was checked: a model whose old ``labels`` tag is a
    string still serves, with no labels, and its tag is refused only when written again."""
    registry = platform.registry
    registry.register_version(tenant_id=tenant, model_name="legacy", stage="production",
                              staged=platform.artifacts.stage_bytes(softmax_model(3)))
    with platform.db.transaction() as s:  # as an older server left it
        row = s.scalar(select(ModelRow).where(ModelRow.tenant_id == tenant, ModelRow.name == "legacy"))
        row.tags = {"labels": "cat,dog,eel"}
    registry.update_version(tenant, "legacy", 1, description="re-read")  # the resolve cache dropped
    request = InferenceRequest(inputs=[Tensor.from_array("x", np.array([[0.0, 2.0, 1.0]], np.float32))],
                               outputs=[RequestedOutput("probabilities", {"classification": 1})])
    (out,) = asyncio.run(platform.dataplane.infer(_principal(tenant), "legacy", None, request)).outputs
    assert out.data[0][0].decode().endswith(":1")  # no label
    with pytest.raises(ValidationFailed) as info:
        registry.update_model(tenant, "legacy", tags={"labels": "cat,dog,eel", "team": "a"})
    assert info.value.details == {"field": "tags.labels"}
