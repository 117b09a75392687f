"""The job queue in the database: states, atomic claims by competing workers, leases, events."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import update

from modelyard.core.jobs import JobQueue
from modelyard.core.keys import KeyService
from modelyard.core.pages import PageRequest
from modelyard.errors import Conflict, JobNotFound, ValidationFailed
from modelyard.store.db import Database
from modelyard.store.tables import JobRow, utcnow


@pytest.fixture
def db(database_url: str) -> Database:
    database = Database(database_url)
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture
def tenant(db: Database) -> str:
    return KeyService(db).ensure_default_tenant()


def test_submit_claim_finish_lifecycle(db: Database, tenant: str) -> None:
    q = JobQueue(db, lease_s=30)
    job = q.submit(tenant_id=tenant, type="train", params={"a": 1})
    assert job.state == "queued" and job.attempts == 0
    claimed = q.claim("w1")
    assert claimed is not None and claimed.id == job.id and claimed.params == {"a": 1} and claimed.attempts == 1
    assert q.claim("w2") is None
    running = q.get(tenant, job.id)
    assert running.state == "running" and running.claimed_by == "w1" and running.started_at is not None
    assert q.heartbeat(job.id, "w1") and not q.heartbeat(job.id, "intruder")
    q.record(job.id, "progress", {"epoch": 1, "train_loss": 0.5})
    q.log(job.id, "hello")
    assert not q.finish(job.id, "intruder", "succeeded")
    assert q.finish(job.id, "w1", "succeeded", result={"version": 1})
    done = q.get(tenant, job.id)
    assert done.state == "succeeded" and done.result == {"version": 1} and done.progress == {"epoch": 1, "train_loss": 0.5}
    assert done.finished_at is not None
    kinds = [(e.kind, e.data.get("state")) for e in q.events(tenant, job.id)]
    assert kinds == [("state", "queued"), ("state", "running"), ("progress", None), ("log", None), ("state", "succeeded")]
    ids = [e.id for e in q.events(tenant, job.id)]
    assert ids == sorted(ids)
    assert [e.kind for e in q.events(tenant, job.id, after=ids[2])] == ["log", "state"]


def test_tenant_scoping_and_not_found(db: Database, tenant: str) -> None:
    q = JobQueue(db)
    job = q.submit(tenant_id=tenant, type="train", params={})
    with pytest.raises(JobNotFound):
        q.get("someone-else", job.id)
    with pytest.raises(JobNotFound):
        q.cancel("someone-else", job.id)
    with pytest.raises(JobNotFound):
        q.get(tenant, "nope")
    assert q.list("someone-else").total == 0


def test_list_paginates_and_filters(db: Database, tenant: str) -> None:
    q = JobQueue(db)
    ids = [q.submit(tenant_id=tenant, type="train" if i % 2 else "optimize", params={"i": i}).id for i in range(5)]
    page = q.list(tenant, PageRequest(1, 2))
    assert page.total == 5 and len(page.items) == 2
    assert q.list(tenant, type="train").total == 2
    q.cancel(tenant, ids[0])
    assert [j.id for j in q.list(tenant, state="cancelled").items] == [ids[0]]
    with pytest.raises(ValidationFailed) as err:
        q.list(tenant, state="bogus")
    assert err.value.details["field"] == "state"


def test_cancel_queued_and_running(db: Database, tenant: str) -> None:
    q = JobQueue(db)
    queued = q.submit(tenant_id=tenant, type="train", params={})
    assert q.cancel(tenant, queued.id).state == "cancelled"
    with pytest.raises(Conflict):
        q.cancel(tenant, queued.id)
    assert q.claim("w") is None  # a cancelled job is never claimed
    running = q.submit(tenant_id=tenant, type="train", params={})
    assert q.claim("w") is not None
    after = q.cancel(tenant, running.id)
    assert after.state == "running" and after.cancel_requested and q.cancel_requested(running.id)
    assert q.finish(running.id, "w", "cancelled")
    assert q.get(tenant, running.id).state == "cancelled"


def test_claim_order_and_type_filter(db: Database, tenant: str) -> None:
    q = JobQueue(db)
    first = q.submit(tenant_id=tenant, type="optimize", params={})
    time.sleep(0.01)
    second = q.submit(tenant_id=tenant, type="train", params={})
    claimed = q.claim("w", types=("train",))
    assert claimed is not None and claimed.id == second.id
    claimed = q.claim("w")
    assert claimed is not None and claimed.id == first.id


def test_expired_lease_is_requeued_and_old_worker_locked_out(db: Database, tenant: str) -> None:
    q = JobQueue(db, lease_s=30)
    job = q.submit(tenant_id=tenant, type="train", params={})
    assert q.claim("dead") is not None
    assert q.requeue_expired() == []  # lease still valid
    with db.transaction() as s:
        s.execute(update(JobRow).where(JobRow.id == job.id).values(lease_until=utcnow() - timedelta(seconds=1)))
    assert q.requeue_expired() == [job.id]
    assert q.get(tenant, job.id).state == "queued"
    again = q.claim("alive")
    assert again is not None and again.attempts == 2
    assert not q.heartbeat(job.id, "dead")
    assert not q.finish(job.id, "dead", "failed")
    assert q.finish(job.id, "alive", "succeeded", result={})


def test_known_dead_worker_is_requeued_at_once_and_release(db: Database, tenant: str) -> None:
    q = JobQueue(db, lease_s=300)
    job = q.submit(tenant_id=tenant, type="train", params={})
    assert q.claim("host:1:w0") is not None
    assert q.running_workers() == {job.id: "host:1:w0"}
    assert q.requeue_expired(dead_workers=frozenset({"host:1:w0"})) == [job.id]
    assert q.claim("w2") is not None
    assert q.release(job.id, "w2", "stopping")
    assert q.get(tenant, job.id).state == "queued"


def test_job_that_keeps_crashing_fails(db: Database, tenant: str) -> None:
    q = JobQueue(db, lease_s=300)
    job = q.submit(tenant_id=tenant, type="train", params={})
    for i in range(5):
        assert q.claim(f"w{i}") is not None
        q.requeue_expired(dead_workers=frozenset({f"w{i}"}))
    info = q.get(tenant, job.id)
    assert info.state == "failed" and info.error and info.error["code"] == "worker_lost"


def _race(url: str, tenant: str, n_jobs: int, n_workers: int) -> dict[str, list[str]]:
    setup = Database(url)
    q = JobQueue(setup)
    for i in range(n_jobs):
        q.submit(tenant_id=tenant, type="train", params={"i": i})
    claims: dict[str, list[str]] = {}
    lock = threading.Lock()
    barrier = threading.Barrier(n_workers)

    def worker(name: str) -> None:
        db = Database(url)  # each worker its own engine and connections, like separate servers
        mine = JobQueue(db)
        barrier.wait()
        while (job := mine.claim(name)) is not None:
            with lock:
                claims.setdefault(job.id, []).append(name)
        db.dispose()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(n_workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    setup.dispose()
    return claims


def test_competing_claimers_never_share_a_job(database_url: str, db: Database, tenant: str) -> None:
    claims = _race(database_url, tenant, n_jobs=30, n_workers=4)
    assert len(claims) == 30
    assert all(len(workers) == 1 for workers in claims.values()), claims


def test_competing_claimers_on_postgres(pg_url: str) -> None:
    database = Database(pg_url)
    database.migrate()
    tenant = KeyService(database).ensure_default_tenant()
    claims = _race(pg_url, tenant, n_jobs=40, n_workers=6)
    database.dispose()
    assert len(claims) == 40
    assert all(len(workers) == 1 for workers in claims.values()), claims
    assert len({w for ws in claims.values() for w in ws}) > 1  # the work was really shared
