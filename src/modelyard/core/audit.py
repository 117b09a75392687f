"""The audit log: who did what to which object, with what result, when, under which request id.

Entries are append-only (there is no update or delete API). :meth:`AuditLog.append` only queues
the entry; a background thread writes queued entries every ``flush_s`` seconds (and
:meth:`AuditLog.close` writes the rest), so recording never blocks a request on the database.
Queries flush first, so a caller reads its own writes.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import func, select

from modelyard.core.flushing import BackgroundFlusher
from modelyard.core.pages import Page, PageRequest
from modelyard.store.db import Database
from modelyard.store.tables import AuditRow, TenantRow

__all__ = ["AuditLog", "AuditEntry"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audited event. ``tenant_id``/``key_id``/``role`` are ``None`` for an unauthenticated
    caller; ``result`` is the HTTP status."""

    action: str
    object: str
    result: int
    request_id: str
    tenant_id: str | None = None
    key_id: str | None = None
    role: str | None = None
    client: str = ""
    at: datetime | None = None
    tenant: str | None = None
    id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class AuditLog(BackgroundFlusher):
    """Append-only audit entries in the database, written in batches."""

    def __init__(self, db: Database, *, flush_s: float = 0.5) -> None:
        super().__init__(name="audit-flush", flush_s=flush_s)
        self._db = db
        self._pending: list[AuditRow] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()


    def append(self, entry: AuditEntry) -> None:
        """Queue an entry (thread-safe, no I/O)."""
        row = AuditRow(
            at=entry.at or datetime.now(timezone.utc), request_id=entry.request_id[:64],
            tenant_id=entry.tenant_id, key_id=entry.key_id, role=entry.role, action=entry.action[:16],
            object=entry.object[:512], result=entry.result, client=entry.client[:64],
        )
        with self._lock:
            self._pending.append(row)

    def flush(self) -> int:
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, []
            if not batch:
                return 0
            try:
                with self._db.transaction() as s:
                    s.add_all(batch)
            except BaseException:
                with self._lock:
                    self._pending[:0] = [
                        AuditRow(**{c: getattr(r, c) for c in ("at", "request_id", "tenant_id", "key_id", "role",
                                                                "action", "object", "result", "client")})
                        for r in batch
                    ]
                raise
            return len(batch)


    def query(
        self,
        *,
        tenant_id: str | None,
        page: PageRequest = PageRequest(),
        since: datetime | None = None,
        action: str | None = None,
        object_prefix: str | None = None,
    ) -> Page[AuditEntry]:
        """Entries newest first; ``tenant_id=None`` means every tenant and unauthenticated ones."""
        self.flush()
        where = []
        if tenant_id is not None:
            where.append(AuditRow.tenant_id == tenant_id)
        if since is not None:
            where.append(AuditRow.at >= since)
        if action is not None:
            where.append(AuditRow.action == action.upper())
        if object_prefix is not None:
            where.append(AuditRow.object.startswith(object_prefix, autoescape=True))
        with self._db.read() as s:
            total = s.scalar(select(func.count()).select_from(AuditRow).where(*where)) or 0
            rows = s.execute(
                select(AuditRow, TenantRow.name).outerjoin(TenantRow, TenantRow.id == AuditRow.tenant_id)
                .where(*where).order_by(AuditRow.id.desc()).offset(page.offset).limit(page.page_size)
            ).all()
        items = [
            AuditEntry(
                id=r.id, at=r.at if r.at.tzinfo else r.at.replace(tzinfo=timezone.utc), request_id=r.request_id,
                tenant_id=r.tenant_id, tenant=name, key_id=r.key_id, role=r.role, action=r.action,
                object=r.object, result=r.result, client=r.client,
            )
            for r, name in rows
        ]
        return Page(items, total, page.page, page.page_size)
