"""Rate limits and quotas, enforced in the core so REST, gRPC and the OpenAI API share them.

Two mechanisms:

- **Requests/second**, per API key (its ``rate_limit``) and per tenant over all its keys (its
  ``requests_per_second`` quota): a token bucket each in every server process
  (:class:`~modelyard.core.key_rates.KeyRates`), at this server's share of the rate: all of it
  on a lone server, a share in proportion to its requests in a cluster
  (``core/cluster_rates.py``).
- **Per tenant quotas** (requests/day, generated tokens/day, stored bytes, concurrent jobs,
  training hours/month): counters in the shared database, bumped with one atomic
  ``UPDATE quota_counters SET value = value + :k`` per (tenant, counter, window), so the count
  stays exact under concurrency and across several server processes on one database.

Every refusal is :class:`~modelyard.errors.RateLimited` (HTTP 429) with ``retry_after`` in
seconds and a message naming the limit. Call :meth:`Limits.check_request` once per inference
request (the data plane calls :meth:`Limits.check_rate` with the quotas it holds in memory, and
:meth:`Limits.check_daily` in a thread); training and LLM code call :meth:`Limits.charge_tokens`,
:meth:`Limits.check_concurrent_jobs`, :meth:`Limits.charge_training_seconds` and
:meth:`Limits.check_storage`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from prometheus_client import Counter
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modelyard.core.key_rates import KeyRates
from modelyard.core.principal import Principal
from modelyard.core.tenants import Quotas, TenantService
from modelyard.errors import RateLimited
from modelyard.store.db import Database
from modelyard.store.tables import CounterRow, DatasetRow, ModelRow, TenantQuotaRow, TenantRow, VersionRow

__all__ = ["Limits", "QuotaUse", "Counters", "day_window", "month_window", "TENANT_BUCKET"]

#: a tenant's requests/second bucket is this followed by the tenant's id (among the keys' buckets)
TENANT_BUCKET = "tenant:"


def day_window(now: datetime | None = None) -> tuple[str, float]:
    """The UTC day's window name and the seconds until it ends."""
    now = now or datetime.now(timezone.utc)
    end = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return now.strftime("%Y-%m-%d"), (end - now).total_seconds()


