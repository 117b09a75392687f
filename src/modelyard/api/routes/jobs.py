"""Jobs: ``/api/v1/jobs`` (submit, list, get, cancel, logs, live events as server-sent events)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Query, Request, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from modelyard.api.deps import PlatformDep, PrincipalDep
from modelyard.api.routing import JsonBodyRoute
from modelyard.api.schemas import ERRORS, PageOut, PageQ, SizeQ, page_out
from modelyard.core.jobs import JobEvent, JobInfo
from modelyard.core.pages import PageRequest
from modelyard.jobs.context import JobContext
from modelyard.jobs.runners import runner_for

__all__ = ["router", "job_out"]

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"], responses=ERRORS, route_class=JsonBodyRoute)

_POLL_S = 0.25
_KEEPALIVE_S = 15.0


class JobSubmit(BaseModel):
    """A job request. For ``type: "train"`` every training hyper-parameter may be given flat or
    under ``hyperparameters``; see docs/training.md for the fields."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [{
            "type": "train", "model_name": "digits-mlp", "dataset": "builtin:digits", "target": "target",
            "recipe": "mlp", "optimizer": "Adam", "learning_rate": 0.001, "epochs": 20,
        }]},
    )

    type: str = Field(default="train", description="train, optimize or evaluate")
    model_name: str | None = Field(default=None, description="the model the trained version joins")
    dataset: str | dict[str, str] | None = Field(
        default=None, description='a dataset name or id, "builtin:digits" or {"builtin": "digits"}'
    )
    hyperparameters: dict[str, Any] | None = None


class JobOut(BaseModel):
    id: str
    type: str
    state: str
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    progress: dict[str, Any] | None
    cancel_requested: bool
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class LogLine(BaseModel):
    id: int
    at: datetime
    level: str
    message: str


class LogsOut(BaseModel):
    items: list[LogLine]


def job_out(j: JobInfo) -> dict[str, Any]:
    return {
        "id": j.id, "type": j.type, "state": j.state, "params": j.params, "result": j.result,
        "error": j.error, "progress": j.progress, "cancel_requested": j.cancel_requested,
        "attempts": j.attempts, "created_at": j.created_at, "started_at": j.started_at,
        "finished_at": j.finished_at,
    }




@router.post("", response_model=JobOut, status_code=status.HTTP_202_ACCEPTED,
             summary="Submit a job (validated now, run by a job worker)")
async def submit_job(body: JobSubmit, platform: PlatformDep, principal: PrincipalDep) -> Any:
    principal.require("jobs:write")
    data = body.model_dump(exclude_unset=True)
    job_type = data.pop("type", "train")
    runner = runner_for(job_type)

    def work() -> JobInfo:
        params = runner.prepare(JobContext.of(platform), principal.tenant_id, data)
        return platform.jobs.submit(tenant_id=principal.tenant_id, type=job_type, params=params)

    return job_out(await anyio.to_thread.run_sync(work))


@router.get("", response_model=PageOut[JobOut], summary="List jobs, newest first")
async def list_jobs(
    platform: PlatformDep, principal: PrincipalDep, page: PageQ = 1, page_size: SizeQ = 50,
    state: Annotated[str | None, Query(description="queued | running | succeeded | failed | cancelled")] = None,
    type: Annotated[str | None, Query(description="job type, e.g. train")] = None,
) -> Any:
    principal.require("jobs:read")
    result = await anyio.to_thread.run_sync(
        lambda: platform.jobs.list(principal.tenant_id, PageRequest(page, page_size), state=state, type=type)
    )
    return page_out(result, job_out)


@router.get("/{job_id}", response_model=JobOut, summary="Get a job")
async def get_job(job_id: str, platform: PlatformDep, principal: PrincipalDep) -> Any:
    principal.require("jobs:read")
    return job_out(await anyio.to_thread.run_sync(platform.jobs.get, principal.tenant_id, job_id))


@router.post("/{job_id}/cancel", response_model=JobOut, summary="Cancel a job (a running one stops within an epoch)")
async def cancel_job(job_id: str, platform: PlatformDep, principal: PrincipalDep) -> Any:
    principal.require("jobs:write")
    return job_out(await anyio.to_thread.run_sync(platform.jobs.cancel, principal.tenant_id, job_id))


@router.get("/{job_id}/logs", response_model=LogsOut, summary="A job's log lines")
async def job_logs(
    job_id: str, platform: PlatformDep, principal: PrincipalDep,
    after: Annotated[int, Query(ge=0, description="only lines with id > after")] = 0,
) -> Any:
    principal.require("jobs:read")
    events = await anyio.to_thread.run_sync(
        lambda: platform.jobs.events(principal.tenant_id, job_id, after=after, limit=10_000, kinds=("log",))
    )
    return {"items": [
        {"id": e.id, "at": e.at, "level": e.data.get("level", "info"), "message": e.data.get("message", "")}
        for e in events
    ]}


def _sse(event: JobEvent) -> str:
    return f"id: {event.id}\nevent: {event.kind}\ndata: {json.dumps(event.data)}\n\n"


@router.get(
    "/{job_id}/events",
    summary="Live progress as server-sent events (ends when the job ends)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": (
        "`event: progress|log|state` with JSON `data`, `id` the event id (resume with `Last-Event-ID`"
        " or `?after=`); a final `event: end` carries the job's state.")}},
)
async def job_events(
    job_id: str, request: Request, platform: PlatformDep, principal: PrincipalDep,
    after: Annotated[int, Query(ge=0, description="only events with id > after")] = 0,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    principal.require("jobs:read")
    tenant = principal.tenant_id
    await anyio.to_thread.run_sync(platform.jobs.get, tenant, job_id)
    start = int(last_event_id) if last_event_id and last_event_id.isdigit() else after

    async def stream() -> AsyncIterator[str]:
        last, quiet_since = start, time.monotonic()
        while True:
            events = await anyio.to_thread.run_sync(lambda: platform.jobs.events(tenant, job_id, after=last))
            for event in events:
                last = event.id
                yield _sse(event)
            if events:
                quiet_since = time.monotonic()
                continue
            job = await anyio.to_thread.run_sync(platform.jobs.get, tenant, job_id)
            if job.done:
                tail = await anyio.to_thread.run_sync(lambda: platform.jobs.events(tenant, job_id, after=last))
                for event in tail:
                    yield _sse(event)
                yield f"event: end\ndata: {json.dumps({'state': job.state, 'error': job.error})}\n\n"
                return
            if await request.is_disconnected():
                return
            if time.monotonic() - quiet_since > _KEEPALIVE_S:
                quiet_since = time.monotonic()
                yield ": keep-alive\n\n"
            await asyncio.sleep(_POLL_S)

    return StreamingResponse(
        stream(), media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
