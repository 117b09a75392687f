"""A job worker: claims jobs from the database queue and runs them, one at a time.

The server starts ``settings.job_workers`` of these as separate processes (``python -m
modelyard.jobs.worker``: outside the serving event loop and the API process's GIL) through
:class:`~modelyard.jobs.pool.JobWorkers`; more can run anywhere that reaches the same database
and artifact store with ``python -m modelyard.jobs.worker`` (it reads the same ``MODELYARD_*``
settings, and stops cleanly on SIGTERM/SIGINT).

While a job runs, a heartbeat thread renews its lease every ``job_lease_s / 3`` seconds and
notices when the parent server died (the worker then exits at once without touching the job, so
the job's lease expires and the next start resumes it from its checkpoint). The runner is asked
to stop when the job is cancelled, when the worker is shutting down (the job goes back to the
queue and resumes later) or when the lease was lost.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from typing import Any

from modelyard.config import Settings
from modelyard.core.jobs import ClaimedJob
from modelyard.core.limits import Counters, month_window
from modelyard.errors import ModelYardError
from modelyard.jobs.context import JobContext
from modelyard.jobs.runners import JOB_RUNNERS, runner_for

__all__ = ["worker_id", "run_worker", "execute", "settings_payload", "main", "JobReporter"]

log = logging.getLogger("modelyard.jobs")
_STOP_POLL_S = 0.05  # a cancel is seen within one epoch even when epochs take a tenth of a second


def worker_id() -> str:
    """``host:pid:random``: unique per worker; the pid lets a restarted server on the same host
    tell that a previous worker is gone."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobReporter:
    """The :class:`~modelyard.jobs.runners.Reporter` of one claimed job."""

    def __init__(self, ctx: JobContext, job: ClaimedJob, stopping: threading.Event) -> None:
        self._ctx = ctx
        self._job = job
        self._stopping = stopping
        self.lease_lost = threading.Event()
        self._checked = 0.0
        self._cancelled = False

    def progress(self, data: dict[str, Any]) -> None:
        self._ctx.jobs.record(self._job.id, "progress", data)

    def log(self, message: str, *, level: str = "info") -> None:
        self._ctx.jobs.log(self._job.id, message, level=level)

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def should_stop(self) -> bool:
        if self._stopping.is_set() or self.lease_lost.is_set():
            return True
        now = time.monotonic()
        if now - self._checked >= _STOP_POLL_S:
            self._checked = now
            self._cancelled = self._ctx.jobs.cancel_requested(self._job.id)
        return self._cancelled


def _heartbeat(ctx: JobContext, job: ClaimedJob, reporter: JobReporter, done: threading.Event,
               parent_pid: int | None) -> None:
    interval = max(0.05, ctx.settings.job_lease_s / 3)
    last = time.monotonic()
    while not done.wait(min(interval, 0.5)):
        if parent_pid is not None and os.getppid() != parent_pid:
            _die()  # the server died: leave the job to its lease, resume on the next start
        if time.monotonic() - last < interval:
            continue
        last = time.monotonic()
        try:
            if not ctx.jobs.heartbeat(job.id, job.worker):
                reporter.lease_lost.set()
                return
        except Exception:  # a database hiccup: try again at the next beat
            log.exception("heartbeat of job %s failed", job.id)


def _die() -> None:
    """Exit at once, taking this worker's own children (data-parallel trainers) along, so no
    orphan keeps writing checkpoints into the job's folder while another worker resumes it."""
    import multiprocessing

    for child in multiprocessing.active_children():
        child.kill()
    os._exit(3)


