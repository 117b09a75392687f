"""ModelYard: a self-hosted AI model as a service platform.

The public surface is small on purpose: the SDK client, the error hierarchy and the settings.
Importing ``modelyard`` pulls in nothing heavy (no torch, no onnxruntime, no server).
"""

from __future__ import annotations

__version__ = "0.1.0"

from modelyard.errors import (
    BadRequest,
    Conflict,
    DeadlineExceeded,
    InvalidArtifact,
    InvalidInput,
    ModelNotFound,
    ModelYardError,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
    ValidationFailed,
    VersionNotFound,
)

__all__ = [
    "__version__",
    "Client",
    "ModelYardError",
    "BadRequest",
    "Conflict",
    "DeadlineExceeded",
    "InvalidArtifact",
    "InvalidInput",
    "ModelNotFound",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "RateLimited",
    "Unauthenticated",
    "Unavailable",
    "ValidationFailed",
    "VersionNotFound",
]


def __getattr__(name: str) -> object:
    # The SDK is imported lazily so that `import modelyard` stays cheap.
    if name == "Client":
        from modelyard.client import Client

        return Client
    raise AttributeError(name)
