"""The one error hierarchy of ModelYard.

Every error a caller can see is a subclass of :class:`ModelYardError` and carries its own wire
mapping: a stable ``code`` string, an HTTP status, a gRPC status name and a CLI exit code. The REST
API, the gRPC servicer, the OpenAI routes, the CLI and the SDK all render errors from these
attributes, so a given failure looks the same on every transport.

    ModelYardError                      500 internal
    ├── BadRequest                      400 bad_request
    │   ├── InvalidInput                400 invalid_input       (tensor name/dtype/shape/count)
    │   ├── InvalidArtifact             400 invalid_artifact    (not ONNX, corrupt, checker failed)
    │   └── UnsafeContent               400 unsafe_content      (pickle, traversal, remote code)
    ├── Unauthenticated                 401 unauthenticated
    ├── PermissionDenied                403 permission_denied
    ├── NotFound                        404 not_found
    │   ├── ModelNotFound               404 model_not_found
    │   ├── VersionNotFound             404 version_not_found
    │   └── ... (dataset, job, deployment, tenant, key)
    ├── Conflict                        409 conflict
    ├── PayloadTooLarge                 413 payload_too_large
    ├── UnsupportedMediaType            415 unsupported_media_type
    ├── ValidationFailed                422 validation_failed
    ├── RateLimited                     429 rate_limited        (carries retry_after)
    ├── Upstream errors                 502 / 504
    ├── Unavailable                     503 unavailable         (carries retry_after)
    └── DeadlineExceeded                504 deadline_exceeded

5xx messages are generic on the wire: the detail stays in the server log.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "ModelYardError",
    "BadRequest",
    "InvalidInput",
    "InvalidArtifact",
    "UnsafeContent",
    "NotEnabled",
    "Unauthenticated",
    "PermissionDenied",
    "NotFound",
    "ModelNotFound",
    "VersionNotFound",
    "DatasetNotFound",
    "JobNotFound",
    "DeploymentNotFound",
    "TenantNotFound",
    "KeyNotFound",
    "Conflict",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "ValidationFailed",
    "RateLimited",
    "QueueFull",
    "Unavailable",
    "ModelNotReady",
    "UpstreamError",
    "UpstreamTimeout",
    "DeadlineExceeded",
    "InternalError",
    "error_for_code",
]


class ModelYardError(Exception):
    """Base of every error ModelYard shows to a caller.

    ``message`` is safe to show; for 5xx errors the wire message is replaced by a generic one.
    ``details`` is an optional JSON-able mapping (e.g. the offending ``field``).
    """

    code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500
    grpc_status: ClassVar[str] = "INTERNAL"
    exit_code: ClassVar[int] = 1

    def __init__(
        self,
        message: str = "",
        *,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message or self.__class__.__name__)
        self.message = message or self.__class__.__name__
        self.details = dict(details or {})
        self.retry_after = retry_after

    @property
    def retry_after_header(self) -> str | None:
        """``retry_after`` as a ``Retry-After`` value (whole seconds, at least 1), if any."""
        return None if self.retry_after is None else str(max(1, int(round(self.retry_after))))

    @property
    def public_message(self) -> str:
        """The message a caller may see; server errors never leak internals."""
        if self.http_status >= 500 and not isinstance(self, _SafeServerError):
            return "internal server error; see the server log"
        return self.message

    def to_body(self) -> dict[str, Any]:
        """The JSON body shared by every transport: ``{"error": {"code", "message"}}``."""
        body: dict[str, Any] = {"code": self.code, "message": self.public_message}
        if self.details and self.http_status < 500:
            body["details"] = self.details
        return {"error": body}


class _SafeServerError(ModelYardError):
    """A 5xx whose message is written for callers (no internals), so it is shown as is."""


class BadRequest(ModelYardError):
    code, http_status, grpc_status, exit_code = "bad_request", 400, "INVALID_ARGUMENT", 2


class InvalidInput(BadRequest):
    code = "invalid_input"


class InvalidArtifact(BadRequest):
    code = "invalid_artifact"


class UnsafeContent(BadRequest):
    code = "unsafe_content"


class NotEnabled(BadRequest):
    """The request needs a capability this server was started without (the message says how)."""

    code = "not_enabled"


class Unauthenticated(ModelYardError):
    code, http_status, grpc_status, exit_code = "unauthenticated", 401, "UNAUTHENTICATED", 3


class PermissionDenied(ModelYardError):
    code, http_status, grpc_status, exit_code = "permission_denied", 403, "PERMISSION_DENIED", 3


class NotFound(ModelYardError):
    code, http_status, grpc_status, exit_code = "not_found", 404, "NOT_FOUND", 4


class ModelNotFound(NotFound):
    code = "model_not_found"


class VersionNotFound(NotFound):
    code = "version_not_found"


class DatasetNotFound(NotFound):
    code = "dataset_not_found"


class JobNotFound(NotFound):
    code = "job_not_found"


class DeploymentNotFound(NotFound):
    code = "deployment_not_found"


class TenantNotFound(NotFound):
    code = "tenant_not_found"


class KeyNotFound(NotFound):
    code = "key_not_found"


class Conflict(ModelYardError):
    code, http_status, grpc_status, exit_code = "conflict", 409, "ALREADY_EXISTS", 5


class PayloadTooLarge(ModelYardError):
    code, http_status, grpc_status, exit_code = "payload_too_large", 413, "RESOURCE_EXHAUSTED", 2


class UnsupportedMediaType(ModelYardError):
    code, http_status, grpc_status, exit_code = "unsupported_media_type", 415, "INVALID_ARGUMENT", 2


class ValidationFailed(ModelYardError):
    code, http_status, grpc_status, exit_code = "validation_failed", 422, "INVALID_ARGUMENT", 2


class RateLimited(ModelYardError):
    code, http_status, grpc_status, exit_code = "rate_limited", 429, "RESOURCE_EXHAUSTED", 6


class QueueFull(RateLimited):
    code = "queue_full"


class Unavailable(_SafeServerError):
    code, http_status, grpc_status, exit_code = "unavailable", 503, "UNAVAILABLE", 7


class ModelNotReady(Unavailable):
    code = "model_not_ready"


class UpstreamError(_SafeServerError):
    code, http_status, grpc_status, exit_code = "upstream_error", 502, "UNAVAILABLE", 7


class UpstreamTimeout(_SafeServerError):
    code, http_status, grpc_status, exit_code = "upstream_timeout", 504, "DEADLINE_EXCEEDED", 7


class DeadlineExceeded(_SafeServerError):
    code, http_status, grpc_status, exit_code = "deadline_exceeded", 504, "DEADLINE_EXCEEDED", 7


class InternalError(ModelYardError):
    """An unexpected failure; the wire shows a generic message."""


def _all_subclasses(cls: type[ModelYardError]) -> list[type[ModelYardError]]:
    out: list[type[ModelYardError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


def error_for_code(code: str, http_status: int | None = None) -> type[ModelYardError]:
    """The error class for a wire ``code`` (used by the SDK to rebuild typed errors)."""
    for cls in [ModelYardError, *_all_subclasses(ModelYardError)]:
        if cls.code == code and not cls.__name__.startswith("_"):
            return cls
    if http_status is not None:
        for cls in _all_subclasses(ModelYardError):
            if cls.http_status == http_status and cls.__bases__[0] in (ModelYardError, _SafeServerError):
                return cls
    return ModelYardError
