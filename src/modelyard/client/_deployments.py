"""``client.deployments``: named endpoints with canary weights, a shadow and serving settings.

A deployment ``web`` is called like a model: ``client.predict("web", x)``, ``/v2/models/web/infer``
or a Triton client with model name ``web``. Its first route is the primary; others are canaries.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from modelyard.client._transport import Transport

__all__ = ["Deployments", "Deployment"]


@dataclass(frozen=True, slots=True)
class Deployment:
    """A deployment as the server shows it, with live ``stats`` (per route, shadow agreement)."""

    name: str
    description: str
    routes: list[dict[str, Any]]
    shadow: dict[str, Any] | None
    serving: dict[str, Any]
    rollback: dict[str, Any] | None
    revision: int
    events: list[dict[str, Any]]
    stats: dict[str, Any] | None
    created_at: str
    updated_at: str
    #: a progressive rollout under way: ``steps``, ``interval_s``, ``step``, ``share`` (the
    #: canary's percent now), ``next_step_at`` and ``min_requests`` (the canary answers a step
    #: waits for; how many the server saw: ``stats["rollout"]["canary_answered"]``); ``None``
    #: when there is none
    rollout: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Deployment:
        return cls(
            name=d["name"], description=d.get("description", ""), routes=list(d["routes"]),
            shadow=d.get("shadow"), serving=dict(d.get("serving") or {}), rollback=d.get("rollback"),
            revision=int(d["revision"]), events=list(d.get("events") or []), stats=d.get("stats"),
            created_at=str(d["created_at"]), updated_at=str(d["updated_at"]), rollout=d.get("rollout"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__}


def _routes(routes: Sequence[Mapping[str, Any] | tuple[str, int, float]]) -> list[dict[str, Any]]:
    out = []
    for r in routes:
        if isinstance(r, tuple):
            model, version, weight = r
            out.append({"model": model, "version": int(version), "weight": float(weight)})
        else:
            out.append(dict(r))
    return out


class Deployments:
    """``/api/v1/deployments`` from Python; every call raises the typed error on failure."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def create(
        self,
        name: str,
        routes: Sequence[Mapping[str, Any] | tuple[str, int, float]],
        *,
        shadow: Mapping[str, Any] | None = None,
        serving: Mapping[str, Any] | None = None,
        rollback: Mapping[str, Any] | None = None,
        rollout: Mapping[str, Any] | None = None,
        description: str = "",
    ) -> Deployment:
        """Create deployment ``name``; ``routes`` are ``{model, version, weight}`` dicts or
        ``(model, version, weight)`` tuples, the first being the primary. ``rollout``
        (``{"steps": [10, 25, 50, 100], "interval_s": 300}``, two routes) raises the canary's
        share on that schedule and promotes it at 100; with ``"min_requests": N`` a step also
        waits until the canary answered N requests without error at the step before."""
        body: dict[str, Any] = {"name": name, "routes": _routes(routes), "description": description}
        if shadow is not None:
            body["shadow"] = dict(shadow)
        if serving is not None:
            body["serving"] = dict(serving)
        if rollback is not None:
            body["rollback"] = dict(rollback)
        if rollout is not None:
            body["rollout"] = dict(rollout)
        return Deployment.from_json(self._t.post("/api/v1/deployments", json=body))

    def list(self, *, page_size: int = 50) -> Iterator[Deployment]:
        for item in self._t.paginate("/api/v1/deployments", page_size=page_size):
            yield Deployment.from_json(item)

    def get(self, name: str) -> Deployment:
        return Deployment.from_json(self._t.get(f"/api/v1/deployments/{quote(name, safe='')}"))

    def update(self, name: str, **changes: Any) -> Deployment:
        """PATCH any of ``routes``, ``weights`` (``{"model:version": w}``), ``shadow``,
        ``remove_shadow``, ``serving``, ``rollback``, ``remove_rollback``, ``rollout`` (starts
        now, at its first step), ``remove_rollout`` (stops it where it is), ``description``."""
        if "routes" in changes and changes["routes"] is not None:
            changes["routes"] = _routes(changes["routes"])
        body = {k: v for k, v in changes.items() if v is not None}
        return Deployment.from_json(self._t.patch(f"/api/v1/deployments/{quote(name, safe='')}", json=body))

    def set_weights(self, name: str, weights: Mapping[str, float]) -> Deployment:
        return self.update(name, weights=dict(weights))

    def promote(self, name: str, *, model: str | None = None, version: int | None = None) -> Deployment:
        """Roll forward: the named route (default: the last canary) takes all the traffic."""
        body = {k: v for k, v in {"model": model, "version": version}.items() if v is not None}
        return Deployment.from_json(self._t.post(f"/api/v1/deployments/{quote(name, safe='')}/promote", json=body))

    def rollback(self, name: str, *, reason: str = "manual") -> Deployment:
        """All traffic back to the primary route."""
        return Deployment.from_json(
            self._t.post(f"/api/v1/deployments/{quote(name, safe='')}/rollback", json={"reason": reason})
        )

    def delete(self, name: str) -> None:
        self._t.delete(f"/api/v1/deployments/{quote(name, safe='')}")
