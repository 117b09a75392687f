"""Answers remembered by their request: the response cache (Triton's ``response_cache``).

A version whose serving settings say ``"response_cache": true`` has each answer remembered under a
digest of its request's inputs (names, datatypes, shapes and bytes) and the outputs it asked for;
a later request with the same ones is answered from memory without queueing or computing (it does
not even need the version loaded). For models whose answer depends only on their inputs: the
setting is off by default, and a version is never cached unless someone turned it on for it (or
for its model, or the deployment that routes to it).

* One cache per server process, bounded in bytes (``MODELYARD_RESPONSE_CACHE_BYTES``, default
  64 MiB; 0 turns caching off whatever the settings say), least recently used answers evicted
  first. Its bytes are not the models' memory budget.
* Entries belong to a version (its key, unique across tenants): a tenant never gets another's
  answers, a new version starts empty, and a removed version's entries are dropped.
* Only answers are remembered; errors never are. A remembered answer is a copy (read-only), so no
  batch's output stays alive for it.
* Statistics as Triton counts them: a hit is a successful request but no inference or execution;
  ``cache_hit`` is the count and time of lookups that found the answer, ``cache_miss`` of those
  that did not, plus the time to remember their answers. Prometheus:
  ``modelyard_response_cache_lookups_total{result="hit"|"miss"}``,
  ``modelyard_response_cache_bytes`` and ``modelyard_response_cache_entries``.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from modelyard.core.registry import VersionInfo
from modelyard.metrics import Metrics
from modelyard.tensors import serialize_bytes_elements

__all__ = ["ResponseCache", "CacheKey"]

#: (version key, digest of the request)
CacheKey = tuple[str, bytes]
#: what an entry costs besides its arrays (the key, the dict, the arrays' headers)
_ENTRY_OVERHEAD = 256


def _digest(arrays: dict[str, np.ndarray], output_names: list[str] | None) -> bytes:
    h = hashlib.blake2b(digest_size=20)
    for name in sorted(arrays):
        array = arrays[name]
        h.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        if array.dtype.kind == "O":
            h.update(serialize_bytes_elements(array))
        else:
            h.update(np.ascontiguousarray(array).data)
    h.update(b"\1" + "\0".join(output_names).encode() if output_names is not None else b"\2")
    return h.digest()


def _kept(array: Any) -> tuple[np.ndarray, int]:
    """A read-only copy of ``array`` and the bytes it holds."""
    copy = np.array(array, copy=True)
    copy.flags.writeable = False
    if copy.dtype.kind == "O":
        size = sum(len(x) if isinstance(x, (bytes, str)) else 8 for x in copy.reshape(-1).tolist()) + 8 * copy.size
    else:
        size = copy.nbytes
    return copy, size


class ResponseCache:
    """See the module. Use from the event loop only."""

    def __init__(self, max_bytes: int, metrics: Metrics) -> None:
        self.max_bytes = max_bytes
        self._metrics = metrics
        self._entries: OrderedDict[CacheKey, tuple[dict[str, np.ndarray], int]] = OrderedDict()
        self.bytes = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(
        self, info: VersionInfo, arrays: dict[str, np.ndarray], output_names: list[str] | None
    ) -> tuple[CacheKey, dict[str, np.ndarray] | None]:
        """The key of a request to ``info`` with these inputs, and its remembered answer (the
        outputs by name) or ``None``; counted as a hit or a miss."""
        started = time.perf_counter()
        key = (info.key, _digest(arrays, output_names))
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        hit = entry is not None
        labels = (info.tenant_name, info.model_name, str(info.version))
        self._metrics.cache_lookups.labels(*labels, "hit" if hit else "miss").inc()
        self._metrics.version_statistics(info.key, *labels).on_cache(hit, time.perf_counter() - started)
        return key, entry[0] if entry is not None else None

    def remember(self, info: VersionInfo, key: CacheKey, results: dict[str, Any]) -> None:
        """Keep ``results`` (an answer to the request ``key`` was looked up for), evicting the
        least recently used answers to make room; an answer bigger than the whole cache is not
        kept."""
        started = time.perf_counter()
        kept: dict[str, np.ndarray] = {}
        size = _ENTRY_OVERHEAD
        for name, value in results.items():
            kept[name], nbytes = _kept(value)
            size += nbytes
        if size <= self.max_bytes and key not in self._entries:
            while self.bytes + size > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.bytes -= evicted
            self._entries[key] = (kept, size)
            self.bytes += size
            self._published()
        labels = (info.tenant_name, info.model_name, str(info.version))
        self._metrics.version_statistics(info.key, *labels).on_cache(False, time.perf_counter() - started, count=0)

    def forget(self, version_key: str) -> None:
        """Drop the answers of a version (it was removed)."""
        for key in [k for k in self._entries if k[0] == version_key]:
            self.bytes -= self._entries.pop(key)[1]
        self._published()

    def _published(self) -> None:
        self._metrics.cache_bytes.set(self.bytes)
        self._metrics.cache_entries.set(len(self._entries))
