"""Usage metering: requests, errors, tokens and compute-seconds per tenant, model and hour.

:meth:`UsageMeter.record` is cheap (a dict update under a lock) so it can sit on the inference
hot path; a background thread flushes the sums every ``flush_s`` seconds with one atomic
``UPDATE usage_hourly SET requests = requests + :n ...`` per (tenant, model, hour), which stays
correct with several server processes on one database. :meth:`UsageMeter.close` flushes what is
left. Reports (:meth:`UsageMeter.query`) price the figures with the settings' price table.
"""

from __future__ import annotations

import csv
import io
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timezone

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from modelyard.core.flushing import BackgroundFlusher
from modelyard.store.db import Database
from modelyard.store.tables import TenantRow, UsageRow

__all__ = ["UsageMeter", "UsageRecord", "to_csv"]

log = logging.getLogger(__name__)

_FIELDS = ("requests", "errors", "input_tokens", "output_tokens", "compute_s")


def _hour(ts: datetime | None = None) -> datetime:
    ts = ts or datetime.now(timezone.utc)
    return ts.replace(minute=0, second=0, microsecond=0)


def _aware(ts: datetime) -> datetime:
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One tenant's use of one model or deployment during one hour, and its price."""

    tenant: str
    model: str
    hour: datetime
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    compute_s: float
    cost: float

    def to_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def price(
    prices: Mapping[str, float], requests: float, input_tokens: float, output_tokens: float, compute_s: float
) -> float:
    """The cost from a price table with keys request, input_token, output_token, compute_second."""
    return round(
        requests * prices.get("request", 0.0)
        + input_tokens * prices.get("input_token", 0.0)
        + output_tokens * prices.get("output_token", 0.0)
        + compute_s * prices.get("compute_second", 0.0),
        9,
    )


class UsageMeter(BackgroundFlusher):
    """Accumulates usage in memory and writes it to the database in batches."""

    def __init__(self, db: Database, *, prices: Mapping[str, float] | None = None, flush_s: float = 1.0) -> None:
        super().__init__(name="usage-flush", flush_s=flush_s)
        self._db = db
        self.prices = dict(prices or {})
        self._pending: dict[tuple[str, str, datetime], list[float]] = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._hour_ends = 0.0  # time.time() when the current hour bucket ends
        self._hour_now = _hour()


    def record(
        self,
        tenant_id: str,
        model: str,
        *,
        requests: int = 1,
        errors: int = 0,
        input_tokens: int = 0,
        output_tokens: int = 0,
        compute_s: float = 0.0,
        at: datetime | None = None,
    ) -> None:
        """Add usage for (tenant, model or deployment, this hour). Thread-safe; no I/O."""
        key = (tenant_id, model, _hour(at) if at is not None else self._current_hour())
        with self._lock:
            sums = self._pending.get(key)
            if sums is None:
                sums = self._pending[key] = [0, 0, 0, 0, 0.0]
            sums[0] += requests
            sums[1] += errors
            sums[2] += input_tokens
            sums[3] += output_tokens
            sums[4] += compute_s

    def _current_hour(self) -> datetime:
        now = time.time()
        if now >= self._hour_ends:  # recomputed once an hour, not on every request
            self._hour_now = _hour()
            self._hour_ends = self._hour_now.timestamp() + 3600
        return self._hour_now

    def flush(self) -> int:
        """Write pending sums; returns how many rows were touched. On failure they are kept."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, {}
            if not batch:
                return 0
            try:
                with self._db.transaction() as s:
                    for (tenant_id, model, hour), sums in batch.items():
                        values = dict(zip(_FIELDS, sums))
                        where = (UsageRow.tenant_id == tenant_id, UsageRow.model == model, UsageRow.hour == hour)
                        bump = {k: getattr(UsageRow, k) + v for k, v in values.items()}
                        if s.execute(update(UsageRow).where(*where).values(**bump)).rowcount == 0:  # type: ignore[attr-defined]
                            try:
                                with s.begin_nested():
                                    s.add(UsageRow(tenant_id=tenant_id, model=model, hour=hour, **values))
                            except IntegrityError:
                                s.execute(update(UsageRow).where(*where).values(**bump))
            except BaseException:
                with self._lock:
                    for key, sums in batch.items():
                        cur = self._pending.setdefault(key, [0, 0, 0, 0, 0.0])
                        for i, v in enumerate(sums):
                            cur[i] += v
                raise
            return len(batch)


    def query(
        self,
        *,
        tenant_id: str | None,
        model: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[UsageRecord]:
        """Hourly records, oldest first; ``tenant_id=None`` means every tenant (admins)."""
        self.flush()
        q = select(UsageRow, TenantRow.name).outerjoin(TenantRow, TenantRow.id == UsageRow.tenant_id)
        if tenant_id is not None:
            q = q.where(UsageRow.tenant_id == tenant_id)
        if model is not None:
            q = q.where(UsageRow.model == model)
        if start is not None:
            q = q.where(UsageRow.hour >= _hour(_aware(start)))
        if end is not None:
            q = q.where(UsageRow.hour < _aware(end))
        q = q.order_by(UsageRow.hour, UsageRow.tenant_id, UsageRow.model)
        with self._db.read() as s:
            rows = s.execute(q).all()
        return [
            UsageRecord(
                tenant=name or row.tenant_id, model=row.model, hour=_aware(row.hour), requests=row.requests,
                errors=row.errors, input_tokens=row.input_tokens, output_tokens=row.output_tokens,
                compute_s=round(row.compute_s, 6),
                cost=price(self.prices, row.requests, row.input_tokens, row.output_tokens, row.compute_s),
            )
            for row, name in rows
        ]


def to_csv(records: list[UsageRecord]) -> str:
    """Records as CSV with a header line."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    names = [f.name for f in fields(UsageRecord)]
    writer.writerow(names)
    for r in records:
        writer.writerow([r.hour.isoformat() if n == "hour" else getattr(r, n) for n in names])
    return buf.getvalue()
