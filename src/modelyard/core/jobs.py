"""Jobs: the queue of asynchronous work, kept in the metadata database.

States::

    queued ──claim──> running ──> succeeded | failed | cancelled
      ^                  │
      └── lease expired ─┘   (the worker died: re-queued, resumes from its checkpoint)

A worker *claims* the oldest queued job atomically: on PostgreSQL with
``UPDATE jobs ... WHERE id = (SELECT id ... FOR UPDATE SKIP LOCKED)``, on SQLite with a
conditional ``UPDATE ... WHERE id = ? AND state = 'queued'`` checked by its row count. So any
number of workers and servers sharing one database never run a job twice. A claimed job holds a
*lease* (``lease_until``) that the worker renews with :meth:`JobQueue.heartbeat`; a job whose lease
expired is put back in the queue by :meth:`JobQueue.requeue_expired`, so no job stays ``running``
without a live worker. Every transition of a running job is conditional on the claimant
(``claimed_by``), so a worker that lost its lease cannot overwrite the job's new life.

Progress events, log lines and state changes are rows of ``job_events`` read in order by id
(the REST API streams them as server-sent events).
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text, update

from modelyard.core.pages import Page, PageRequest
from modelyard.errors import Conflict, JobNotFound, ValidationFailed
from modelyard.store.db import Database
from modelyard.store.tables import JobEventRow, JobRow, utcnow

__all__ = ["JobQueue", "JobInfo", "JobEvent", "JOB_STATES", "TERMINAL_STATES", "ClaimedJob"]

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
#: What a job fails with when it crashed this many times (its lease expired each time).
MAX_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class JobInfo:
    """A job as callers see it. ``progress`` is the latest progress event (or ``None``)."""

    id: str
    tenant_id: str
    type: str
    state: str
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    progress: dict[str, Any] | None
    cancel_requested: bool
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    claimed_by: str | None = None

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job a worker now holds: its id, tenant, type, parameters and which attempt this is."""

    id: str
    tenant_id: str
    type: str
    params: dict[str, Any]
    attempts: int
    worker: str


@dataclass(frozen=True, slots=True)
class JobEvent:
    """``kind`` is ``progress`` (an epoch's ProgressEvent), ``log`` or ``state``."""

    id: int
    job_id: str
    kind: str
    data: dict[str, Any]
    at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "data": self.data, "at": self.at.isoformat()}


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; every timestamp ModelYard writes is UTC.
    if value is not None and value.tzinfo is None:
        from datetime import timezone

        return value.replace(tzinfo=timezone.utc)
    return value


def _info(row: JobRow) -> JobInfo:
    return JobInfo(
        id=row.id, tenant_id=row.tenant_id, type=row.type, state=row.state, params=dict(row.params or {}),
        result=row.result, error=row.error, progress=row.progress, cancel_requested=bool(row.cancel_requested),
        attempts=row.attempts, created_at=_aware(row.created_at) or utcnow(), started_at=_aware(row.started_at),
        finished_at=_aware(row.finished_at), claimed_by=row.claimed_by,
    )


