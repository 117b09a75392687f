"""Which model versions are in memory, and the calls that change it.

The model manager loads a version on its first request and unloads the least recently used idle
ones when a load would exceed the memory budget (``engine/manager.py``). This is the tenant-facing
side of it:

* :meth:`Residency.loaded`: the caller's versions in memory, with their memory, requests in
  flight, queue and idle time, and the server's budget;
* :meth:`Residency.load`: load a version ahead of its traffic (warm-up included), so its first
  request does not pay for the load; with ``pin``, keep it loaded whatever the budget until it is
  unloaded. Pinning takes memory from every tenant, so it is an administrator's call
  (``models:pin``); a plain load stays evictable like any version;
* :meth:`Residency.unload`: unload a version now (requests in flight finish first; its next
  request loads it again). A pinned version is unloaded only by a caller who may unpin it;
* :meth:`Residency.index`: every version of the caller's models with its state, the shape of
  Triton's model repository index (``POST /v2/repository/index``).

A pin is recorded with the version: a server that starts loads its pinned versions before it
answers (:meth:`Residency.restore_pins`), and every ``pin_sync_s`` seconds takes the pins and
unpins made on the other servers of its cluster (:meth:`Residency.follow_pins`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import anyio

from modelyard.core.config_override import serving_from_triton
from modelyard.core.inference import DataPlane
from modelyard.core.principal import Principal
from modelyard.core.registry import Registry, VersionInfo
from modelyard.errors import BadRequest, Conflict, ModelNotFound

__all__ = ["Residency", "LoadedVersion", "refuse_model_files"]

log = logging.getLogger(__name__)


def refuse_model_files(parameters: Iterable[str]) -> None:
    """Triton's load call may carry the files of a model directory (``file:...``); ModelYard
    loads versions from its registry, so such a load is a :class:`BadRequest` that says where
    models come from (REST and gRPC alike). A model configuration (``config``) is taken: see
    :meth:`Residency.load`."""
    if any(str(name).startswith("file:") for name in parameters):
        raise BadRequest(
            "ModelYard loads versions from its registry: push the model with POST /api/v1/models/{name}/versions "
            "(or modelyard models push) instead of files in the load call"
        )


@dataclass(frozen=True, slots=True)
class LoadedVersion:
    """A version in memory, as its tenant sees it."""

    model: str
    version: int
    memory_bytes: int
    pinned: bool
    in_flight: int
    queue_depth: int
    idle_s: float
    load_seconds: float
    isolation: str
    #: unloaded after this long without a request (0: never; a pinned version stays)
    idle_unload_s: float = 0.0


class Residency:
    """See the module. Every call is scoped to the caller's tenant (and its key's models)."""

    def __init__(self, dataplane: DataPlane, registry: Registry) -> None:
        self._dataplane = dataplane
        self._registry = registry
        self._changes = 0  # pins and unpins made here (see sync_pins)

    @property
    def budget_bytes(self) -> int:
        return self._dataplane.manager.memory_budget

    @property
    def in_use_bytes(self) -> int:
        """Memory of every version loaded, all tenants together (what the budget counts)."""
        return self._dataplane.manager.memory_in_use

    async def loaded(self, principal: Principal) -> list[LoadedVersion]:
        """The caller's versions in memory, by model name and version."""
        principal.require("models:read")
        in_memory = self._dataplane.manager.loaded_by_version()
        if not in_memory:
            return []
        versions = await self.versions(principal)
        now = time.monotonic()
        out = []
        for info in versions:
            for model in in_memory.get(info.key, ()):
                out.append(LoadedVersion(
                    model=info.model_name, version=info.version, memory_bytes=model.memory_bytes,
                    pinned=model.pinned, in_flight=model.in_flight,
                    queue_depth=sum(b.queue_depth for b in list(model.batchers.values())),
                    idle_s=0.0 if model.in_flight else round(max(0.0, now - model.last_used), 3),
                    load_seconds=round(model.load_seconds, 3),
                    isolation="process" if model.source.isolated else "thread",
                    idle_unload_s=model.idle_unload_s,
                ))
        return out

    async def index(self, principal: Principal, *, ready_only: bool = False) -> list[dict[str, str]]:
        """Every version of the caller's models: ``{"name", "version", "state", "reason"}``,
        ``READY`` when loaded, else ``UNAVAILABLE`` (reason ``unloaded``; it loads on its first
        request)."""
        principal.require("models:read")
        in_memory = self._dataplane.manager.loaded_by_version()
        rows = []
        for info in await self.versions(principal):
            ready = info.key in in_memory
            if ready or not ready_only:
                rows.append({"name": info.model_name, "version": str(info.version),
                             "state": "READY" if ready else "UNAVAILABLE", "reason": "" if ready else "unloaded"})
        return rows

    async def load(
        self, principal: Principal, name: str, version: str | None, *, pin: bool = False, config: Any = None
    ) -> VersionInfo:
        """Load the version ``name`` ``version`` names (the served one without a version) with
        its serving settings, warm it up, and with ``pin`` keep it loaded (see the module).
        ``config``: a Triton model configuration (JSON text, as ``load_model(config=...)``
        sends it) whose serving settings become the model's first (``core/config_override.py``;
        it needs ``models:write``)."""
        principal.require("models:load")
        if pin:
            principal.require("models:pin")
        info = await self.version(principal, name, version)
        if config is not None:
            principal.require("models:write")
            serving = serving_from_triton(config, name)
            await anyio.to_thread.run_sync(self._registry.set_model_serving, info.tenant_id, name, serving)
            info = await self.version(principal, name, version)  # its record with the new settings
        if not pin:
            await self._dataplane.load(info)
            return info
        was_pinned = info.pinned
        # recorded and pinned before the load, so the budget cannot take it back in between
        info = await self._set_pinned(info, True)
        try:
            await self._dataplane.load(info)
        except BaseException:
            if not was_pinned:  # a pin that never loaded is not left behind
                await self._set_pinned(info, False)
            raise
        return info

    async def _set_pinned(self, info: VersionInfo, pinned: bool) -> VersionInfo:
        self._changes += 1
        info = await anyio.to_thread.run_sync(
            self._registry.set_pinned, info.tenant_id, info.model_name, info.version, pinned
        )
        self._dataplane.manager.pin(info.key, pinned)
        return info

    async def restore_pins(self) -> int:
        """Pin and load every version pinned before the server (re)started; returns how many
        loaded. One that fails to load is logged and left for its first request."""
        loaded, _ = await self.sync_pins()
        return loaded

    async def sync_pins(self) -> tuple[int, int]:
        """Make this server's pins the recorded ones: pin and load each version pinned since
        (on another server of a cluster, or before this one started), and unpin each version
        unpinned elsewhere (it stays loaded, evictable again). Returns (loaded, unpinned). A
        version that fails to load stays pinned here, so it is not retried every round; it loads
        on its first request.

        A pin or unpin made on this server while the records are read wins: the round leaves
        everything as it is and the next one sees the new record."""
        manager = self._dataplane.manager
        changes = self._changes
        pinned_here = manager.pinned_keys()
        recorded = {info.key: info for info in await anyio.to_thread.run_sync(self._registry.pinned_versions)}
        if changes != self._changes:
            return 0, 0
        unpinned = 0
        for key in pinned_here - recorded.keys():
            manager.pin(key, False)
            unpinned += 1
        new = [info for key, info in recorded.items() if key not in pinned_here]
        for info in new:  # all pinned before the first await, so the round's view is applied whole
            manager.pin(info.key)
        loaded = 0
        for info in new:
            if not manager.is_pinned(info.key):
                continue  # unpinned here while the ones before it loaded: that wins
            try:
                await self._dataplane.load(info)
            except Exception as exc:
                log.warning("pinned %s version %d did not load: %s", info.model_name, info.version, exc)
            else:
                loaded += 1
        return loaded, unpinned

    async def follow_pins(self, every_s: float) -> None:
        """:meth:`sync_pins` every ``every_s`` seconds until cancelled (the server runs it, so
        a pin made on one server of a cluster reaches the others within that time)."""
        while True:
            await asyncio.sleep(every_s)
            try:
                loaded, unpinned = await self.sync_pins()
            except Exception as exc:  # the database away for a moment: try again next round
                log.warning("could not read the pinned versions: %s", exc)
                continue
            if loaded or unpinned:
                log.info("pins of other servers: %d version(s) pinned and loaded, %d unpinned", loaded, unpinned)

    async def unload(self, principal: Principal, name: str, version: str | None) -> VersionInfo:
        """Unload the version ``name`` ``version`` names (every isolation mode), unpinning it;
        requests in flight finish first. :class:`Conflict` for a pinned version when the caller
        may not unpin."""
        principal.require("models:load")
        info = await self.version(principal, name, version)
        manager = self._dataplane.manager
        if manager.is_pinned(info.key) or info.pinned:
            if not principal.can("models:pin"):
                raise Conflict(
                    f"{info.model_name} version {info.version} is pinned: only an administrator may unload it"
                )
            info = await self._set_pinned(info, False)
        manager.unload(info.key, reason="unloaded")
        return info

    # -- the caller's versions -----------------------------------------------------------------
    async def version(self, principal: Principal, name: str, version: str | None) -> VersionInfo:
        """The version ``name`` ``version`` names in the caller's tenant (the served one without a
        version); :class:`ModelNotFound` for a model outside the key's scope. No permission check."""
        if not principal.in_scope(name):
            raise ModelNotFound(f"model {name!r} not found")
        return await anyio.to_thread.run_sync(self._registry.resolve, principal.tenant_id, name, version)

    async def versions(self, principal: Principal, names: tuple[str, ...] = ()) -> list[VersionInfo]:
        """Every version of the caller's models (its key's scope; with ``names``, of those only),
        by model name and version. No permission check."""
        scope = tuple(n for n in names if principal.in_scope(n)) if names else principal.scopes
        if names and not scope:
            return []
        return await anyio.to_thread.run_sync(self._registry.tenant_versions, principal.tenant_id, scope)
