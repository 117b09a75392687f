"""Triton's statistics extension over REST (gRPC: ``ModelStatistics`` in ``grpc/servicer.py``), so
``tritonclient``'s ``get_inference_statistics`` and tools built on it work:

* ``GET /v2/models/stats``: every version of the caller's models that is loaded or has served;
* ``GET /v2/models/{name}/stats``: the versions of one model (or of what a deployment routes to);
* ``GET /v2/models/{name}/versions/{version}/stats``: one version.

What each figure means is in ``docs/serving.md`` ("Statistics"); ``core/statistics.py`` chooses
the versions. Registered before the model metadata routes: as in Triton, ``/v2/models/stats`` is
this endpoint, so a model named ``stats`` has its metadata at ``/v2/models/stats/versions/{v}``.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import JSONResponse

from modelyard.api.deps import PlatformDep, PrincipalDep
from modelyard.api.errors import ERROR_SCHEMA

__all__ = ["router"]

router = APIRouter(prefix="/v2/models", tags=["OIP v2"], responses={code: ERROR_SCHEMA for code in (401, 403, 404)})


@router.get("/stats", summary="Statistics of your models' versions that are loaded or have served (Triton)")
async def all_statistics(platform: PlatformDep, principal: PrincipalDep) -> JSONResponse:
    return JSONResponse(await platform.statistics.report(principal))


@router.get("/{model_name}/stats", summary="Statistics of a model's versions (Triton)")
async def model_statistics(model_name: str, platform: PlatformDep, principal: PrincipalDep) -> JSONResponse:
    return JSONResponse(await platform.statistics.report(principal, model_name))


@router.get("/{model_name}/versions/{model_version}/stats", summary="Statistics of a model version (Triton)")
async def version_statistics(
    model_name: str, model_version: str, platform: PlatformDep, principal: PrincipalDep
) -> JSONResponse:
    return JSONResponse(await platform.statistics.report(principal, model_name, model_version))