def month_window(now: datetime | None = None) -> tuple[str, float]:
    """The UTC month's window name and the seconds until it ends."""
    now = now or datetime.now(timezone.utc)
    first_next = (now.replace(day=1) + timedelta(days=32)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return now.strftime("%Y-%m"), (first_next - now).total_seconds()


@dataclass(frozen=True, slots=True)
class QuotaUse:
    """How much of one of a tenant's quotas its current window has used (``limit`` in the
    quota's unit: requests, tokens, hours)."""

    tenant: str  # its name
    quota: str
    used: float
    limit: float


#: the quotas counted per window: quota -> (its counter, its window, counter units per quota unit)
_WINDOWED: dict[str, tuple[str, Callable[..., tuple[str, float]], float]] = {
    "requests_per_day": ("requests", day_window, 1.0),
    "tokens_per_day": ("tokens", day_window, 1.0),
    "training_hours_per_month": ("training_s", month_window, 3600.0),
}


class Counters:
    """Shared counters in the database, one row per (tenant, name, window)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @staticmethod
    def _bump(s: Session, tenant_id: str, name: str, window: str, amount: float) -> float:
        where = (CounterRow.tenant_id == tenant_id, CounterRow.name == name, CounterRow.window == window)
        result = s.execute(update(CounterRow).where(*where).values(value=CounterRow.value + amount))
        if result.rowcount == 0:  # type: ignore[attr-defined]
            try:
                with s.begin_nested():
                    s.add(CounterRow(tenant_id=tenant_id, name=name, window=window, value=amount))
            except IntegrityError:  # another process inserted it first
                s.execute(update(CounterRow).where(*where).values(value=CounterRow.value + amount))
        return float(s.scalar(select(CounterRow.value).where(*where)) or 0.0)

    def add(self, tenant_id: str, name: str, window: str, amount: float, *, limit: float | None = None) -> float:
        """Add ``amount`` atomically and return the new value; with ``limit`` given, a sum over
        it is rolled back (nothing counted) and ``_OverLimit`` is raised."""
        with self._db.transaction() as s:
            value = self._bump(s, tenant_id, name, window, amount)
            if limit is not None and value > limit:
                raise _OverLimit(value - amount)
            return value

    def get(self, tenant_id: str, name: str, window: str) -> float:
        with self._db.read() as s:
            return float(s.scalar(select(CounterRow.value).where(
                CounterRow.tenant_id == tenant_id, CounterRow.name == name, CounterRow.window == window
            )) or 0.0)


class _OverLimit(Exception):
    def __init__(self, current: float) -> None:
        super().__init__(current)
        self.current = current


def _refuse(limit_name: str, limit: float, unit: str, retry_after: float) -> RateLimited:
    return RateLimited(
        f"{limit_name} limit reached ({limit:g} {unit}); retry in {math.ceil(retry_after)} s",
        details={"limit": limit_name, "value": limit},
        retry_after=max(1.0, retry_after),
    )


class Limits:
    """The one place rate limits and quotas are checked."""

    def __init__(
        self,
        *,
        db: Database,
        tenants: TenantService,
        default_rate: float | None = None,
        quota_ttl_s: float = 1.0,
        refusals: Counter | None = None,
    ) -> None:
        self._db = db
        #: requests refused, by (tenant name, limit): ``key_requests_per_second``,
        #: ``tenant_requests_per_second``, ``requests_per_day`` or ``tokens_per_day``
        #: (``modelyard_limit_refusals_total``)
        self._refusals = refusals
        self._tenants = tenants
        self.counters = Counters(db)
        self._default_rate = default_rate
        self.rates = KeyRates()
        self._ttl = quota_ttl_s
        self._quotas: dict[str, tuple[float, Quotas]] = {}

    def quotas(self, tenant_id: str) -> Quotas:
        """The tenant's quotas (cached for ``quota_ttl_s``; blocking on a miss)."""
        hit = self.cached_quotas(tenant_id)
        if hit is not None and hit[0]:
            return hit[1]
        return self.refresh_quotas(tenant_id)

    def cached_quotas(self, tenant_id: str) -> tuple[bool, Quotas] | None:
        """``(fresh, quotas)`` from memory only (no I/O), or ``None`` before the first load."""
        hit = self._quotas.get(tenant_id)
        if hit is None:
            return None
        return time.monotonic() - hit[0] < self._ttl, hit[1]

    def refresh_quotas(self, tenant_id: str) -> Quotas:
        """Load the tenant's quotas from the database and remember them (blocking)."""
        quotas = self._tenants.quotas(tenant_id)
        self._quotas[tenant_id] = (time.monotonic(), quotas)
        return quotas

    @staticmethod
    def has_daily(quotas: Quotas) -> bool:
        """Whether checking these quotas counts in the database (a requests or tokens per day)."""
        return quotas.requests_per_day is not None or quotas.tokens_per_day is not None

    def quota_use(self) -> list[QuotaUse]:
        """Each tenant's use of its quotas that count in a window (requests and tokens a day,
        training hours a month), from the shared counters: what ``/metrics`` shows for the
        alerts on quotas. Two queries, whatever the number of tenants (blocking)."""
        windows = {quota: window()[0] for quota, (_, window, _) in _WINDOWED.items()}
        with self._db.read() as s:
            tenants = s.execute(
                select(TenantRow.id, TenantRow.name, *(getattr(TenantQuotaRow, quota) for quota in _WINDOWED))
                .join(TenantQuotaRow, TenantQuotaRow.tenant_id == TenantRow.id)
            ).all()
            counted = {
                (tenant, name, window): value
                for tenant, name, window, value in s.execute(
                    select(CounterRow.tenant_id, CounterRow.name, CounterRow.window, CounterRow.value)
                    .where(CounterRow.window.in_(set(windows.values())))
                )
            }
        uses = []
        for tenant_id, name, *limits in tenants:
            for (quota, (counter, _, unit)), limit in zip(_WINDOWED.items(), limits):
                if limit is not None:
                    used = counted.get((tenant_id, counter, windows[quota]), 0.0) / unit
                    uses.append(QuotaUse(name, quota, used, float(limit)))
        return uses

    def forget(self) -> None:
        """Drop cached quotas (after an admin changed them)."""
        self._quotas.clear()

    # -- per request -----------------------------------------------------------------------
    def check_rate(self, principal: Principal, quotas: Quotas | None = None) -> None:
        """The key's requests/second token bucket, then the tenant's when ``quotas`` has a
        ``requests_per_second`` (in-process, no I/O). A request the tenant's bucket refuses
        gives the key's token back."""
        rate = principal.rate_limit or self._default_rate
        rates = self.rates
        if rate:
            wait = rates.take(principal.key_id, rate)
            if wait > 0:  # (a small share of the rate here waits long: the cluster frees one sooner)
                self._refused(principal, "key_requests_per_second")
                raise _refuse("key requests/second", rate, "requests/s", min(wait, 1.0 / rate))
        tenant_rate = None if quotas is None else quotas.requests_per_second
        if tenant_rate:
            wait = rates.take(TENANT_BUCKET + principal.tenant_id, tenant_rate)
            if wait > 0:
                if rate:
                    rates.refund(principal.key_id)
                self._refused(principal, "tenant_requests_per_second")
                raise _refuse("tenant requests/second", tenant_rate, "requests/s", min(wait, 1.0 / tenant_rate))

    def check_request(self, principal: Principal) -> None:
        """Count one request against the key's and the tenant's rates and the tenant's daily
        quotas.

        Blocking (may read and write the database): call it off the event loop.
        """
        self.check_rate(principal, self.quotas(principal.tenant_id))
        self.check_daily(principal)

    def check_daily(self, principal: Principal) -> None:
        """The tenant's requests/day and generated tokens/day (blocking)."""
        quotas = self.quotas(principal.tenant_id)
        window, left = day_window()
        if quotas.tokens_per_day is not None:
            used = self.counters.get(principal.tenant_id, "tokens", window)
            if used >= quotas.tokens_per_day:
                self._refused(principal, "tokens_per_day")
                raise _refuse("tenant generated tokens/day", quotas.tokens_per_day, "tokens/day", left)
        if quotas.requests_per_day is not None:
            try:
                self.counters.add(principal.tenant_id, "requests", window, 1, limit=quotas.requests_per_day)
            except _OverLimit:
                self._refused(principal, "requests_per_day")
                raise _refuse("tenant requests/day", quotas.requests_per_day, "requests/day", left) from None

    def _refused(self, principal: Principal, limit: str) -> None:
        if self._refusals is not None:
            self._refusals.labels(principal.tenant_name, limit).inc()

    # -- for training, LLM and upload code -------------------------------------------------
    def charge_tokens(self, tenant_id: str, tokens: int) -> None:
        """Add generated tokens to today's count (the next request over the quota is refused)."""
        if tokens > 0:
            self.counters.add(tenant_id, "tokens", day_window()[0], tokens)

    def check_storage(self, tenant_id: str, adding_bytes: int) -> None:
        """Refuse storing ``adding_bytes`` more when it would exceed the tenant's stored bytes
        (model versions and datasets together)."""
        quota = self.quotas(tenant_id).stored_bytes
        if quota is None:
            return
        with self._db.read() as s:
            versions = s.scalar(
                select(func.coalesce(func.sum(VersionRow.size_bytes), 0))
                .join(ModelRow, ModelRow.id == VersionRow.model_id)
                .where(ModelRow.tenant_id == tenant_id)
            ) or 0
            datasets = s.scalar(
                select(func.coalesce(func.sum(DatasetRow.size_bytes), 0)).where(DatasetRow.tenant_id == tenant_id)
            ) or 0
        used = int(versions) + int(datasets)
        if used + adding_bytes > quota:
            raise RateLimited(
                f"tenant stored bytes limit reached ({quota} bytes; {used} used, {adding_bytes} more asked)",
                details={"limit": "tenant stored bytes", "value": quota}, retry_after=3600.0,
            )

    def check_concurrent_jobs(self, tenant_id: str, running: int) -> None:
        """Refuse starting one more job while ``running`` jobs already use the quota."""
        quota = self.quotas(tenant_id).concurrent_jobs
        if quota is not None and running >= quota:
            raise _refuse("tenant concurrent jobs", quota, "jobs", 30.0)

    def check_training_hours(self, tenant_id: str) -> None:
        """Refuse new training once this month's training hours are used up."""
        quota = self.quotas(tenant_id).training_hours_per_month
        if quota is None:
            return
        window, left = month_window()
        used_s = self.counters.get(tenant_id, "training_s", window)
        if used_s >= quota * 3600:
            raise _refuse("tenant training hours/month", quota, "hours/month", left)

    def admit_job(self, tenant_id: str, job_type: str, active: int) -> None:
        """Admission of a new job: the concurrent-jobs quota, and training hours for ``train``."""
        self.check_concurrent_jobs(tenant_id, active)
        if job_type == "train":
            self.check_training_hours(tenant_id)

    def charge_training_seconds(self, tenant_id: str, seconds: float) -> None:
        if seconds > 0:
            self.counters.add(tenant_id, "training_s", month_window()[0], seconds)
