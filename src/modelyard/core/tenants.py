"""Tenants: the isolation boundary. Admins create, list, disable and delete them and set quotas.

Disabling a tenant makes its keys fail at once in this process (the key cache is cleared) and
within the key cache TTL in any other process sharing the database. Deleting a tenant that still
owns models is refused unless ``force=True``, which removes its models, keys and counters too.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Table, delete, func, select
from sqlalchemy.exc import IntegrityError

from modelyard.core.keys import KeyService
from modelyard.core.names import check_name
from modelyard.core.pages import Page, PageRequest
from modelyard.errors import Conflict, TenantNotFound, ValidationFailed
from modelyard.store.db import Database
from modelyard.store.tables import ApiKeyRow, Base, CounterRow, TenantQuotaRow, TenantRow

__all__ = ["TenantService", "TenantInfo", "Quotas"]


@dataclass(frozen=True, slots=True)
class Quotas:
    """A tenant's limits; ``None`` is unlimited."""

    requests_per_second: float | None = None  # over all its keys (each key may have its own too)
    requests_per_day: int | None = None
    tokens_per_day: int | None = None
    stored_bytes: int | None = None
    concurrent_jobs: int | None = None
    training_hours_per_month: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


QUOTA_FIELDS = tuple(f.name for f in fields(Quotas))


@dataclass(frozen=True, slots=True)
class TenantInfo:
    id: str
    name: str
    disabled: bool
    created_at: datetime
    quotas: Quotas


def _quotas(row: TenantQuotaRow | None) -> Quotas:
    if row is None:
        return Quotas()
    return Quotas(**{name: getattr(row, name) for name in QUOTA_FIELDS})


class TenantService:
    """Tenant administration (the caller checks ``tenants:manage``)."""

    def __init__(self, db: Database, keys: KeyService) -> None:
        self._db = db
        self._keys = keys

    def create(self, name: str, *, quotas: Quotas | None = None) -> TenantInfo:
        check_name(name, field="name")
        with self._db.transaction() as s:
            if s.scalar(select(TenantRow.id).where(TenantRow.name == name)) is not None:
                raise Conflict(f"tenant {name!r} already exists")
            row = TenantRow(id=str(uuid.uuid4()), name=name, disabled=False)
            s.add(row)
            s.flush()
            q = quotas or Quotas()
            s.add(TenantQuotaRow(tenant_id=row.id, **q.to_dict()))
            s.flush()
            return TenantInfo(row.id, row.name, row.disabled, row.created_at, q)

    def _row(self, s: Any, name_or_id: str) -> TenantRow:
        row = s.scalar(select(TenantRow).where((TenantRow.name == name_or_id) | (TenantRow.id == name_or_id)))
        if row is None:
            raise TenantNotFound(f"tenant {name_or_id!r} not found")
        return row  # type: ignore[no-any-return]

    def get(self, name_or_id: str) -> TenantInfo:
        with self._db.read() as s:
            row = self._row(s, name_or_id)
            return TenantInfo(row.id, row.name, row.disabled, row.created_at, _quotas(s.get(TenantQuotaRow, row.id)))

    def quotas(self, tenant_id: str) -> Quotas:
        with self._db.read() as s:
            return _quotas(s.get(TenantQuotaRow, tenant_id))

    def list(self, page: PageRequest = PageRequest()) -> Page[TenantInfo]:
        with self._db.read() as s:
            total = s.scalar(select(func.count()).select_from(TenantRow)) or 0
            rows = s.scalars(
                select(TenantRow).order_by(TenantRow.created_at, TenantRow.name).offset(page.offset).limit(page.page_size)
            ).all()
            quotas = {q.tenant_id: q for q in s.scalars(
                select(TenantQuotaRow).where(TenantQuotaRow.tenant_id.in_([r.id for r in rows]))
            )}
            items = [TenantInfo(r.id, r.name, r.disabled, r.created_at, _quotas(quotas.get(r.id))) for r in rows]
        return Page(items, total, page.page, page.page_size)

    def update(self, name_or_id: str, *, disabled: bool | None = None, quotas: dict[str, Any] | None = None) -> TenantInfo:
        """Disable/enable a tenant and/or change some of its quotas (keys given, even as ``None``)."""
        unknown = set(quotas or {}) - set(QUOTA_FIELDS)
        if unknown:
            raise ValidationFailed(f"unknown quota(s): {', '.join(sorted(unknown))}", details={"field": "quotas"})
        for key, value in (quotas or {}).items():
            if value is not None and value < 0:
                raise ValidationFailed(f"quota {key} must be >= 0", details={"field": key})
        if (quotas or {}).get("requests_per_second") == 0:
            raise ValidationFailed("quota requests_per_second must be > 0 (none: unlimited)",
                                   details={"field": "requests_per_second"})
        with self._db.transaction() as s:
            row = self._row(s, name_or_id)
            if disabled is not None:
                row.disabled = disabled
            if quotas:
                q = s.get(TenantQuotaRow, row.id)
                if q is None:
                    q = TenantQuotaRow(tenant_id=row.id)
                    s.add(q)
                for key, value in quotas.items():
                    setattr(q, key, value)
            tenant_id = row.id
        self._keys.invalidate_cache()
        return self.get(tenant_id)

    def delete(self, name_or_id: str, *, force: bool = False) -> None:
        """Delete a tenant; refused (409) while it owns objects (models, datasets, jobs,
        deployments... any table whose ``tenant_id`` references it) unless ``force``, which
        deletes them too (their children go by ``ON DELETE CASCADE``)."""
        try:
            with self._db.transaction() as s:
                row = self._row(s, name_or_id)
                if row.name == "default":
                    raise Conflict("the default tenant cannot be deleted")
                owners = _object_tables()
                owned = {
                    t.name: n for t in owners
                    if (n := s.scalar(select(func.count()).select_from(t).where(t.c.tenant_id == row.id)) or 0)
                }
                if owned and not force:
                    listing = ", ".join(f"{n} {name}" for name, n in sorted(owned.items()))
                    raise Conflict(f"tenant {row.name!r} still owns {listing}; delete them first or force")
                for table in reversed(owners):
                    s.execute(delete(table).where(table.c.tenant_id == row.id))
                for model in (ApiKeyRow, CounterRow, TenantQuotaRow):
                    s.execute(delete(model).where(model.tenant_id == row.id))
                s.delete(row)
        except IntegrityError:
            raise Conflict("the tenant's objects could not all be removed; delete them first") from None
        self._keys.invalidate_cache()


def _object_tables() -> list[Table]:
    """Tables of tenant-owned objects (a ``tenant_id`` referencing tenants), parents first."""
    own = {ApiKeyRow.__tablename__, CounterRow.__tablename__, TenantQuotaRow.__tablename__}
    return [
        t for t in Base.metadata.sorted_tables
        if t.name not in own and "tenant_id" in t.c
        and any(fk.column.table.name == TenantRow.__tablename__ for fk in t.c.tenant_id.foreign_keys)
    ]
