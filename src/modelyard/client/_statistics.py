"""``client.statistics``: per-version inference statistics since the server started (Triton's
statistics extension, ``/v2/models[/{name}[/versions/{v}]]/stats``): requests answered and
failed with their time, time queued and computing, rows and batches, batch sizes.

Each server counts its own requests; in a cluster, ask each server or read ``/metrics``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

from modelyard.client._transport import Transport

__all__ = ["Duration", "Statistics", "VersionStatistics"]


@dataclass(frozen=True, slots=True)
class Duration:
    """How many, and their time together in seconds."""

    count: int
    seconds: float

    @property
    def mean_ms(self) -> float:
        """Mean time of one, in milliseconds (0 when there is none)."""
        return 1000.0 * self.seconds / self.count if self.count else 0.0

    def __sub__(self, earlier: Duration) -> Duration:
        return Duration(self.count - earlier.count, self.seconds - earlier.seconds)

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> Duration:
        d = d or {}
        return cls(int(d.get("count", 0)), int(d.get("ns", 0)) / 1e9)


@dataclass(frozen=True, slots=True)
class VersionStatistics:
    """One version's figures: ``answered`` and ``failed`` requests (end to end in the server),
    ``queued`` (waiting for their batch) and ``computed`` (each request charged its batch's
    compute), ``rows`` inferred in ``batches`` executions, and per batch size (rows) how many
    batches of it ran and their compute. ``last_inference_ms``: when the last batch finished or
    answer came from the response cache (milliseconds since the epoch; 0: none yet).
    ``memory_bytes``: held now (0: not loaded). ``cache_hits`` and ``cache_misses``: response cache
    lookups that found the answer (no batch ran) and that did not, with their time (a miss's
    includes remembering its answer); both 0 for a version without the cache."""

    model: str
    version: int
    answered: Duration
    failed: Duration
    queued: Duration
    computed: Duration
    rows: int
    batches: int
    by_batch_size: dict[int, Duration]
    last_inference_ms: int
    memory_bytes: int
    cache_hits: Duration = Duration(0, 0.0)
    cache_misses: Duration = Duration(0, 0.0)

    @property
    def mean_batch_size(self) -> float:
        """Rows per batch (0 before the first batch)."""
        return self.rows / self.batches if self.batches else 0.0

    def since(self, earlier: VersionStatistics) -> VersionStatistics:
        """What the version did between ``earlier`` (a read of the same version) and this read:
        the counts and times that grew meanwhile (memory and the last inference: this read's)."""
        sizes = {
            size: grown for size, duration in self.by_batch_size.items()
            if (grown := duration - earlier.by_batch_size.get(size, Duration(0, 0.0))).count
        }
        return replace(
            self, answered=self.answered - earlier.answered, failed=self.failed - earlier.failed,
            queued=self.queued - earlier.queued, computed=self.computed - earlier.computed,
            rows=self.rows - earlier.rows, batches=self.batches - earlier.batches, by_batch_size=sizes,
            cache_hits=self.cache_hits - earlier.cache_hits, cache_misses=self.cache_misses - earlier.cache_misses,
        )

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> VersionStatistics:
        stats = d.get("inference_stats", {})
        return cls(
            model=d["name"],
            version=int(d["version"]),
            answered=Duration.from_json(stats.get("success")),
            failed=Duration.from_json(stats.get("fail")),
            queued=Duration.from_json(stats.get("queue")),
            computed=Duration.from_json(stats.get("compute_infer")),
            rows=int(d.get("inference_count", 0)),
            batches=int(d.get("execution_count", 0)),
            by_batch_size={
                int(b["batch_size"]): Duration.from_json(b.get("compute_infer")) for b in d.get("batch_stats", [])
            },
            last_inference_ms=int(d.get("last_inference", 0)),
            memory_bytes=sum(int(m.get("byte_size", 0)) for m in d.get("memory_usage", [])),
            cache_hits=Duration.from_json(stats.get("cache_hit")),
            cache_misses=Duration.from_json(stats.get("cache_miss")),
        )


class Statistics:
    """See the module."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def get(self, name: str | None = None, version: int | None = None) -> tuple[VersionStatistics, ...]:
        """The statistics of every version of yours that is loaded or has served (no ``name``),
        of a model's versions (or of what a deployment routes to), or of one version."""
        path = "/v2/models"
        if name is not None:
            path += f"/{quote(name, safe='')}"
            if version is not None:
                path += f"/versions/{int(version)}"
        elif version is not None:
            raise ValueError("a version needs a model name")
        body = self._t.get(f"{path}/stats")
        return tuple(VersionStatistics.from_json(item) for item in body["model_stats"])
