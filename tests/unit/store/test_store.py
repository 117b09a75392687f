"""The metadata store, the artifact store and the registry on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import text

from modelyard.core.keys import KeyService
from modelyard.core.pages import PageRequest
from modelyard.core.registry import Registry
from modelyard.errors import (
    InvalidArtifact,
    ModelNotFound,
    PayloadTooLarge,
    ValidationFailed,
    VersionNotFound,
)
from modelyard.store.artifacts import ArtifactStore, CorruptArtifact
from modelyard.store.db import Database
from tests.integration.onnx_models import add_model, checker_failing_model


@pytest.fixture
def db(database_url: str) -> Database:
    database = Database(database_url)
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


@pytest.fixture
def tenant(db: Database) -> str:
    return KeyService(db).ensure_default_tenant()


@pytest.fixture
def registry(db: Database, store: ArtifactStore) -> Registry:
    return Registry(db, store, resolve_ttl_s=0.0)


def _blobs(store: ArtifactStore) -> list[str]:
    return sorted(store.all_blobs())


def _staged_files(store: ArtifactStore) -> list[Path]:
    return list(store.tmp.iterdir())


def push(registry: Registry, store: ArtifactStore, tenant: str, name: str = "m", data: bytes | None = None, **kw):
    staged = store.stage_bytes(data if data is not None else add_model())
    return registry.register_version(tenant_id=tenant, model_name=name, staged=staged, **kw)


# -- migrations ----------------------------------------------------------------------------
def test_migrate_creates_tables_and_is_idempotent(db: Database) -> None:
    db.migrate()  # a second run changes nothing and does not fail
    names = set(sa_inspect(db.engine).get_table_names())
    assert {"tenants", "api_keys", "models", "model_versions", "alembic_version"} <= names
    with db.read() as s:
        assert s.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'w.db'}")
    database.migrate()
    with database.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    database.dispose()


# -- artifact store ------------------------------------------------------------------------
def test_identical_uploads_are_stored_once(store: ArtifactStore) -> None:
    a = store.stage_bytes(b"same bytes")
    b = store.stage_bytes(b"same bytes")
    assert a.sha256 == b.sha256 and a.size == 10
    pa, pb = store.commit(a), store.commit(b)
    assert pa == pb and pa.read_bytes() == b"same bytes"
    assert _blobs(store) == [a.sha256]
    assert _staged_files(store) == []


def test_stage_stream_stops_at_the_limit_and_leaves_nothing(store: ArtifactStore) -> None:
    consumed = []

    def chunks():
        for i in range(100):
            consumed.append(i)
            yield b"x" * 1000

    with pytest.raises(PayloadTooLarge):
        store.stage_stream(chunks(), max_bytes=2500)
    assert len(consumed) == 3  # read no further than the chunk that crossed the limit
    assert _staged_files(store) == []


async def _agen(parts):
    for p in parts:
        yield p


async def test_stage_async_over_limit_leaves_nothing(store: ArtifactStore) -> None:
    with pytest.raises(PayloadTooLarge):
        await store.stage_async(_agen([b"a" * 600, b"b" * 600]), max_bytes=1000)
    assert _staged_files(store) == []
    staged = await store.stage_async(_agen([b"a" * 600, b"b" * 400]), max_bytes=1000)
    assert staged.size == 1000


def test_verified_path_detects_corruption_and_missing_files(store: ArtifactStore) -> None:
    staged = store.stage_bytes(b"payload")
    path = store.commit(staged)
    assert store.verified_path(staged.sha256) == path
    path.write_bytes(b"tampered")  # different size -> re-verified
    with pytest.raises(CorruptArtifact):
        store.verified_path(staged.sha256)
    path.unlink()
    with pytest.raises(CorruptArtifact):
        store.verified_path(staged.sha256)


def test_gc_removes_old_orphans_and_stale_temp_files_only(store: ArtifactStore) -> None:
    keep = store.commit(store.stage_bytes(b"keep"))
    orphan = store.commit(store.stage_bytes(b"orphan"))
    young = store.commit(store.stage_bytes(b"young orphan"))
    stale_tmp = store.tmp / "dead.part"
    stale_tmp.write_bytes(b"half")
    old = time.time() - 3600
    for p in (keep, orphan, stale_tmp):
        os.utime(p, (old, old))
    stray = keep.parent / ".DS_Store"  # a file nobody named by hash must not break gc
    stray.write_bytes(b"x")
    os.utime(stray, (old, old))
    removed = store.gc({keep.name}, grace_s=600)
    assert removed == [orphan.name]
    assert stray.exists()
    assert keep.exists() and young.exists() and not orphan.exists() and not stale_tmp.exists()


# -- registry ------------------------------------------------------------------------------
def test_versions_are_numbered_and_immutable(registry: Registry, store: ArtifactStore, tenant: str) -> None:
    v1 = push(registry, store, tenant, description="first", tags={"k": "v"}, metrics={"acc": 0.9})
    v2 = push(registry, store, tenant, data=add_model(2.0))
    assert (v1.version, v2.version) == (1, 2)
    assert v1.description == "first" and v1.tags == {"k": "v"} and v1.metrics == {"acc": 0.9}
    assert [i.name for i in v1.inputs] == ["x"] and [o.name for o in v1.outputs] == ["y", "z"]
    assert v1.inputs[0].datatype == "FP32" and v1.inputs[0].shape == (-1, 3)
    assert store.verified_path(v1.sha256).exists()
    got = registry.get_version(tenant, "m", 1)
    assert got.sha256 == v1.sha256 and got.version == 1
    model = registry.get_model(tenant, "m")
    assert model.latest_version == 2 and model.production_version is None


def test_identical_artifacts_share_one_blob(registry: Registry, store: ArtifactStore, tenant: str) -> None:
    a = push(registry, store, tenant, "a")
    b = push(registry, store, tenant, "b")
    assert a.sha256 == b.sha256
    assert _blobs(store) == [a.sha256]
    registry.delete_model(tenant, "a")
    assert store.exists(a.sha256)  # still used by b
    registry.delete_model(tenant, "b")
    assert _blobs(store) == []


def test_concurrent_pushes_get_distinct_versions(registry: Registry, store: ArtifactStore, tenant: str) -> None:
    results: list[int] = []
    errors: list[BaseException] = []
    blobs = [add_model(float(i)) for i in range(8)]
    barrier = threading.Barrier(len(blobs))

    def work(data: bytes) -> None:
        try:
            staged = store.stage_bytes(data)
            barrier.wait()
            results.append(registry.register_version(tenant_id=tenant, model_name="race", staged=staged).version)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(d,)) for d in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == list(range(1, len(blobs) + 1))
    assert registry.list_versions(tenant, "race").total == len(blobs)


def test_promotion_archives_previous_production(registry: Registry, store: ArtifactStore, tenant: str) -> None:
    push(registry, store, tenant, stage="production")
    push(registry, store, tenant, data=add_model(2.0))
    assert registry.resolve(tenant, "m").version == 1  # production wins over latest
    registry.update_version(tenant, "m", 2, stage="production")
    assert registry.get_version(tenant, "m", 1).stage == "archived"
    assert registry.get_version(tenant, "m", 2).stage == "production"
    assert registry.resolve(tenant, "m").version == 2
    assert registry.get_model(tenant, "m").production_version == 2
    # pushing straight to production archives too
    push(registry, store, tenant, data=add_model(3.0), stage="production")
    assert registry.get_version(tenant, "m", 2).stage == "archived"
    with pytest.raises(ValidationFailed):
        registry.update_version(tenant, "m", 3, stage="shipped")


def test_resolve_prefers_production_then_latest(registry: Registry, store: ArtifactStore, tenant: str) -> None:
    push(registry, store, tenant)
    push(registry, store, tenant, data=add_model(2.0))
    assert registry.resolve(tenant, "m").version == 2
    assert registry.resolve(tenant, "m", "1").version == 1
    with pytest.raises(VersionNotFound):
        registry.resolve(tenant, "m", "9")
    with pytest.raises(VersionNotFound):
        registry.resolve(tenant, "m", "abc")
    with pytest.raises(ModelNotFound):
        registry.resolve(tenant, "nope")
    with pytest.raises(ModelNotFound):
        registry.resolve("another-tenant", "m")


def test_update_and_list_paginated(registry: Registry, store: ArtifactStore, tenant: str) -> None:
    for i in range(5):
        push(registry, store, tenant, f"model-{i}", data=add_model(float(i)))
    page = registry.list_models(tenant, PageRequest(2, 2))
    assert page.total == 5 and [m.name for m in page.items] == ["model-2", "model-3"]
    assert registry.list_models(tenant, PageRequest(3, 2)).items[0].name == "model-4"
    info = registry.update_model(tenant, "model-0", description="d", tags={"team": "x"})
    assert (info.description, info.tags) == ("d", {"team": "x"})
    v = registry.update_version(tenant, "model-0", 1, description="vd", tags={"a": 1})
    assert (v.description, v.tags, v.sha256) == ("vd", {"a": 1}, registry.get_version(tenant, "model-0", 1).sha256)
    with pytest.raises(ValidationFailed):
        registry.update_model(tenant, "model-0", tags=["not", "a", "dict"])  # type: ignore[arg-type]


def test_delete_version_and_model_clean_blobs(registry: Registry, store: ArtifactStore, tenant: str) -> None:
    removed = []
    registry.on_version_removed.append(removed.append)
    v1 = push(registry, store, tenant)
    v2 = push(registry, store, tenant, data=add_model(5.0))
    registry.delete_version(tenant, "m", 1)
    assert not store.exists(v1.sha256) and store.exists(v2.sha256)
    with pytest.raises(VersionNotFound):
        registry.get_version(tenant, "m", 1)
    v3 = push(registry, store, tenant, data=add_model(6.0))
    assert v3.version == 3  # numbers are never reused
    registry.delete_model(tenant, "m")
    assert _blobs(store) == []
    assert {r.version for r in removed} == {1, 2, 3}
    with pytest.raises(ModelNotFound):
        registry.get_model(tenant, "m")


@pytest.mark.parametrize(
    "data",
    [b"definitely not onnx", b"", add_model()[:-7], checker_failing_model()],
    ids=["garbage", "empty", "truncated", "checker"],
)
def test_failed_validation_leaves_nothing(
    registry: Registry, store: ArtifactStore, tenant: str, data: bytes
) -> None:
    staged = store.stage_stream([data], max_bytes=10**6)
    with pytest.raises(InvalidArtifact):
        registry.register_version(tenant_id=tenant, model_name="bad", staged=staged)
    assert _blobs(store) == [] and _staged_files(store) == []
    with pytest.raises(ModelNotFound):
        registry.get_model(tenant, "bad")


def test_bad_name_or_stage_leaves_nothing(registry: Registry, store: ArtifactStore, tenant: str) -> None:
    with pytest.raises(ValidationFailed):
        push(registry, store, tenant, "../escape")
    with pytest.raises(ValidationFailed):
        push(registry, store, tenant, stage="gold")
    assert _blobs(store) == [] and _staged_files(store) == []


def test_failed_insert_removes_the_new_blob(registry: Registry, store: ArtifactStore, tenant: str) -> None:
    staged = store.stage_bytes(add_model())
    with pytest.raises(Exception):
        # the tenant does not exist: the foreign key refuses the model row
        registry.register_version(tenant_id="no-such-tenant", model_name="m", staged=staged)
    assert _blobs(store) == [] and _staged_files(store) == []


def test_referenced_blobs_feed_gc(registry: Registry, store: ArtifactStore, tenant: str) -> None:
    v = push(registry, store, tenant)
    orphan = store.commit(store.stage_bytes(b"left by a crash"))
    old = time.time() - 3600
    os.utime(orphan, (old, old))
    os.utime(store.path_for(v.sha256), (old, old))
    assert store.gc(registry.referenced_blobs(), grace_s=60) == [orphan.name]
    assert store.exists(v.sha256)


def test_concurrent_promotions_leave_one_production(registry: Registry, store: ArtifactStore, tenant: str) -> None:
    n = 6
    for i in range(n):
        push(registry, store, tenant, data=add_model(float(i)))
    for _round in range(3):
        barrier = threading.Barrier(n)
        errors: list[BaseException] = []

        def promote(version: int) -> None:
            try:
                barrier.wait()
                registry.update_version(tenant, "m", version, stage="production")
            except BaseException as exc:  # collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=promote, args=(v,)) for v in range(1, n + 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        stages = [v.stage for v in registry.list_versions(tenant, "m").items]
        assert stages.count("production") == 1, stages


def test_delete_never_removes_a_blob_an_identical_upload_is_registering(
    registry: Registry, store: ArtifactStore, tenant: str
) -> None:
    data = add_model()
    lost: list[tuple[str, int]] = []
    errors: list[BaseException] = []

    def churn(name: str) -> None:
        try:
            for _ in range(40):
                v = registry.register_version(tenant_id=tenant, model_name=name, staged=store.stage_bytes(data))
                if not store.exists(v.sha256):  # our row is committed, so the file must be there
                    lost.append((name, v.version))
                registry.delete_version(tenant, name, v.version)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(n,)) for n in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and lost == []
    assert _blobs(store) == [] and _staged_files(store) == []
