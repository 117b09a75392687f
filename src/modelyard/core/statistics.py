"""Per-version inference statistics as a tenant sees them: Triton's statistics extension
(``GET /v2/models[/{m}[/versions/{v}]]/stats`` and gRPC ``ModelStatistics``).

The figures are kept by the serving engine and the data plane since the server started
(``modelyard/statistics.py``); this scopes them to the caller:

* no model named: every version of the caller's models that is loaded or has served a request
  since the server started;
* a model: those of its versions, or the version it serves now (with zeros) when none is;
* a model and a version: that version, with zeros when it has seen no request;
* a deployment's name (it is served at ``/v2/models/{deployment}``): the versions it routes to
  and mirrors to, each under its model's name, since a deployment's requests are counted on the
  version that answered them (those of models the caller's key may call; mirrored requests count
  in the shadow's queue and compute figures, not in its answered and failed ones, which are the
  callers' requests).

Each server counts its own requests: in a cluster, ask each server (or read ``/metrics``, which
Prometheus sums across them).
"""

from __future__ import annotations

from typing import Any

import anyio

from modelyard.core.inference import DataPlane
from modelyard.core.principal import Principal
from modelyard.core.registry import Registry, VersionInfo
from modelyard.errors import ModelNotFound
from modelyard.statistics import Duration, StatisticsSnapshot

__all__ = ["Statistics"]

_ZERO = Duration()


class Statistics:
    """See the module. Answers Triton's ``$stats_model_response`` shape: ``{"model_stats": [...]}``."""

    def __init__(self, dataplane: DataPlane, registry: Registry) -> None:
        self._dataplane = dataplane
        self._registry = registry

    async def report(self, principal: Principal, name: str | None = None, version: str | None = None) -> dict[str, Any]:
        """The statistics of the versions ``name`` and ``version`` select (see the module)."""
        principal.require("models:read")
        memory = self._memory()
        if name is None:
            versions = [info for info in await self._tenant_versions(principal) if self._active(info, memory)]
        elif version is not None:
            versions = [await self._resolve(principal, name, version)]
        else:
            versions = await self._model_versions(principal, name, memory)
        return {"model_stats": [self._model_stat(info, memory.get(info.key, 0)) for info in versions]}

    # -- which versions ---------------------------------------------------------------------
    async def _model_versions(self, principal: Principal, name: str, memory: dict[str, int]) -> list[VersionInfo]:
        # a deployment first, as /v2/models/{name}/infer without a version goes to it
        traffic = await self._dataplane.deployment(principal, name)
        if traffic is not None:
            deployment = traffic.deployment
            routes = [(route.model, route.version) for route in deployment.routes]
            if deployment.shadow is not None:
                routes.append((deployment.shadow.model, deployment.shadow.version))
            # only the models the caller's key may call itself (as inference through it checks)
            return [
                await anyio.to_thread.run_sync(self._registry.get_version, principal.tenant_id, model, number)
                for model, number in dict.fromkeys(routes) if principal.in_scope(model)
            ]
        if not principal.in_scope(name):
            raise ModelNotFound(f"model {name!r} not found")
        versions = await anyio.to_thread.run_sync(self._registry.tenant_versions, principal.tenant_id, (name,))
        if not versions:
            raise ModelNotFound(f"model {name!r} not found")
        active = [info for info in versions if self._active(info, memory)]
        return active or [await self._resolve(principal, name, None)]

    async def _resolve(self, principal: Principal, name: str, version: str | None) -> VersionInfo:
        if not principal.in_scope(name):
            raise ModelNotFound(f"model {name!r} not found")
        return await anyio.to_thread.run_sync(self._registry.resolve, principal.tenant_id, name, version)

    async def _tenant_versions(self, principal: Principal) -> list[VersionInfo]:
        return await anyio.to_thread.run_sync(self._registry.tenant_versions, principal.tenant_id, principal.scopes)

    def _active(self, info: VersionInfo, memory: dict[str, int]) -> bool:
        return info.key in memory or self._dataplane.metrics.statistics_of(info.key) is not None

    # -- the figures ------------------------------------------------------------------------
    def _memory(self) -> dict[str, int]:
        """Memory each loaded version holds now, by version key (over its isolation modes)."""
        memory: dict[str, int] = {}
        for model in self._dataplane.manager.loaded():
            memory[model.source.key] = memory.get(model.source.key, 0) + model.memory_bytes
        return memory

    def _model_stat(self, info: VersionInfo, memory: int) -> dict[str, Any]:
        snapshot = self._dataplane.metrics.statistics_of(info.key) or StatisticsSnapshot(
            last_inference_ms=0, inference_count=0, execution_count=0, success=_ZERO, fail=_ZERO, queue=_ZERO,
            compute_infer=_ZERO,
        )
        return {
            "name": info.model_name,
            "version": str(info.version),
            "last_inference": snapshot.last_inference_ms,
            "inference_count": snapshot.inference_count,
            "execution_count": snapshot.execution_count,
            "inference_stats": {
                "success": snapshot.success.as_dict(),
                "fail": snapshot.fail.as_dict(),
                "queue": snapshot.queue.as_dict(),
                # ModelYard times a batch as one step: merging its inputs and splitting its
                # outputs are inside compute_infer
                "compute_input": _ZERO.as_dict(),
                "compute_infer": snapshot.compute_infer.as_dict(),
                "compute_output": _ZERO.as_dict(),
                "cache_hit": _ZERO.as_dict(),
                "cache_miss": _ZERO.as_dict(),
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": _ZERO.as_dict(),
                    "compute_infer": duration.as_dict(),
                    "compute_output": _ZERO.as_dict(),
                }
                for size, duration in snapshot.batches.items()
            ],
            "memory_usage": [{"type": "CPU", "id": 0, "byte_size": memory}] if memory else [],
        }
