"""The ModelYard Python SDK: ``Client`` and the shapes it returns.

Imports only httpx, numpy and the transport-independent parts of ModelYard (errors, tensors,
the OIP v2 wire codec); never the server side (FastAPI, SQLAlchemy, ONNX Runtime, torch).

Adding a resource: write ``_<feature>.py`` with a class whose constructor takes the
:class:`Transport` (use its ``get``/``post``/``patch``/``delete``/``paginate``/``request``
helpers; they raise the typed errors), return frozen dataclasses, and expose it on
:class:`Client` as a ``cached_property`` returning ``Feature(self._transport)``.
"""

from __future__ import annotations

from modelyard.client._client import Client
from modelyard.client._datasets import Dataset, Datasets
from modelyard.client._deployments import Deployment, Deployments
from modelyard.client._inference import ModelMetadata
from modelyard.client._jobs import Job, JobEvent, Jobs
from modelyard.client._llm import LanguageModels
from modelyard.client._memory import LoadedVersion, Memory, MemoryReport, Residency
from modelyard.client._models import STAGES, Model, Models, ModelVersion, TensorInfo
from modelyard.client._optimize import Comparison, Optimize, OptimizeJob
from modelyard.client._statistics import Duration, Statistics, VersionStatistics
from modelyard.client._traces import TraceSummary, Traces, summarize
from modelyard.client._tenancy import ApiKey, Audit, AuditEntry, CreatedKey, Keys, Tenant, Tenants, Usage, UsageRecord, UsageReport
from modelyard.client._transport import DEFAULT_URL, Transport

__all__ = [
    "ApiKey",
    "Audit",
    "AuditEntry",
    "Client",
    "Comparison",
    "CreatedKey",
    "DEFAULT_URL",
    "Dataset",
    "Datasets",
    "Deployment",
    "Deployments",
    "Duration",
    "Job",
    "JobEvent",
    "Jobs",
    "Keys",
    "LanguageModels",
    "LoadedVersion",
    "Memory",
    "MemoryReport",
    "Model",
    "ModelMetadata",
    "ModelVersion",
    "Models",
    "Optimize",
    "OptimizeJob",
    "Residency",
    "STAGES",
    "Statistics",
    "TensorInfo",
    "Tenant",
    "Tenants",
    "TraceSummary",
    "Traces",
    "Transport",
    "Usage",
    "UsageRecord",
    "UsageReport",
    "VersionStatistics",
    "summarize",
]
