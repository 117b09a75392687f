"""Triton's logging extension over REST (gRPC: ``LogSettings`` in ``grpc/servicer.py``):
``GET /v2/logging`` reads the server's log settings, ``POST /v2/logging`` changes them
(administrators); see ``core/log_settings.py`` for what they mean here."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from modelyard.api.deps import PlatformDep, PrincipalDep
from modelyard.api.errors import ERROR_SCHEMA
from modelyard.api.routing import read_json_object

__all__ = ["router"]

router = APIRouter(prefix="/v2/logging", tags=["OIP v2"], responses={code: ERROR_SCHEMA for code in (400, 401, 403)})


@router.get("", summary="The server's log settings (Triton)")
async def get_log_settings(platform: PlatformDep, principal: PrincipalDep) -> JSONResponse:
    return JSONResponse(platform.log_settings.get(principal))


@router.post("", summary="Change the server's log settings (Triton; administrators)")
async def update_log_settings(request: Request, platform: PlatformDep, principal: PrincipalDep) -> JSONResponse:
    changes = await read_json_object(request, example='{"log_verbose_level": 1}')
    return JSONResponse(platform.log_settings.update(principal, changes))
