"""``client.tenants``, ``client.keys``, ``client.usage`` and ``client.audit``: tenancy from Python.

- ``client.tenants`` (admins): create, list, get, disable/enable, set quotas, delete.
- ``client.keys`` (owners in their tenant, admins anywhere): create (the secret is returned once,
  in :attr:`CreatedKey.secret`), list (prefixes only), get, revoke.
- ``client.usage``: hourly usage records with cost, or the CSV export.
- ``client.audit`` (owners, admins): the audit log, newest first.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from modelyard.client._transport import Transport

__all__ = [
    "Tenants", "Tenant", "Keys", "ApiKey", "CreatedKey", "Usage", "UsageRecord", "UsageReport",
    "Audit", "AuditEntry",
]


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True, slots=True)
class Tenant:
    """A tenant and its quotas (``None``: unlimited)."""

    id: str
    name: str
    disabled: bool
    created_at: datetime | None
    quotas: dict[str, Any]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Tenant:
        return cls(d["id"], d["name"], bool(d["disabled"]), _time(d.get("created_at")), dict(d.get("quotas") or {}))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "created_at": _iso(self.created_at)}


class Tenants:
    """Tenant administration (admin keys only)."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def create(self, name: str, *, quotas: dict[str, Any] | None = None) -> Tenant:
        return Tenant.from_json(self._t.post("/api/v1/tenants", json={"name": name, "quotas": quotas}))

    def list(self) -> Iterator[Tenant]:
        return (Tenant.from_json(d) for d in self._t.paginate("/api/v1/tenants"))

    def get(self, name: str) -> Tenant:
        return Tenant.from_json(self._t.get(f"/api/v1/tenants/{quote(name, safe='')}"))

    def update(self, name: str, *, disabled: bool | None = None, quotas: dict[str, Any] | None = None) -> Tenant:
        """Change ``disabled`` and/or the named quotas (a ``None`` quota value means unlimited)."""
        body: dict[str, Any] = {}
        if disabled is not None:
            body["disabled"] = disabled
        if quotas is not None:
            body["quotas"] = quotas
        return Tenant.from_json(self._t.patch(f"/api/v1/tenants/{quote(name, safe='')}", json=body))

    def disable(self, name: str) -> Tenant:
        return self.update(name, disabled=True)

    def enable(self, name: str) -> Tenant:
        return self.update(name, disabled=False)

    def delete(self, name: str, *, force: bool = False) -> None:
        self._t.delete(f"/api/v1/tenants/{quote(name, safe='')}", params={"force": str(force).lower()})


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key as listed: its prefix, never its secret."""

    id: str
    tenant_id: str
    name: str
    prefix: str
    role: str
    scopes: tuple[str, ...]
    rate_limit: float | None
    created_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ApiKey:
        return cls(
            d["id"], d["tenant_id"], d.get("name", ""), d["prefix"], d["role"], tuple(d.get("scopes") or ()),
            d.get("rate_limit"), _time(d.get("created_at")), _time(d.get("expires_at")), _time(d.get("revoked_at")),
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["scopes"] = list(self.scopes)
        for k in ("created_at", "expires_at", "revoked_at"):
            out[k] = _iso(getattr(self, k))
        return out


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A new key: :attr:`secret` is shown only this once."""

    key: ApiKey
    secret: str


class Keys:
    """API keys of your tenant (admins: any tenant)."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def create(
        self,
        role: str,
        *,
        name: str = "",
        tenant: str | None = None,
        scopes: list[str] | None = None,
        rate_limit: float | None = None,
        expires_in_s: float | None = None,
        expires_at: datetime | None = None,
    ) -> CreatedKey:
        body: dict[str, Any] = {"role": role, "name": name, "scopes": list(scopes or [])}
        for k, v in (("tenant", tenant), ("rate_limit", rate_limit), ("expires_in_s", expires_in_s),
                     ("expires_at", _iso(expires_at))):
            if v is not None:
                body[k] = v
        d = self._t.post("/api/v1/keys", json=body)
        return CreatedKey(ApiKey.from_json(d), d["secret"])

    def list(self, *, tenant: str | None = None, include_revoked: bool = False) -> list[ApiKey]:
        d = self._t.get("/api/v1/keys", params={"tenant": tenant, "include_revoked": str(include_revoked).lower()})
        return [ApiKey.from_json(x) for x in d["items"]]

    def get(self, key_id: str) -> ApiKey:
        return ApiKey.from_json(self._t.get(f"/api/v1/keys/{quote(key_id, safe='')}"))

    def revoke(self, key_id: str) -> None:
        """Revoke a key by id or prefix; it stops working at once."""
        self._t.delete(f"/api/v1/keys/{quote(key_id, safe='')}")


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One tenant's use of one model or deployment during one hour."""

    tenant: str
    model: str
    hour: datetime | None
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    compute_s: float
    cost: float

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> UsageRecord:
        return cls(d["tenant"], d["model"], _time(d.get("hour")), int(d["requests"]), int(d["errors"]),
                   int(d["input_tokens"]), int(d["output_tokens"]), float(d["compute_s"]), float(d["cost"]))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hour": _iso(self.hour)}


@dataclass(frozen=True, slots=True)
class UsageReport:
    records: list[UsageRecord]
    totals: dict[str, float]
    prices: dict[str, float]


class Usage:
    """Usage reports (admins: every tenant; others: their own)."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    @staticmethod
    def _params(tenant: str | None, model: str | None, start: datetime | None, end: datetime | None) -> dict[str, Any]:
        return {"tenant": tenant, "model": model, "start": _iso(start), "end": _iso(end)}

    def report(
        self, *, tenant: str | None = None, model: str | None = None,
        start: datetime | None = None, end: datetime | None = None,
    ) -> UsageReport:
        d = self._t.get("/api/v1/usage", params=self._params(tenant, model, start, end))
        return UsageReport([UsageRecord.from_json(x) for x in d["items"]], dict(d["totals"]), dict(d["prices"]))

    def csv(
        self, *, tenant: str | None = None, model: str | None = None,
        start: datetime | None = None, end: datetime | None = None,
    ) -> str:
        params = {**self._params(tenant, model, start, end), "format": "csv"}
        return self._t.request("GET", "/api/v1/usage", params=params).text


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int | None
    at: datetime | None
    request_id: str
    tenant: str | None
    key_id: str | None
    role: str | None
    action: str
    object: str
    result: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AuditEntry:
        return cls(d.get("id"), _time(d.get("at")), d["request_id"], d.get("tenant"), d.get("key_id"),
                   d.get("role"), d["action"], d["object"], int(d["result"]))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "at": _iso(self.at)}


class Audit:
    """The audit log (owners: their tenant; admins: all)."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def list(
        self, *, tenant: str | None = None, action: str | None = None, object: str | None = None,
        since: datetime | None = None,
    ) -> Iterator[AuditEntry]:
        params = {"tenant": tenant, "action": action, "object": object, "since": _iso(since)}
        return (AuditEntry.from_json(d) for d in self._t.paginate("/api/v1/audit", params=params))
