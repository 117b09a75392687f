"""A request's scheduling parameters, as Triton's clients send them (its ``schedule_policy``
extension): ``timeout``, a deadline shorter than the version's, and ``priority``, its place among
the requests queued for the version (``engine/batcher.py``, "Priorities"), within the levels
the version declares (``priority_levels``, as in Triton's config), if it does. A level with a
queue policy of its own (``engine/queue_policy.py``) has its own queue bound and deadline.
ModelYard's own ``routing_key`` sends a deployment's requests with the same key to the same route
(``core/routing.py``, sticky routing); it is checked here with the others. Every parameter is
checked before anything is queued: a bad one is 400 naming the parameter. See docs/serving.md,
"Backpressure and time" and "Deployments".
"""

from __future__ import annotations

from modelyard.engine.manager import ServingOptions
from modelyard.engine.queue_policy import level_policy
from modelyard.errors import InvalidInput
from modelyard.tensors import InferenceRequest

__all__ = ["request_priority", "request_timeout", "routing_key", "scheduling", "ROUTING_KEY_MAX"]

#: the longest routing key, in characters
ROUTING_KEY_MAX = 256


def scheduling(request: InferenceRequest, options: ServingOptions) -> tuple[float | None, int, int | None]:
    """The deadline, the priority and the priority level's queue bound of ``request`` (see
    :func:`request_timeout` and :func:`request_priority`): what its parameters ask for within
    the version's settings, its level's queue policy included."""
    parameters = request.parameters
    priority = request_priority(request, options) if parameters else options.default_priority
    if parameters and "routing_key" in parameters and not _is_routing_key(key := parameters["routing_key"]):
        raise InvalidInput(
            f"the request parameter 'routing_key' must be text of 1 to {ROUTING_KEY_MAX} characters (a user or "
            f"session id: a deployment sends the requests with the same key to the same version), not {key!r:.80}",
            details={"field": "parameters.routing_key"},
        )
    limit, timeout_s = None, options.timeout_s
    if options.priority_queue_policy:
        limit, level_timeout_s = level_policy(options.priority_queue_policy, priority)
        if level_timeout_s is not None:
            timeout_s = level_timeout_s
    return request_timeout(request, timeout_s), priority, limit


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


def request_timeout(request: InferenceRequest, timeout_s: float | None) -> float | None:
    """The deadline of ``request``, in seconds: its ``timeout`` parameter (whole microseconds, as
    Triton's clients send it) where that is shorter than ``timeout_s``, the version's (or its
    priority level's); a caller may shorten its deadline, never extend it past what the
    operator set. Without the parameter, or 0 (Triton's "the model's own"): ``timeout_s``."""
    value = request.parameters.get("timeout")
    if value is None or value == 0 and type(value) is int:
        return timeout_s
    if type(value) is not int or value < 0:
        raise InvalidInput(
            f"the request parameter 'timeout' must be a whole number of microseconds (0: the model's "
            f"own deadline), not {value!r}",
            details={"field": "parameters.timeout"},
        )
    asked_s = value / 1e6
    return asked_s if timeout_s is None else min(asked_s, timeout_s)


def routing_key(request: InferenceRequest) -> str | None:
    """The request's ``routing_key`` when it is a usable one, else ``None`` (a deployment then
    picks the route at random; :func:`scheduling` refuses a bad key with 400 after the checks
    that come first, so the route is picked before the key is judged)."""
    key = request.parameters.get("routing_key") if request.parameters else None
    return key if _is_routing_key(key) else None


def _is_routing_key(value: object) -> bool:
    """Text of 1 to :data:`ROUTING_KEY_MAX` characters."""
    return isinstance(value, str) and 0 < len(value) <= ROUTING_KEY_MAX
