"""The app factory: ``create_app(settings)`` builds the FastAPI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from modelyard import __version__
from modelyard.api.errors import install_error_handlers
from modelyard.api.middleware import AuditMiddleware, RequestIdMiddleware
from modelyard.api.routes import audit, keys, tenants, usage
from modelyard.api.openai import routes as openai_routes
from modelyard.api.routes import deployments, models, server
from modelyard.api.routes import datasets as datasets_routes, jobs as jobs_routes
from modelyard.api.routes import compare as compare_routes, residency as residency_routes
from modelyard.api.routes import console as console_routes
from modelyard.api.v2 import log_settings, repository, routes as v2, shared_memory, statistics as v2_statistics, trace
from modelyard.api.v2.infer import InferenceFastPath
from modelyard.config import Settings
from modelyard.core.platform import Platform

__all__ = ["create_app"]

_DESCRIPTION = """
ModelYard serves models as authenticated, metered network APIs.

* **Management API** under `/api/v1` (this document).
* **Open Inference Protocol v2** under `/v2` (KServe / Triton compatible, JSON and binary tensors).
* **Prometheus metrics** at `/metrics`.

Every route except `/v2/health/*` needs `Authorization: Bearer <API key>`.
Errors are always `{"error": {"code": "...", "message": "..."}}`.
"""


def create_app(settings: Settings, *, platform: Platform | None = None) -> FastAPI:
    """Build the HTTP application. With ``platform`` given, the caller owns its lifetime."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = platform is None
        app.state.platform = platform or Platform.open(settings)
        try:
            yield
        finally:
            if owned:
                await app.state.platform.aclose()

    app = FastAPI(
        title="ModelYard",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=lifespan,
    )
    if platform is not None:
        app.state.platform = platform
    install_error_handlers(app)
    app.include_router(v2.health_router)
    app.include_router(v2_statistics.router)  # before v2.router: /v2/models/stats is not a model
    app.include_router(v2.router)
    app.include_router(repository.router)
    app.include_router(log_settings.router)
    app.include_router(shared_memory.router)
    app.include_router(trace.router)
    app.include_router(openai_routes.upstream_router)
    app.include_router(models.router)
    app.include_router(residency_routes.router)
    app.include_router(deployments.router)
    app.include_router(openai_routes.router)
    app.include_router(server.router)
    app.include_router(datasets_routes.router)
    app.include_router(jobs_routes.router)
    app.include_router(compare_routes.router)
    for tenancy_router in (tenants.router, keys.router, usage.router, audit.router):
        app.include_router(tenancy_router)
    if settings.console:
        app.include_router(console_routes.router)
    app.add_middleware(InferenceFastPath)
    app.add_middleware(AuditMiddleware)
    app.add_middleware(RequestIdMiddleware)
    return app
