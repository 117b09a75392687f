"""Process isolation for a runtime: the model runs in a worker process the server can lose.

:class:`ProcessRuntime` satisfies the :class:`~modelyard.runtimes.base.Runtime` protocol by
loading the artifact with :func:`~modelyard.runtimes.base.load_runtime` inside a worker process
(``multiprocessing`` "spawn" context) and forwarding ``predict`` calls over a pipe. A crash of the
model (segfault, OOM kill, SIGKILL) then costs only that worker: calls in flight fail at once with
:class:`~modelyard.errors.Unavailable` ("model worker died; restarting", HTTP 503) and a new
worker is started in the background, so the next call works.

Several threads may call ``predict`` at once: each call carries a request id, and one reader
thread per worker hands every response to the thread waiting for it. The worker runs up to
``worker_threads`` predictions at once.

The worker exits when it is closed, when its pipe to the server closes, and when the server
process dies (it watches its parent), so no worker outlives the server.

Security note: messages on the pipe are pickled (numpy arrays, tensor specs, our own error
objects). Both ends are our own processes started from this code, so this is trusted data; it is
never used for anything a caller uploads (uploads are never unpickled).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.errors import DeadlineExceeded, InternalError, ModelYardError, Unavailable
from modelyard.runtimes.base import RuntimeOptions, load_runtime
from modelyard.tensors import TensorSpec

__all__ = ["ProcessRuntime"]

log = logging.getLogger(__name__)

_DIED = "model worker died; restarting"
#: How often a worker checks that the server process that started it is still alive.
_PARENT_POLL_S = 0.5


class ProcessRuntime:
    """A runtime loaded in its own worker process; a drop-in :class:`Runtime`.

    The constructor starts the worker and waits until the model is loaded, raising the load error
    (e.g. :class:`~modelyard.errors.InvalidArtifact`) if it fails, or :class:`Unavailable` if the
    worker dies or does not become ready within ``start_timeout_s``. Errors raised by the model
    inside the worker reach the caller as the same :class:`ModelYardError` type; other exceptions
    arrive as :class:`InternalError`. With ``call_timeout_s`` a worker that does not answer a
    call in time is presumed hung: it is killed (the call raises :class:`DeadlineExceeded`,
    others in flight :class:`Unavailable`) and restarted. ``on_restart`` is called (from the
    thread that replaced it) each time a dead worker was replaced.
    """

    #: ``predict`` waits on the worker process (see ``runtimes.base.computes_in_caller``)
    waits_elsewhere = True

    def __init__(
        self,
        *,
        fmt: str,
        path: Path,
        options: RuntimeOptions,
        metadata: dict[str, Any] | None = None,
        worker_threads: int = 1,
        start_timeout_s: float = 120.0,
        call_timeout_s: float | None = None,
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        if worker_threads < 1:
            raise ValueError("worker_threads must be >= 1")
        self._fmt = fmt
        self._path = Path(path)
        self._options = options
        self._metadata = dict(metadata or {})
        self._worker_threads = worker_threads
        self._start_timeout_s = start_timeout_s
        self._call_timeout_s = call_timeout_s
        self._ctx = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()  # guards _worker replacement and _closed
        self._closed = False
        self._restarts = 0
        self._on_restart = on_restart
        self._worker: _Worker | None = self._spawn()
        self.inputs: list[TensorSpec] = self._worker.inputs
        self.outputs: list[TensorSpec] = self._worker.outputs
        self._memory = self._worker.memory

    @property
    def pid(self) -> int | None:
        """The process id of the current worker (None once closed)."""
        worker = self._worker
        return worker.pid if worker is not None else None

    @property
    def restarts(self) -> int:
        """How many times a dead worker was replaced."""
        return self._restarts

    def predict(
        self, inputs: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run ``predict`` in the worker; :class:`Unavailable` if the worker dies meanwhile."""
        result: dict[str, np.ndarray] = self._current().call(
            "predict", (inputs, output_names), timeout_s=self._call_timeout_s
        )
        return result

    def memory_bytes(self) -> int:
        """The runtime's own estimate, as reported by the worker when it loaded the model."""
        return self._memory

    def close(self, grace_s: float = 5.0) -> None:
        """Stop the worker: ask it to exit, kill it if it is still busy after ``grace_s``.

        Calls in flight and later calls raise :class:`Unavailable`. Idempotent.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop(grace_s)

    # -- worker lifecycle ------------------------------------------------------------------

    def _current(self) -> _Worker:
        worker = self._worker
        if worker is not None and not worker.dead:
            return worker
        with self._lock:
            if self._closed:
                raise Unavailable("this model version was unloaded", retry_after=1.0)
            if self._worker is None or self._worker.dead:
                try:
                    self._worker = self._spawn()
                except ModelYardError as exc:
                    raise Unavailable(
                        f"model worker could not restart: {exc.message}", retry_after=5.0
                    ) from exc
                self._restarts += 1
                if self._on_restart is not None:
                    self._on_restart()
            return self._worker

    def _spawn(self) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_worker_main,
            args=(
                child_conn,
                self._fmt,
                self._path,
                self._options,
                self._metadata,
                self._worker_threads,
                os.getpid(),
            ),
            name=f"modelyard-worker-{self._path.name}",
            # Daemonic: multiprocessing terminates it when this interpreter exits.
            daemon=True,
        )
        process.start()
        child_conn.close()  # so that the worker's death reads as EOF here
        try:
            hello = _await_hello(parent_conn, process, self._start_timeout_s)
        except BaseException:
            parent_conn.close()
            _reap(process, grace_s=0.0)
            raise
        _, inputs, outputs, memory = hello
        return _Worker(
            process=process,
            conn=parent_conn,
            inputs=inputs,
            outputs=outputs,
            memory=memory,
            on_death=self._on_death,
        )

    def _on_death(self, worker: _Worker) -> None:
        """Called by a worker's reader thread after it failed the calls in flight."""
        with self._lock:
            if self._closed or self._worker is not worker:
                return
        log.warning("model worker %s for %s died; restarting", worker.pid, self._path)
        restart = threading.Thread(
            target=self._restart_quietly, name="modelyard-restart", daemon=True
        )
        restart.start()

    def _restart_quietly(self) -> None:
        try:
            self._current()
        except ModelYardError as exc:
            log.error("model worker for %s could not restart: %s", self._path, exc.message)


