"""Errors raised by the trainer, placed in the one hierarchy of :mod:`modelyard.errors`.

    ValidationFailed                    422 validation_failed
    └── TrainingFailed                  422 training_failed     (NaN/inf loss, export mismatch, worker died)
    ModelYardError
    └── TrainingCancelled               409 training_cancelled  (``should_stop`` returned True)
"""

from __future__ import annotations

from modelyard.errors import ModelYardError, ValidationFailed

__all__ = ["TrainingFailed", "TrainingCancelled"]


class TrainingFailed(ValidationFailed):
    """Training could not produce a usable model (diverged, export disagreed, a worker died).

    The message says what went wrong and, where it can, what to change (e.g. a lower learning rate).
    """

    code = "training_failed"


class TrainingCancelled(ModelYardError):
    """``should_stop`` asked the trainer to stop; the last epoch checkpoint stays in the workdir,
    so calling ``train`` again with the same workdir resumes from it."""

    code, http_status, grpc_status, exit_code = "training_cancelled", 409, "CANCELLED", 8
