"""Answers remembered by their request: the response cache (Triton's ``response_cache``).

A version whose serving settings say ``"response_cache": true`` has each answer remembered under
its request's inputs (names, datatypes, shapes and bytes: the bytes themselves up to 4 KiB an
input, a 160-bit BLAKE2b digest of larger ones) and the outputs it asked for;
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
import sys
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from modelyard.core.registry import VersionInfo
from modelyard.metrics import Metrics
from modelyard.tensors import serialize_bytes_elements

__all__ = ["ResponseCache", "CacheKey"]

#: (version key, what identifies the request: see ``_request_key``)
CacheKey = tuple[str, tuple[Any, ...]]
#: inputs up to this many bytes are part of their key as they are; larger ones by their digest
_INLINE_BYTES = 4096
# What an entry holds besides its bytes, measured with tracemalloc on CPython 3.11 (64-bit) and
# NumPy 2: its key's tuples and the LRU's node, the outputs' dict and the entry's tuple; per input
# of its key, its tuple, shape and datatype's string and its bytes' header; per output, the
# array's object, shape and strides. The bound counts them, so a cache of small answers stays
# within its bytes (it held twice as much as it counted before they were).
_ENTRY_OVERHEAD = 480
_INPUT_OVERHEAD = 224
_ARRAY_OVERHEAD = 136


def _request_key(arrays: dict[str, np.ndarray], output_names: list[str] | None) -> tuple[Any, ...]:
    """What identifies a request's answer: the outputs asked for, and each input's name, dtype,
    shape and bytes (kept as they are up to :data:`_INLINE_BYTES`, so equal keys are equal
    requests; beyond, a 160-bit BLAKE2b digest of them)."""
    parts: list[Any] = [None if output_names is None else tuple(output_names)]
    for name, array in sorted(arrays.items()) if len(arrays) > 1 else arrays.items():
        data = serialize_bytes_elements(array) if array.dtype.kind == "O" else array.tobytes()
        if len(data) > _INLINE_BYTES:
            data = hashlib.blake2b(data, digest_size=20).digest()
        parts.append((name, array.dtype.str, array.shape, data))
    return tuple(parts)


def _key_bytes(key: CacheKey) -> int:
    return sum(_INPUT_OVERHEAD + len(part[3]) for part in key[1][1:])


def _kept(array: Any) -> tuple[np.ndarray, int]:
    """A read-only copy of ``array`` and the bytes it holds (its elements' objects too, for
    BYTES)."""
    copy = np.array(array, copy=True)
    copy.flags.writeable = False
    size = _ARRAY_OVERHEAD + copy.nbytes
    if copy.dtype.kind == "O":
        size += sum(sys.getsizeof(x) for x in copy.reshape(-1).tolist())
    return copy, size


class _Version:
    """What a version's lookups update: its hit and miss counters, its statistics."""

    __slots__ = ("hits", "misses", "statistics")

    def __init__(self, metrics: Metrics, info: VersionInfo) -> None:
        labels = (info.tenant_name, info.model_name, str(info.version))
        self.hits = metrics.cache_lookups.labels(*labels, "hit")
        self.misses = metrics.cache_lookups.labels(*labels, "miss")
        self.statistics = metrics.version_statistics(info.key, *labels)


class ResponseCache:
    """See the module. Use from the event loop only."""

    def __init__(self, max_bytes: int, metrics: Metrics) -> None:
        self.max_bytes = max_bytes
        self._metrics = metrics
        self._entries: OrderedDict[CacheKey, tuple[dict[str, np.ndarray], int]] = OrderedDict()
        self._versions: dict[str, _Version] = {}
        self.bytes = 0
        metrics.cache_bytes.set_function(lambda: self.bytes)
        metrics.cache_entries.set_function(lambda: len(self._entries))

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
        key = (info.key, _request_key(arrays, output_names))
        entry = self._entries.get(key)
        version = self._version(info)
        if entry is None:
            version.misses.inc()
            version.statistics.on_cache(False, time.perf_counter() - started)
            return key, None
        self._entries.move_to_end(key)
        version.hits.inc()
        version.statistics.on_cache(True, time.perf_counter() - started)
        return key, entry[0]

    def remember(self, info: VersionInfo, key: CacheKey, results: dict[str, Any]) -> None:
        """Keep ``results`` (an answer to the request ``key`` was looked up for), evicting the
        least recently used answers to make room; an answer bigger than the whole cache is not
        kept."""
        started = time.perf_counter()
        kept: dict[str, np.ndarray] = {}
        size = _ENTRY_OVERHEAD + _key_bytes(key)
        for name, value in results.items():
            kept[name], nbytes = _kept(value)
            size += nbytes
        entries = self._entries
        if size <= self.max_bytes and key not in entries:
            while self.bytes + size > self.max_bytes:
                self.bytes -= entries.popitem(last=False)[1][1]
            entries[key] = (kept, size)
            self.bytes += size
        self._version(info).statistics.on_cache(False, time.perf_counter() - started, count=0)

    def forget(self, version_key: str) -> None:
        """Drop the answers of a version (it was removed)."""
        for key in [k for k in self._entries if k[0] == version_key]:
            self.bytes -= self._entries.pop(key)[1]
        self._versions.pop(version_key, None)

    def _version(self, info: VersionInfo) -> _Version:
        version = self._versions.get(info.key)
        if version is None:
            version = self._versions[info.key] = _Version(self._metrics, info)
        return version