def _await_hello(conn: Connection, process: Any, timeout_s: float) -> tuple[Any, ...]:
    """Wait for the worker's first message: ``("ready", ...)`` or ``("error", exc)``."""
    if not conn.poll(timeout_s):
        raise Unavailable(f"model worker did not load the model within {timeout_s:g} s")
    try:
        hello = conn.recv()
    except (EOFError, OSError):
        process.join(1.0)
        raise Unavailable(
            f"model worker died while loading the model (exit code {process.exitcode})"
        ) from None
    if hello[0] == "error":
        raise hello[1]
    return tuple(hello)


def _reap(process: Any, *, grace_s: float) -> None:
    """Wait up to ``grace_s`` for ``process`` to exit, then terminate and kill it."""
    process.join(grace_s)
    if process.is_alive():
        process.terminate()
        process.join(1.0)
    if process.is_alive():
        process.kill()
        process.join(1.0)


class _Worker:
    """The server side of one worker process: request ids, pending calls, reader thread."""

    def __init__(
        self,
        *,
        process: Any,
        conn: Connection,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        memory: int,
        on_death: Any,
    ) -> None:
        self.process = process
        self.pid: int = process.pid
        self.conn = conn
        self.inputs = inputs
        self.outputs = outputs
        self.memory = memory
        self.dead = False
        self._on_death = on_death
        self._stopping = False
        self._ids = itertools.count()
        self._pending: dict[int, concurrent.futures.Future[Any]] = {}
        self._lock = threading.Lock()  # guards _pending and dead
        self._send_lock = threading.Lock()  # Connection.send is not thread-safe
        self._reader = threading.Thread(
            target=self._read, name=f"modelyard-worker-reader-{self.pid}", daemon=True
        )
        self._reader.start()

    def call(self, op: str, payload: Any, *, timeout_s: float | None = None) -> Any:
        """Send one call and wait for its answer; a worker silent for ``timeout_s`` is killed."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self.dead:
                raise Unavailable(_DIED, retry_after=1.0)
            rid = next(self._ids)
            self._pending[rid] = future
        try:
            # Never hold self._lock here: a full pipe must not block the reader thread.
            with self._send_lock:
                self.conn.send((rid, op, payload))
        except (OSError, EOFError, ValueError) as exc:
            with self._lock:
                self._pending.pop(rid, None)
            raise Unavailable(_DIED, retry_after=1.0) from exc
        except BaseException:
            with self._lock:
                self._pending.pop(rid, None)
            raise
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            if future.done():  # answered just now
                return future.result()
            log.error("model worker %s did not answer in %s s; killing it", self.pid, timeout_s)
            with self._lock:
                self.dead = True  # the next call starts a new worker rather than wait for EOF
            self.process.kill()  # the reader then fails the other calls in flight
            raise DeadlineExceeded(
                f"the model did not answer within {timeout_s:g} s; its worker is restarting"
            ) from None

    def _read(self) -> None:
        clean_eof = False
        try:
            while True:
                rid, ok, payload = self.conn.recv()
                with self._lock:
                    future = self._pending.pop(rid, None)
                if future is None:
                    continue
                if ok:
                    future.set_result(payload)
                else:
                    future.set_exception(payload)
        except (EOFError, OSError):
            clean_eof = True
        except Exception:
            log.exception("unreadable message from model worker %s", self.pid)
        with self._lock:
            self.dead = True
            pending, self._pending = self._pending, {}
        for future in pending.values():
            future.set_exception(Unavailable(_DIED, retry_after=1.0))
        self.conn.close()
        _reap(self.process, grace_s=2.0 if clean_eof else 0.0)
        if not self._stopping:
            log.warning("model worker %s exited with code %s", self.pid, self.process.exitcode)
            self._on_death(self)

    def stop(self, grace_s: float = 5.0) -> None:
        """Ask the worker to exit, kill it after ``grace_s``; calls in flight get Unavailable.

        Only the reader thread waits for (reaps) the process, so two threads never race on it.
        """
        self._stopping = True
        try:
            with self._send_lock:
                self.conn.send((-1, "close", None))
        except (OSError, EOFError, ValueError):
            pass  # already gone
        self._reader.join(grace_s)
        if self._reader.is_alive():
            self.process.kill()  # busy in a long predict, or hung
            self._reader.join(5.0)


# -- inside the worker process -------------------------------------------------------------


def _portable_error(exc: BaseException) -> ModelYardError:
    """An error the server can unpickle: our own types as they are, anything else wrapped."""
    if isinstance(exc, ModelYardError):
        try:
            pickle.loads(pickle.dumps(exc))
            return exc
        except Exception:
            return InternalError(f"{type(exc).__name__}: {exc}")
    return InternalError(f"{type(exc).__name__}: {exc}")


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(_PARENT_POLL_S)
        if os.getppid() != parent_pid:
            os._exit(0)  # the server died: do not outlive it


def _worker_main(
    conn: Connection,
    fmt: str,
    path: Path,
    options: RuntimeOptions,
    metadata: dict[str, Any],
    worker_threads: int,
    parent_pid: int,
) -> None:
    """Entry point of the worker process: load, say hello, then serve calls until told to stop."""
    # Ctrl-C in the server's terminal reaches the whole process group; the server stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    try:
        runtime = load_runtime(fmt, path, options, metadata)
        conn.send(("ready", list(runtime.inputs), list(runtime.outputs), runtime.memory_bytes()))
    except BaseException as exc:
        conn.send(("error", _portable_error(exc)))
        conn.close()
        return

    send_lock = threading.Lock()

    def answer(rid: int, inputs: dict[str, np.ndarray], output_names: list[str] | None) -> None:
        try:
            message: tuple[int, bool, Any] = (rid, True, runtime.predict(inputs, output_names))
        except BaseException as exc:
            message = (rid, False, _portable_error(exc))
        with send_lock:
            try:
                conn.send(message)
            except (OSError, EOFError):
                os._exit(0)  # the server is gone
            except Exception as exc:  # outputs that cannot be pickled
                conn.send((rid, False, InternalError(f"outputs cannot be returned: {exc}")))

    pool = (
        concurrent.futures.ThreadPoolExecutor(worker_threads, thread_name_prefix="predict")
        if worker_threads > 1
        else None
    )
    while True:
        try:
            rid, op, payload = conn.recv()
        except (EOFError, OSError):
            os._exit(0)  # the server closed the pipe or died
        if op == "close":
            break
        if op == "predict":
            if pool is not None:
                pool.submit(answer, rid, *payload)
            else:
                answer(rid, *payload)
    if pool is not None:
        pool.shutdown(wait=True)
    runtime.close()
    conn.close()