def execute(ctx: JobContext, job: ClaimedJob, stopping: threading.Event, *, parent_pid: int | None = None) -> str:
    """Run one claimed job to its end; returns the state it ended in (``queued`` when it was
    handed back because the worker is stopping, ``lost`` when another worker took it over)."""
    from modelyard.engine.trainer.errors import TrainingCancelled

    reporter = JobReporter(ctx, job, stopping)
    done = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(ctx, job, reporter, done, parent_pid),
                            name=f"heartbeat-{job.id[:8]}", daemon=True)
    beat.start()
    started = time.monotonic()
    try:
        reporter.log(f"claimed by worker {job.worker} (attempt {job.attempts})")
        result = runner_for(job.type).run(ctx, job, reporter)
    except TrainingCancelled:
        if reporter.lease_lost.is_set():
            return "lost"
        if reporter.cancelled or ctx.jobs.cancel_requested(job.id):
            reporter.log("cancelled; nothing was registered")
            ctx.jobs.finish(job.id, job.worker, "cancelled")
            return "cancelled"
        reporter.log("worker shutting down; the job will resume from its checkpoint")
        ctx.jobs.release(job.id, job.worker, "worker stopped")
        return "queued"
    except ModelYardError as exc:
        reporter.log(exc.message, level="error")
        error = {"code": exc.code, "message": exc.message, **({"details": exc.details} if exc.details else {})}
        ctx.jobs.finish(job.id, job.worker, "failed", error=error)
        return "failed"
    except Exception as exc:
        log.exception("job %s failed", job.id)
        reporter.log("".join(traceback.format_exception_only(type(exc), exc)).strip(), level="error")
        ctx.jobs.finish(job.id, job.worker, "failed",
                        error={"code": "internal", "message": f"{type(exc).__name__}: {exc}"[:2000]})
        return "failed"
    finally:
        done.set()
        beat.join(timeout=5)
        if job.type == "train":
            Counters(ctx.db).add(job.tenant_id, "training_s", month_window()[0], time.monotonic() - started)
    if not ctx.jobs.finish(job.id, job.worker, "succeeded", result=result):
        return "lost"
    return "succeeded"


def run_worker(ctx: JobContext, stopping: threading.Event, *, parent_pid: int | None = None,
               name: str | None = None) -> None:
    """Claim and run jobs until ``stopping`` is set; expired leases are re-queued as it goes."""
    me = name or worker_id()
    types = tuple(JOB_RUNNERS)
    next_sweep = 0.0
    while not stopping.is_set():
        if parent_pid is not None and os.getppid() != parent_pid:
            return
        try:
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + max(1.0, ctx.settings.job_lease_s / 2)
                for job_id in ctx.jobs.requeue_expired():
                    log.warning("job %s lost its worker; re-queued to resume from its checkpoint", job_id)
            job = ctx.jobs.claim(me, types=types)
        except Exception:
            log.exception("job queue unavailable; retrying")
            stopping.wait(max(1.0, ctx.settings.job_poll_s))
            continue
        if job is None:
            stopping.wait(ctx.settings.job_poll_s)
            continue
        state = execute(ctx, job, stopping, parent_pid=parent_pid)
        log.info("job %s %s", job.id, state)


def settings_payload(settings: Settings) -> str:
    """``settings`` as JSON with secrets in clear, for a worker process started by the server."""
    from pydantic import SecretStr

    data = {
        k: (v.get_secret_value() if isinstance(v, SecretStr) else v) for k, v in settings.model_dump().items()
    }
    return json.dumps(data, default=str)


def main(argv: list[str] | None = None) -> None:
    """``python -m modelyard.jobs.worker``: a job worker for the configured database.

    Stand-alone it reads the ``MODELYARD_*`` settings. Started by a server (``--parent PID
    --name NAME``) it reads the server's settings as JSON from stdin and exits when that server
    dies. SIGTERM stops it cleanly (a running job goes back to the queue).
    """
    import argparse
    import signal
    import sys

    parser = argparse.ArgumentParser(prog="python -m modelyard.jobs.worker", description=main.__doc__)
    parser.add_argument("--parent", type=int, default=None, help="pid of the server that started this worker")
    parser.add_argument("--name", default=None, help="worker name (default host:pid:random)")
    args = parser.parse_args(argv)
    if args.parent is not None:
        settings = Settings.model_validate(json.loads(sys.stdin.read()))
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server says when to stop (SIGTERM)
    else:
        settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s[worker]: %(message)s")
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    if args.parent is None:
        signal.signal(signal.SIGINT, lambda *_: stopping.set())
    ctx = JobContext.open(settings)
    try:
        run_worker(ctx, stopping, parent_pid=args.parent, name=args.name)
    finally:
        ctx.close()


if __name__ == "__main__":
    main()
