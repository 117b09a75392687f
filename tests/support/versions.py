"""A stand-in for a ``VersionInfo`` where a unit test needs only what identifies a version
(the response cache, the tracer): its key, tenant and model."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class VersionStub:
    key: str = "v-1"
    tenant_id: str = "t"
    tenant_name: str = "team"
    model_name: str = "m"
    version: int = 1
