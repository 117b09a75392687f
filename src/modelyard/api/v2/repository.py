"""Triton's model repository extension over REST (gRPC: ``grpc/servicer.py``), so ``tritonclient``'s
``get_model_repository_index``, ``load_model`` and ``unload_model`` work:

* ``POST /v2/repository/index`` (body ``{"ready": true}`` optional): every version of the caller's
  models, ``READY`` when loaded, else ``UNAVAILABLE`` with reason ``unloaded``;
* ``POST /v2/repository/models/{name}/load``: load the version ``name`` serves (production, else
  the latest) now, with its warm-up. With a model configuration (``{"parameters": {"config":
  "<JSON>"}}``, ``load_model(name, config=...)``), its serving settings become the model's first
  (``core/config_override.py``). ModelYard loads versions from its registry, so a load that
  carries files (Triton's override directory) is refused: push a version with ``/api/v1/models``;
* ``POST /v2/repository/models/{name}/unload``: unload the version ``name`` serves.

ModelYard keeps managing memory itself: a loaded version may still be evicted by the memory
budget (pin it with ``/api/v1/models/{name}/versions/{v}/load``), and an unloaded one loads again on
its next request.
"""

from __future__ import annotations


from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from modelyard.api.deps import PlatformDep, PrincipalDep
from modelyard.api.errors import ERROR_SCHEMA
from modelyard.api.routing import read_json_object
from modelyard.core.residency import refuse_model_files
from modelyard.errors import BadRequest

__all__ = ["router"]

router = APIRouter(
    prefix="/v2/repository", tags=["OIP v2"],
    responses={code: ERROR_SCHEMA for code in (400, 401, 403, 404, 409)},
)


@router.post("/index", summary="Every version of your models and whether it is loaded (Triton)")
async def index(request: Request, platform: PlatformDep, principal: PrincipalDep) -> JSONResponse:
    ready = (await read_json_object(request)).get("ready", False)
    if not isinstance(ready, bool):
        raise BadRequest("'ready' must be true or false")
    return JSONResponse(await platform.residency.index(principal, ready_only=ready))


@router.post("/models/{model_name}/load", summary="Load the version a model serves now (Triton)")
async def load(model_name: str, request: Request, platform: PlatformDep, principal: PrincipalDep) -> JSONResponse:
    parameters = (await read_json_object(request)).get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be a JSON object")
    refuse_model_files(parameters)
    await platform.residency.load(principal, model_name, None, config=parameters.get("config"))
    return JSONResponse({})


@router.post("/models/{model_name}/unload", summary="Unload the version a model serves (Triton)")
async def unload(model_name: str, request: Request, platform: PlatformDep, principal: PrincipalDep) -> JSONResponse:
    await read_json_object(request)  # {"parameters": {"unload_dependents": ...}}: a version has no dependents here
    await platform.residency.unload(principal, model_name, None)
    return JSONResponse({})
