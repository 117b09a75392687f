"""A request's scheduling parameters, as Triton's clients send them (its ``schedule_policy``
extension): ``timeout``, a deadline shorter than the version's, and ``priority``, its place among
the requests queued for the version (``engine/batcher.py``, "Priorities"), within the levels
the version declares (``priority_levels``, as in Triton's config), if it does. Both are checked
before anything is queued: a bad one is 400 naming the parameter. See docs/serving.md,
"Backpressure and time".
"""

from __future__ import annotations

from modelyard.engine.manager import ServingOptions
from modelyard.errors import InvalidInput
from modelyard.tensors import InferenceRequest

__all__ = ["request_priority", "request_timeout", "scheduling"]


def scheduling(request: InferenceRequest, options: ServingOptions) -> tuple[float | None, int]:
    """The deadline and the priority ``request`` asks for with its parameters (see
    :func:`request_timeout` and :func:`request_priority`)."""
    return request_timeout(request, options), request_priority(request, options)


def request_priority(request: InferenceRequest, options: ServingOptions) -> int:
    """The priority of ``request``: its ``priority`` parameter, as Triton's clients send it (1
    is the highest, then 2, ...). Where the version declares ``priority_levels``, 0, none or a
    level past them is its default level, as in Triton; else 0 or none is no priority, after
    every level (see the batcher)."""
    value = request.parameters.get("priority", 0)
    if type(value) is not int or not 0 <= value < 2**64:
        raise InvalidInput(
            f"the request parameter 'priority' must be a whole number (1 is the highest, then 2, ...; "
            f"0: the default), not {value!r}",
            details={"field": "parameters.priority"},
        )
    levels = options.priority_levels
    return value if not levels or 0 < value <= levels else options.default_priority


def request_timeout(request: InferenceRequest, options: ServingOptions) -> float | None:
    """The deadline of ``request``, in seconds: its ``timeout`` parameter (whole microseconds, as
    Triton's clients send it) where that is shorter than the version's ``timeout_s``; a caller
    may shorten its deadline, never extend it past what the operator set. Without the
    parameter, or 0 (Triton's "the model's own"): ``timeout_s``."""
    value = request.parameters.get("timeout")
    if value is None or value == 0 and type(value) is int:
        return options.timeout_s
    if type(value) is not int or value < 0:
        raise InvalidInput(
            f"the request parameter 'timeout' must be a whole number of microseconds (0: the model's "
            f"own deadline), not {value!r}",
            details={"field": "parameters.timeout"},
        )
    timeout_s = value / 1e6
    return timeout_s if options.timeout_s is None else min(timeout_s, options.timeout_s)