class JobQueue:
    """Submit, inspect and cancel jobs (tenant-scoped); claim, heartbeat and finish them (workers)."""

    def __init__(self, db: Database, *, lease_s: float = 30.0) -> None:
        self._db = db
        self.lease_s = lease_s
        #: called with (tenant_id, job type, active jobs) before queueing; raises to refuse.
        self.admit: Callable[[str, str, int], None] | None = None

    # -- callers (tenant-scoped) ------------------------------------------------------------
    def submit(self, *, tenant_id: str, type: str, params: dict[str, Any]) -> JobInfo:
        """Queue a job; it runs when a worker claims it."""
        if self.admit is not None:
            self.admit(tenant_id, type, self.active_count(tenant_id))
        row = JobRow(
            id=str(uuid.uuid4()), tenant_id=tenant_id, type=type, state="queued", params=params,
            cancel_requested=False, attempts=0, created_at=utcnow(),
        )
        with self._db.transaction() as s:
            s.add(row)
            s.flush()
            s.add(JobEventRow(job_id=row.id, kind="state", data={"state": "queued"}, at=utcnow()))
            return _info(row)

    def active_count(self, tenant_id: str) -> int:
        """Jobs of the tenant that are queued or running."""
        with self._db.read() as s:
            return s.scalar(
                select(func.count()).select_from(JobRow).where(
                    JobRow.tenant_id == tenant_id, JobRow.state.in_(("queued", "running"))
                )
            ) or 0

    def get(self, tenant_id: str | None, job_id: str) -> JobInfo:
        """One job; ``JobNotFound`` when it does not exist or is another tenant's."""
        with self._db.read() as s:
            row = s.get(JobRow, job_id)
            if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
                raise JobNotFound(f"job {job_id!r} not found")
            return _info(row)

    def list(
        self, tenant_id: str, page: PageRequest = PageRequest(), *, state: str | None = None, type: str | None = None
    ) -> Page[JobInfo]:
        """Jobs of a tenant, newest first, optionally only those in ``state`` / of ``type``."""
        if state is not None and state not in JOB_STATES:
            raise ValidationFailed(
                f"unknown job state {state!r}; expected one of {', '.join(JOB_STATES)}", details={"field": "state"}
            )
        where = [JobRow.tenant_id == tenant_id]
        if state is not None:
            where.append(JobRow.state == state)
        if type is not None:
            where.append(JobRow.type == type)
        with self._db.read() as s:
            total = s.scalar(select(func.count()).select_from(JobRow).where(*where)) or 0
            rows = s.scalars(
                select(JobRow).where(*where).order_by(JobRow.created_at.desc(), JobRow.id)
                .offset(page.offset).limit(page.page_size)
            ).all()
            return Page([_info(r) for r in rows], int(total), page.page, page.page_size)

    def cancel(self, tenant_id: str | None, job_id: str) -> JobInfo:
        """Cancel a job: a queued one at once, a running one at its worker's next check
        (``cancel_requested``); ``Conflict`` for a job that has already ended."""
        now = utcnow()
        with self._db.transaction() as s:
            row = s.get(JobRow, job_id, with_for_update=True)
            if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
                raise JobNotFound(f"job {job_id!r} not found")
            if row.state in TERMINAL_STATES:
                raise Conflict(f"job {job_id} has already {row.state}")
            row.cancel_requested = True
            if row.state == "queued":
                row.state, row.finished_at = "cancelled", now
                s.add(JobEventRow(job_id=row.id, kind="state", data={"state": "cancelled"}, at=now))
            else:
                s.add(JobEventRow(job_id=row.id, kind="log", data={"level": "info", "message": "cancellation requested"}, at=now))
            s.flush()
            return _info(row)

    def events(self, tenant_id: str | None, job_id: str, *, after: int = 0, limit: int = 1000,
               kinds: tuple[str, ...] | None = None) -> builtins.list[JobEvent]:
        """Events of a job with ``id > after``, in order."""
        self.get(tenant_id, job_id)
        where = [JobEventRow.job_id == job_id, JobEventRow.id > after]
        if kinds:
            where.append(JobEventRow.kind.in_(kinds))
        with self._db.read() as s:
            rows = s.scalars(select(JobEventRow).where(*where).order_by(JobEventRow.id).limit(limit)).all()
            return [JobEvent(r.id, r.job_id, r.kind, dict(r.data or {}), _aware(r.at) or utcnow()) for r in rows]

    # -- workers ----------------------------------------------------------------------------
    def claim(self, worker: str, *, types: tuple[str, ...] | None = None) -> ClaimedJob | None:
        """Atomically take the oldest queued job (of ``types``) for ``worker``, or ``None``."""
        now = utcnow()
        lease = now + timedelta(seconds=self.lease_s)
        type_filter = [JobRow.type.in_(types)] if types else []
        if not self._db.is_sqlite:
            with self._db.transaction() as s:
                candidate = (
                    select(JobRow.id).where(JobRow.state == "queued", *type_filter)
                    .order_by(JobRow.created_at, JobRow.id).limit(1).with_for_update(skip_locked=True)
                    .scalar_subquery()
                )
                job_id = s.execute(
                    update(JobRow).where(JobRow.id == candidate)
                    .values(state="running", claimed_by=worker, lease_until=lease, attempts=JobRow.attempts + 1,
                            started_at=func.coalesce(JobRow.started_at, now))
                    .returning(JobRow.id)
                    .execution_options(synchronize_session=False)
                ).scalar()
                if job_id is None:
                    return None
                return self._claimed(s, job_id, worker, now)
        for _ in range(20):
            with self._db.read() as s:
                job_id = s.scalar(
                    select(JobRow.id).where(JobRow.state == "queued", *type_filter)
                    .order_by(JobRow.created_at, JobRow.id).limit(1)
                )
            if job_id is None:
                return None
            with self._db.transaction() as s:
                result = s.execute(
                    update(JobRow).where(JobRow.id == job_id, JobRow.state == "queued")
                    .values(state="running", claimed_by=worker, lease_until=lease, attempts=JobRow.attempts + 1,
                            started_at=func.coalesce(JobRow.started_at, now))
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    return self._claimed(s, job_id, worker, now)
        return None

    @staticmethod
    def _claimed(s: Any, job_id: str, worker: str, now: datetime) -> ClaimedJob:
        row = s.get(JobRow, job_id, populate_existing=True)
        s.add(JobEventRow(job_id=job_id, kind="state", data={"state": "running", "attempt": row.attempts}, at=now))
        return ClaimedJob(id=row.id, tenant_id=row.tenant_id, type=row.type, params=dict(row.params or {}),
                          attempts=row.attempts, worker=worker)

    def heartbeat(self, job_id: str, worker: str) -> bool:
        """Renew the lease; ``False`` when ``worker`` no longer holds the job (stop working on it)."""
        with self._db.transaction() as s:
            result = s.execute(
                update(JobRow).where(JobRow.id == job_id, JobRow.claimed_by == worker, JobRow.state == "running")
                .values(lease_until=utcnow() + timedelta(seconds=self.lease_s))
                .execution_options(synchronize_session=False)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def cancel_requested(self, job_id: str) -> bool:
        with self._db.read() as s:
            return bool(s.scalar(select(JobRow.cancel_requested).where(JobRow.id == job_id)))

    def record(self, job_id: str, kind: str, data: dict[str, Any]) -> None:
        """Append an event; a ``progress`` event also becomes the job's ``progress``."""
        with self._db.transaction() as s:
            s.add(JobEventRow(job_id=job_id, kind=kind, data=data, at=utcnow()))
            if kind == "progress":
                s.execute(update(JobRow).where(JobRow.id == job_id).values(progress=data)
                          .execution_options(synchronize_session=False))

    def log(self, job_id: str, message: str, *, level: str = "info") -> None:
        self.record(job_id, "log", {"level": level, "message": message})

    def finish(self, job_id: str, worker: str, state: str, *, result: dict[str, Any] | None = None,
               error: dict[str, Any] | None = None) -> bool:
        """End a running job held by ``worker`` in ``state``; ``False`` if it no longer holds it."""
        if state not in TERMINAL_STATES:
            raise ValueError(f"not a terminal state: {state}")
        now = utcnow()
        with self._db.transaction() as s:
            done = s.execute(
                update(JobRow).where(JobRow.id == job_id, JobRow.claimed_by == worker, JobRow.state == "running")
                .values(state=state, result=result, error=error, finished_at=now, lease_until=None)
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            if done:
                data: dict[str, Any] = {"state": state}
                if error:
                    data["error"] = error
                s.add(JobEventRow(job_id=job_id, kind="state", data=data, at=now))
            return bool(done)

    def release(self, job_id: str, worker: str, reason: str) -> bool:
        """Put a running job held by ``worker`` back in the queue (the worker is shutting down)."""
        now = utcnow()
        with self._db.transaction() as s:
            done = s.execute(
                update(JobRow).where(JobRow.id == job_id, JobRow.claimed_by == worker, JobRow.state == "running")
                .values(state="queued", claimed_by=None, lease_until=None)
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            if done:
                s.add(JobEventRow(job_id=job_id, kind="state", data={"state": "queued", "reason": reason}, at=now))
            return bool(done)

    def requeue_expired(self, *, dead_workers: frozenset[str] = frozenset()) -> builtins.list[str]:
        """Re-queue running jobs whose lease expired (or whose worker is known dead); a job that
        already crashed :data:`MAX_ATTEMPTS` times fails instead. Returns the re-queued ids."""
        now = utcnow()
        requeued: builtins.list[str] = []
        with self._db.transaction() as s:
            rows = s.scalars(select(JobRow).where(JobRow.state == "running")).all()
            for row in rows:
                expired = row.lease_until is None or (_aware(row.lease_until) or now) < now
                if not expired and row.claimed_by not in dead_workers:
                    continue
                error: dict[str, Any] | None = None
                data: dict[str, Any]
                if row.cancel_requested:
                    new_state, data = "cancelled", {"state": "cancelled", "reason": "worker lost"}
                elif row.attempts >= MAX_ATTEMPTS:
                    error = {"code": "worker_lost", "message": f"the job's worker died {row.attempts} times"}
                    new_state, data = "failed", {"state": "failed", "error": error}
                else:
                    new_state, data = "queued", {"state": "queued", "reason": "lease expired; resuming"}
                changed = s.execute(
                    update(JobRow).where(JobRow.id == row.id, JobRow.state == "running",
                                         JobRow.claimed_by == row.claimed_by)
                    .values(state=new_state, claimed_by=None, lease_until=None, error=error,
                            finished_at=None if new_state == "queued" else now)
                    .execution_options(synchronize_session=False)
                ).rowcount  # type: ignore[attr-defined]
                if changed:
                    s.add(JobEventRow(job_id=row.id, kind="state", data=data, at=now))
                    if new_state == "queued":
                        requeued.append(row.id)
        return requeued

    def running_workers(self) -> dict[str, str]:
        """``{job_id: worker}`` of every running job (for dead-worker detection at start)."""
        with self._db.read() as s:
            return {r.id: r.claimed_by or "" for r in s.execute(
                select(JobRow.id, JobRow.claimed_by).where(JobRow.state == "running"))}

    def referenced_blobs(self) -> set[str]:
        """Artifact blobs that finished jobs' results name (PyTorch weights, architectures)."""
        blobs: set[str] = set()
        with self._db.read() as s:
            for result in s.scalars(select(JobRow.result).where(JobRow.state == "succeeded")):
                for sha in (result or {}).get("blobs", []):
                    blobs.add(sha)
        return blobs

    def ping(self) -> None:
        with self._db.read() as s:
            s.execute(text("SELECT 1"))
