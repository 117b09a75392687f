"""What a deployment is, as values: its routes (the first the primary, the others canaries), its
shadow, its rollback policy, and the deployment itself, with the parsers that check what a caller
sends for each (a bad field is :class:`~modelyard.errors.ValidationFailed` naming it).

Nothing here touches the database or the traffic: ``core/deployments.py`` stores deployments,
``core/deployment_traffic.py`` routes and counts their requests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from modelyard.core.names import check_name
from modelyard.core.rollout import Rollout
from modelyard.errors import ValidationFailed

__all__ = [
    "Route", "Shadow", "RollbackPolicy", "Deployment", "parse_routes", "parse_shadow", "parse_rollback",
    "MAX_P99_MS", "MAX_P99_RATIO",
]

#: the highest latency limit a rollback policy takes (an hour), and the highest ratio to the primary's
MAX_P99_MS = 3_600_000.0
MAX_P99_RATIO = 1000.0
_POLICY_KEYS = ("max_error_rate", "window_s", "min_requests", "max_p99_ms", "max_p99_ratio")



@dataclass(frozen=True, slots=True)
class Route:
    """Send ``weight`` (relative) of the traffic to ``model`` version ``version``."""

    model: str
    version: int
    weight: float = 100.0
    #: ``model:version``, made once: a deployment's every request looks its statistics up by it
    label: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "label", f"{self.model}:{self.version}")

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "weight": self.weight}


@dataclass(frozen=True, slots=True)
class Shadow:
    """Mirror ``share`` (0..1) of the requests to ``model`` version ``version``."""

    model: str
    version: int
    share: float = 1.0

    @property
    def label(self) -> str:
        return f"{self.model}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "share": self.share}


@dataclass(frozen=True, slots=True)
class RollbackPolicy:
    """Roll back when a canary's error rate over ``window_s`` exceeds ``max_error_rate``, or the
    99th percentile of its answers' latencies over the window exceeds ``max_p99_ms``
    milliseconds, or ``max_p99_ratio`` times the primary's (each where set), with at least
    ``min_requests`` requests (answers, for the latency; the primary's too, for the ratio) in
    the window."""

    max_error_rate: float = 0.5
    window_s: float = 60.0
    min_requests: int = 10
    max_p99_ms: float | None = None
    max_p99_ratio: float | None = None

    @property
    def watches_latency(self) -> bool:
        return self.max_p99_ms is not None or self.max_p99_ratio is not None

    def to_dict(self) -> dict[str, Any]:
        return {"max_error_rate": self.max_error_rate, "window_s": self.window_s, "min_requests": self.min_requests,
                "max_p99_ms": self.max_p99_ms, "max_p99_ratio": self.max_p99_ratio}


@dataclass(frozen=True, slots=True)
class Deployment:
    id: str
    tenant_id: str
    name: str
    description: str
    routes: tuple[Route, ...]
    shadow: Shadow | None
    serving: dict[str, Any]
    rollback: RollbackPolicy | None
    events: tuple[dict[str, Any], ...]
    revision: int
    created_at: datetime
    updated_at: datetime
    #: a progressive rollout under way (``core/rollout.py``)
    rollout: Rollout | None = None

    @property
    def primary(self) -> Route:
        return self.routes[0]


# -- parsing and validation ---------------------------------------------------------------------


def parse_routes(raw: Any) -> tuple[Route, ...]:
    if not isinstance(raw, list) or not raw:
        raise ValidationFailed("routes must be a non-empty list", details={"field": "routes"})
    if len(raw) > 16:
        raise ValidationFailed("a deployment has at most 16 routes", details={"field": "routes"})
    routes: list[Route] = []
    for i, item in enumerate(raw):
        data = item.to_dict() if isinstance(item, Route) else item
        if not isinstance(data, Mapping) or set(data) - {"model", "version", "weight"}:
            raise ValidationFailed("each route is {model, version, weight}", details={"field": f"routes.{i}"})
        try:
            route = Route(
                model=check_name(str(data["model"]), field=f"routes.{i}.model"),
                version=int(data["version"]),
                weight=float(data.get("weight", 100.0)),
            )
        except (KeyError, TypeError, ValueError):
            raise ValidationFailed(
                "each route needs a model name, a version number and a weight", details={"field": f"routes.{i}"}
            ) from None
        if route.weight < 0 or route.weight > 1e6:
            raise ValidationFailed("weights are between 0 and 1e6", details={"field": f"routes.{i}.weight"})
        routes.append(route)
    if sum(r.weight for r in routes) <= 0:
        raise ValidationFailed("at least one route needs a positive weight", details={"field": "routes"})
    if len({r.label for r in routes}) != len(routes):
        raise ValidationFailed("a version appears in two routes", details={"field": "routes"})
    return tuple(routes)


def parse_shadow(raw: Any) -> Shadow | None:
    if raw is None:
        return None
    data = raw.to_dict() if isinstance(raw, Shadow) else raw
    if not isinstance(data, Mapping) or set(data) - {"model", "version", "share"}:
        raise ValidationFailed("shadow is {model, version, share}", details={"field": "shadow"})
    try:
        shadow = Shadow(
            model=check_name(str(data["model"]), field="shadow.model"),
            version=int(data["version"]),
            share=float(data.get("share", 1.0)),
        )
    except (KeyError, TypeError, ValueError):
        raise ValidationFailed("shadow needs a model name, a version number and a share", details={"field": "shadow"}) from None
    if not 0 <= shadow.share <= 1:
        raise ValidationFailed("shadow.share is between 0 and 1", details={"field": "shadow.share"})
    return shadow


def parse_rollback(raw: Any) -> RollbackPolicy | None:
    if raw is None:
        return None
    data = raw.to_dict() if isinstance(raw, RollbackPolicy) else raw
    if not isinstance(data, Mapping) or set(data) - set(_POLICY_KEYS):
        raise ValidationFailed(f"rollback is {{{', '.join(_POLICY_KEYS)}}}", details={"field": "rollback"})
    try:
        latency, ratio = data.get("max_p99_ms"), data.get("max_p99_ratio")
        policy = RollbackPolicy(
            max_error_rate=float(data.get("max_error_rate", 0.5)),
            window_s=float(data.get("window_s", 60.0)),
            min_requests=int(data.get("min_requests", 10)),
            max_p99_ms=None if latency is None else float(latency),
            max_p99_ratio=None if ratio is None else float(ratio),
        )
    except (TypeError, ValueError):
        raise ValidationFailed("rollback settings must be numbers", details={"field": "rollback"}) from None
    if not 0 <= policy.max_error_rate <= 1 or not 0 < policy.window_s <= 86_400 or not 1 <= policy.min_requests <= 1_000_000:
        raise ValidationFailed("rollback settings are out of range", details={"field": "rollback"})
    if policy.max_p99_ms is not None and not 0 < policy.max_p99_ms <= MAX_P99_MS:
        raise ValidationFailed(f"rollback.max_p99_ms is the canary's slowest 1% in milliseconds, over 0 and at most "
                               f"{MAX_P99_MS:,.0f}", details={"field": "rollback.max_p99_ms"})
    if policy.max_p99_ratio is not None and not 1 <= policy.max_p99_ratio <= MAX_P99_RATIO:
        raise ValidationFailed(f"rollback.max_p99_ratio is how many times the primary's p99 the canary's may reach, "
                               f"1 to {MAX_P99_RATIO:g}", details={"field": "rollback.max_p99_ratio"})
    return policy
