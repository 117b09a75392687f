"""Triton's logging extension over REST (gRPC: ``LogSettings`` in ``grpc/servicer.py``):
``GET /v2/logging`` reads the server's log settings, ``POST /v2/logging`` changes them
(administrators); see ``core/log_settings.py`` for what they mean here."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from modelyard.api.deps import PlatformDep, PrincipalDep
from modelyard.api.errors import ERROR_SCHEMA
from modelyard.errors import BadRequest

__all__ = ["router"]

router = APIRouter(prefix="/v2/logging", tags=["OIP v2"], responses={code: ERROR_SCHEMA for code in (400, 401, 403)})


@router.get("", summary="The server's log settings (Triton)")
async def get_log_settings(platform: PlatformDep, principal: PrincipalDep) -> JSONResponse:
    return JSONResponse(platform.log_settings.get(principal))


@router.post("", summary="Change the server's log settings (Triton; administrators)")
async def update_log_settings(request: Request, platform: PlatformDep, principal: PrincipalDep) -> JSONResponse:
    try:
        changes = json.loads(await request.body() or b"{}")
    except ValueError as exc:
        raise BadRequest(f"malformed JSON in the request body: {exc}") from None
    if not isinstance(changes, dict):
        raise BadRequest("the request body must be a JSON object of settings, e.g. {\"log_verbose_level\": 1}")
    return JSONResponse(platform.log_settings.update(principal, changes))
