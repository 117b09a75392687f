"""Trace files: the lines the tracer (``core/tracing.py``) makes, appended to files in the server's
traces folder by a thread of their own, so that a traced request neither waits for the disk nor
fails because of it.

The event loop only puts a line on a bounded queue (:data:`BACKLOG` lines); the thread opens the
file (and the folder) when it first needs it, appends, and flushes every ``flush_every`` lines of
that file (the trace settings' ``log_frequency``; 0 and 1: at each line). A line that cannot be
written is dropped, counted (``dropped``: a reason, ``"write"`` or ``"backlog"``, and how many
lines) and logged, at most once a minute per file and reason, with what to do: a traces folder
that is not a folder, a full disk, a file that cannot be opened. The file is opened again for the
next line, so traces come back by themselves once the cause is gone. When the disk is slower than
the traces come, the queue fills and the lines past it are dropped the same way (``"backlog"``)
rather than held in memory. :meth:`TraceFiles.close` writes what is queued and closes the files.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["TraceFiles", "BACKLOG"]

log = logging.getLogger(__name__)

#: lines queued for the thread at most; past it a line is dropped (the disk is behind)
BACKLOG = 65_536
#: a file's failure is logged at most this often (seconds), per reason
WARN_EVERY_S = 60.0

Dropped = Callable[[str, int], None]


class _Drained:
    """A marker on the queue: set once every line queued before it is written."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()


class _File:
    __slots__ = ("out", "unflushed")

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.unflushed = 0


class TraceFiles:
    """See the module. ``append`` is called from the event loop; everything else of a file
    happens in the thread, started at the first line."""

    def __init__(self, folder: Path, *, dropped: Dropped | None = None, backlog: int = BACKLOG) -> None:
        self.folder = folder
        self._dropped = dropped
        self._queue: queue.Queue[object] = queue.Queue(maxsize=backlog)
        self._thread: threading.Thread | None = None
        self._files: dict[str, _File] = {}  # the thread's own
        self._warned: dict[tuple[str, str], float] = {}  # (file, reason) -> when last logged
        self._lock = threading.Lock()  # starting the thread; closing
        self._closed = False

    def append(self, name: str, line: str, flush_every: int) -> None:
        """Queue ``line`` (no newline) for the file ``name``; never blocks, never raises."""
        if self._closed:
            return
        if self._thread is None:
            self._start()
        try:
            self._queue.put_nowait((name, line, max(1, flush_every)))
        except queue.Full:
            self._drop(name, "backlog", 1, "the disk is slower than the traces come; "
                       "trace fewer requests (a higher trace_rate)")

    def drain(self, timeout_s: float = 5.0) -> bool:
        """Wait until every line appended so far is written (flushed as its file's
        ``flush_every`` says); ``False`` if that took longer than ``timeout_s``."""
        if self._thread is None:
            return True
        marker = _Drained()
        try:
            self._queue.put(marker, timeout=timeout_s)
        except queue.Full:
            return False
        return marker.done.wait(timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, flush and close every file, stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is not None:
            try:
                self._queue.put(_STOP, timeout=timeout_s)
            except queue.Full:
                log.warning("traces: the queue did not drain in %.0f s; its lines are lost", timeout_s)
            thread.join(timeout=timeout_s)
        if thread is None or not thread.is_alive():
            self._close_files()

    # -- the thread ------------------------------------------------------------------------
    def _start(self) -> None:
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="modelyard-traces", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if isinstance(item, _Drained):
                item.done.set()
                continue
            name, line, flush_every = item  # type: ignore[misc]
            try:
                self._write(name, line, flush_every)
            except Exception:  # anything but the disk's errors (handled there): the thread goes on
                log.exception("traces: writing a line of %s failed", name)
                self._forget(name)
                if self._dropped is not None:
                    self._dropped("write", 1)

    def _write(self, name: str, line: str, flush_every: int) -> None:
        file = self._files.get(name)
        try:
            if file is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                file = self._files[name] = _File(open(self.folder / name, "a", encoding="utf-8"))  # noqa: SIM115
            file.unflushed += 1
            file.out.write(line + "\n")
            if file.unflushed >= flush_every:
                file.out.flush()
                file.unflushed = 0
        except OSError as exc:
            lost = 1 if file is None else file.unflushed  # this line and those its buffer held
            self._forget(name)
            self._drop(name, "write", lost, f"cannot write {self.folder / name}: {exc}; "
                       "fix the traces folder or free the disk, or turn traces off (trace_level OFF)")

    def _forget(self, name: str) -> None:
        """Close ``name`` after a failure, losing what its buffer held; the next line opens it again."""
        file = self._files.pop(name, None)
        if file is not None:
            try:
                file.out.close()
            except OSError:
                pass  # the buffer that could not be written fails again here: already counted

    def _close_files(self) -> None:
        for name in list(self._files):
            file = self._files[name]
            try:
                file.out.close()
            except OSError as exc:
                self._drop(name, "write", file.unflushed, f"cannot write {self.folder / name} at close: {exc}")
            del self._files[name]

    def _drop(self, name: str, reason: str, lines: int, advice: str) -> None:
        if self._dropped is not None and lines:
            self._dropped(reason, lines)
        now = time.monotonic()
        last = self._warned.get((name, reason))
        if last is None or now - last >= WARN_EVERY_S:
            self._warned[(name, reason)] = now
            log.warning("traces: %d line(s) of %s dropped: %s", lines, name, advice)
