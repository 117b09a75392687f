"""Write-behind buffers: record in memory on the hot path, flush to the database from one
background thread every few tenths of a second, and once more on close."""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod

__all__ = ["BackgroundFlusher"]

log = logging.getLogger(__name__)


class BackgroundFlusher(ABC):
    """Subclasses implement :meth:`flush` (thread-safe); this runs it periodically."""

    def __init__(self, *, name: str, flush_s: float) -> None:
        self._flusher_name = name
        self._flush_s = flush_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @abstractmethod
    def flush(self) -> None:
        """Write what has been recorded since the last flush."""

    def start(self) -> None:
        """Start the background flusher (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._flusher_name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._flush_s):
            try:
                self.flush()
            except Exception:
                log.exception("%s failed; will retry", self._flusher_name)

    def close(self) -> None:
        """Stop the flusher and write what is left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.flush()
