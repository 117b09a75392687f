"""The server's job worker processes: started with the server, stopped with it.

On start, running jobs whose worker was a process of this host that no longer exists (the
previous server was killed) are re-queued at once, and jobs whose lease expired anywhere are
re-queued too; then ``settings.job_workers`` worker processes are spawned. On stop, each worker
hands its running job back to the queue (it resumes from its checkpoint on the next start).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time

from modelyard.config import Settings
from modelyard.core.jobs import JobQueue

__all__ = ["JobWorkers", "requeue_orphans"]

log = logging.getLogger("modelyard.jobs")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def requeue_orphans(queue: JobQueue) -> list[str]:
    """Re-queue running jobs whose worker is gone: a dead process of this host, or an expired lease."""
    host = socket.gethostname()
    dead: set[str] = set()
    for worker in queue.running_workers().values():
        parts = worker.split(":")
        if len(parts) == 3 and parts[0] == host and parts[1].isdigit() and not _pid_alive(int(parts[1])):
            dead.add(worker)
    requeued = queue.requeue_expired(dead_workers=frozenset(dead))
    for job_id in requeued:
        log.warning("job %s lost its worker; re-queued to resume from its last checkpoint", job_id)
    return requeued


class JobWorkers:
    """``settings.job_workers`` worker processes (``python -m modelyard.jobs.worker``)."""

    def __init__(self, settings: Settings, queue: JobQueue) -> None:
        self._settings = settings
        self._queue = queue
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def alive(self) -> int:
        return sum(1 for p in self._procs if p.poll() is None)

    def start(self) -> JobWorkers:
        from modelyard.jobs.worker import settings_payload

        requeue_orphans(self._queue)
        payload = settings_payload(self._settings).encode()
        host = socket.gethostname()
        for i in range(self._settings.job_workers):
            proc = subprocess.Popen(
                [sys.executable, "-m", "modelyard.jobs.worker", "--parent", str(os.getpid()),
                 "--name", f"{host}:{os.getpid()}:w{i}"],
                stdin=subprocess.PIPE,
            )
            assert proc.stdin is not None
            proc.stdin.write(payload)
            proc.stdin.close()
            self._procs.append(proc)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Ask every worker to stop (a running job goes back to the queue) and wait for them."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self._procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._procs.clear()
