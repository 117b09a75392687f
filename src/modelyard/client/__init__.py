"""The ModelYard Python SDK: ``Client`` and the shapes it returns.

Imports only httpx, numpy and the transport-independent parts of ModelYard (errors, tensors,
the OIP v2 wire codec); never the server side (FastAPI, SQLAlchemy, ONNX Runtime, torch).
"""

from __future__ import annotations

from modelyard.client._client import Client
from modelyard.client._inference import ModelMetadata
from modelyard.client._models import STAGES, Model, Models, ModelVersion, TensorInfo
from modelyard.client._transport import DEFAULT_URL, Transport

__all__ = [
    "Client",
    "DEFAULT_URL",
    "Model",
    "ModelMetadata",
    "ModelVersion",
    "Models",
    "STAGES",
    "TensorInfo",
    "Transport",
]
