"""``client.memory``: which of your model versions are in the server's memory, and loading,
pinning and unloading them ahead of traffic (``/api/v1/loaded`` and
``/api/v1/models/{name}/versions/{v}/load|unload``).

The server loads a version on its first request and unloads the least recently used idle ones to
stay within its memory budget. ``load`` spares a version's first caller the load; ``pin=True``
(administrators) keeps it loaded whatever the budget until it is unloaded; ``unload`` frees it
now (its next request loads it again).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import quote

from modelyard.client._transport import Transport

__all__ = ["Memory", "MemoryReport", "LoadedVersion", "Residency"]


@dataclass(frozen=True, slots=True)
class LoadedVersion:
    """A version in memory: its memory, whether it is pinned, its requests in flight and queued,
    how long it has been idle, how long its load took, and after how long idle it is unloaded
    (``idle_unload_s``, 0: never)."""

    model: str
    version: int
    memory_bytes: int
    pinned: bool
    in_flight: int
    queue_depth: int
    idle_s: float
    load_seconds: float
    isolation: str
    idle_unload_s: float = 0.0

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LoadedVersion:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass(frozen=True, slots=True)
class MemoryReport:
    """The server's memory budget and use (all tenants together) and your versions in memory."""

    budget_bytes: int
    in_use_bytes: int
    versions: tuple[LoadedVersion, ...]


@dataclass(frozen=True, slots=True)
class Residency:
    """A version after a load or unload: whether it is loaded and pinned now."""

    model: str
    version: int
    loaded: bool
    pinned: bool


class Memory:
    """See the module."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def loaded(self) -> MemoryReport:
        body = self._t.get("/api/v1/loaded")
        return MemoryReport(body["budget_bytes"], body["in_use_bytes"],
                            tuple(LoadedVersion.from_json(item) for item in body["items"]))

    def load(self, name: str, version: int | None = None, *, pin: bool = False) -> Residency:
        """Load ``name`` ``version`` (default: the version ``name`` serves) now; ``pin`` keeps it
        loaded (administrators)."""
        path = f"{self._version_path(name, version)}/load"
        return Residency(**self._t.post(path, json={"pin": pin}))

    def unload(self, name: str, version: int | None = None) -> Residency:
        """Unload ``name`` ``version`` (default: the version ``name`` serves) now, unpinning it."""
        return Residency(**self._t.post(f"{self._version_path(name, version)}/unload"))

    def _version_path(self, name: str, version: int | None) -> str:
        path = f"/api/v1/models/{quote(name, safe='')}"
        if version is None:
            model = self._t.get(path)
            version = model["production_version"] or model["latest_version"]
        return f"{path}/versions/{int(version)}"  # type: ignore[arg-type]
