"""Request dependencies: the platform and the authenticated principal."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from modelyard.core.keys import bearer_token
from modelyard.core.platform import Platform
from modelyard.core.principal import Principal

__all__ = ["get_platform", "platform_of", "authenticate", "PlatformDep", "PrincipalDep", "bearer_token"]

_bearer = HTTPBearer(auto_error=False, description="A ModelYard API key: `Authorization: Bearer my_...`")


def platform_of(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


async def get_platform(request: Request) -> Platform:
    """Dependency form of :func:`platform_of` (async, so FastAPI runs it without a thread hop)."""
    return platform_of(request)


async def authenticate(
    request: Request,
    _creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Authenticate the caller from ``Authorization: Bearer <key>`` (the DB lookup runs in a
    thread; recently seen keys are answered from the key service's short cache)."""
    platform = platform_of(request)
    token = bearer_token(request.headers.get("authorization"))
    principal = await platform.keys.authenticate_async(token)
    request.state.principal = principal
    return principal


PlatformDep = Annotated[Platform, Depends(get_platform)]
PrincipalDep = Annotated[Principal, Depends(authenticate)]
