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
from modelyard.core.residency import Residency
from modelyard.errors import ModelNotFound
from modelyard.statistics import Duration, StatisticsSnapshot

__all__ = ["Statistics"]

_ZERO = Duration()


class Statistics:
    """See the module. Answers Triton's ``$stats_model_response`` shape: ``{"model_stats": [...]}``."""

    def __init__(self, dataplane: DataPlane, registry: Registry, residency: Residency) -> None:
        self._dataplane = dataplane
        self._registry = registry
        self._residency = residency  # the caller's versions, as the memory calls see them

    async def report(self, principal: Principal, name: str | None = None, version: str | None = None) -> dict[str, Any]:
        """The statistics of the versions ``name`` and ``version`` select (see the module)."""
        principal.require("models:read")
        memory = {key: sum(m.memory_bytes for m in models)
                  for key, models in self._dataplane.manager.loaded_by_version().items()}
        if name is None:
            versions = [info for info in await self._residency.versions(principal) if self._active(info, memory)]
        elif version is not None:
            versions = [await self._residency.version(principal, name, version)]
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
        versions = await self._residency.versions(principal, (name,))
        if not versions:
            raise ModelNotFound(f"model {name!r} not found")
        active = [info for info in versions if self._active(info, memory)]
        return active or [await self._residency.version(principal, name, None)]

    def _active(self, info: VersionInfo, memory: dict[str, int]) -> bool:
        return info.key in memory or self._dataplane.metrics.statistics.get(info.key) is not None

    # -- the figures ------------------------------------------------------------------------
    def _model_stat(self, info: VersionInfo, memory: int) -> dict[str, Any]:
        snapshot = self._dataplane.metrics.statistics_of(info.key) or StatisticsSnapshot()
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
                "cache_hit": snapshot.cache_hit.as_dict(),
                "cache_miss": snapshot.cache_miss.as_dict(),
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
