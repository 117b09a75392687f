"""Triton's trace extension over REST (gRPC: ``TraceSetting`` in ``grpc/servicer.py``):
``GET``/``POST /v2/trace/setting`` (the server's settings) and ``/v2/models/{m}/trace/setting``
(a model's, over the server's). Reading takes what reading the server's metadata takes (a model's:
the model must be the caller's); changing them, administrators. What the settings mean and where
traces go: ``core/tracing.py``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from modelyard.api.deps import PlatformDep, PrincipalDep
from modelyard.api.errors import ERROR_SCHEMA
from modelyard.api.routing import read_json_object

__all__ = ["router"]

router = APIRouter(prefix="/v2", tags=["OIP v2"], responses={code: ERROR_SCHEMA for code in (400, 401, 403, 404)})

_EXAMPLE = '{"trace_level": ["TIMESTAMPS"], "trace_rate": "100"}'


@router.get("/trace/setting", summary="The server's trace settings (Triton)")
async def get_trace_settings(platform: PlatformDep, principal: PrincipalDep) -> JSONResponse:
    return JSONResponse(platform.tracer.get(principal))


@router.post("/trace/setting", summary="Change the server's trace settings (Triton; administrators)")
async def update_trace_settings(request: Request, platform: PlatformDep, principal: PrincipalDep) -> JSONResponse:
    changes = await read_json_object(request, example=_EXAMPLE)
    return JSONResponse(platform.tracer.update(principal, changes))


@router.get("/models/{model_name}/trace/setting", summary="A model's trace settings (Triton)")
async def get_model_trace_settings(model_name: str, platform: PlatformDep, principal: PrincipalDep) -> JSONResponse:
    await platform.dataplane.resolve(principal, model_name, None)  # 404 unless the caller's
    return JSONResponse(platform.tracer.get(principal, model_name))


@router.post("/models/{model_name}/trace/setting", summary="Change a model's trace settings (Triton; administrators)")
async def update_model_trace_settings(
    model_name: str, request: Request, platform: PlatformDep, principal: PrincipalDep
) -> JSONResponse:
    changes = await read_json_object(request, example=_EXAMPLE)
    await platform.dataplane.resolve(principal, model_name, None)
    return JSONResponse(platform.tracer.update(principal, changes, model_name))
