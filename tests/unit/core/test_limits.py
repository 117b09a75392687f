"""Rate limits and quotas: token bucket, atomic shared counters, quota refusals with Retry-After."""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from modelyard.core.key_rates import KeyRates, TokenBucket
from modelyard.core.keys import KeyService
from modelyard.core.limits import Limits, day_window, month_window
from modelyard.core.principal import Principal
from modelyard.core.tenants import Quotas, TenantService
from modelyard.errors import RateLimited, ValidationFailed
from modelyard.store.db import Database


@pytest.fixture
def services(database_url: str) -> tuple[Database, TenantService, Limits]:
    db = Database(database_url)
    db.migrate()
    keys = KeyService(db)
    tenants = TenantService(db, keys)
    yield db, tenants, Limits(db=db, tenants=tenants, quota_ttl_s=0.0)
    db.dispose()


def _principal(tenant_id: str, rate: float | None = None, key: str = "k1") -> Principal:
    return Principal(key_id=key, tenant_id=tenant_id, tenant_name="t", role="inference", rate_limit=rate)


def test_token_bucket_allows_burst_then_waits() -> None:
    bucket = TokenBucket.new(2.0)
    now = bucket.stamp
    assert bucket.take(now) == 0 and bucket.take(now) == 0
    wait = bucket.take(now)
    assert wait == pytest.approx(0.5)
    assert bucket.take(now + 0.5) == 0


def test_windows() -> None:
    name, left = day_window(datetime(2026, 3, 1, 23, 0, tzinfo=timezone.utc))
    assert name == "2026-03-01" and left == 3600
    name, left = month_window(datetime(2026, 12, 31, 23, 0, tzinfo=timezone.utc))
    assert name == "2026-12" and left == 3600


def test_key_rate_limit_names_the_limit(services: tuple[Database, TenantService, Limits]) -> None:
    _db, tenants, limits = services
    t = tenants.create("acme")
    p = _principal(t.id, rate=1.0)
    limits.check_request(p)
    with pytest.raises(RateLimited) as err:
        limits.check_request(p)
    assert "requests/second" in err.value.message and err.value.retry_after >= 1
    limits.check_request(_principal(t.id, rate=1.0, key="other"))  # buckets are per key


def test_requests_per_day_is_exact_under_threads(services: tuple[Database, TenantService, Limits]) -> None:
    _db, tenants, limits = services
    t = tenants.create("acme", quotas=Quotas(requests_per_day=25))
    ok, refused = [], []

    def worker() -> None:
        for _ in range(10):
            try:
                limits.check_request(_principal(t.id))
                ok.append(1)
            except RateLimited as exc:
                assert "requests/day" in exc.message and exc.retry_after > 0
                refused.append(1)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(ok) == 25 and len(refused) == 15
    assert limits.counters.get(t.id, "requests", day_window()[0]) == 25


def test_two_processes_share_counters(services: tuple[Database, TenantService, Limits], database_url: str) -> None:
    db, tenants, limits = services
    t = tenants.create("acme", quotas=Quotas(requests_per_day=3))
    other_db = Database(database_url)  # a second "server process" on the same database
    other = Limits(db=other_db, tenants=TenantService(other_db, KeyService(other_db)), quota_ttl_s=0.0)
    limits.check_request(_principal(t.id))
    other.check_request(_principal(t.id))
    limits.check_request(_principal(t.id))
    with pytest.raises(RateLimited):
        other.check_request(_principal(t.id))
    other_db.dispose()


def test_tokens_storage_jobs_training(services: tuple[Database, TenantService, Limits]) -> None:
    _db, tenants, limits = services
    t = tenants.create("acme", quotas=Quotas(tokens_per_day=100, stored_bytes=10, concurrent_jobs=1,
                                             training_hours_per_month=1.0))
    limits.check_request(_principal(t.id))
    limits.charge_tokens(t.id, 100)
    with pytest.raises(RateLimited, match="tokens/day"):
        limits.check_request(_principal(t.id))
    limits.check_storage(t.id, 10)
    with pytest.raises(RateLimited, match="stored bytes"):
        limits.check_storage(t.id, 11)
    limits.check_concurrent_jobs(t.id, 0)
    with pytest.raises(RateLimited, match="concurrent jobs"):
        limits.check_concurrent_jobs(t.id, 1)
    limits.check_training_hours(t.id)
    limits.charge_training_seconds(t.id, 3600)
    with pytest.raises(RateLimited, match="training hours"):
        limits.check_training_hours(t.id)


def test_unlimited_tenant_needs_no_io_after_first_check(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    db.migrate()
    tenants = TenantService(db, KeyService(db))
    limits = Limits(db=db, tenants=tenants, quota_ttl_s=60)
    t = tenants.create("free")
    assert limits.cached_quotas(t.id) is None
    limits.check_request(_principal(t.id))
    cached = limits.cached_quotas(t.id)
    assert cached is not None and cached[0] and not Limits.has_daily(cached[1])
    db.dispose()


def test_quota_use_reports_each_windowed_quota_of_each_tenant(services: tuple[Database, TenantService, Limits]) -> None:
    """What /metrics shows for the quota alerts: the requests and tokens of today and the
    training hours of this month, against each tenant's quotas; tenants without one, nothing."""
    _db, tenants, limits = services
    acme = tenants.create("acme", quotas=Quotas(requests_per_day=10, tokens_per_day=1000, training_hours_per_month=2.0,
                                                concurrent_jobs=3))
    tenants.create("free")  # no quota: no series
    tenants.create("later", quotas=Quotas(requests_per_day=5))  # nothing used yet: 0 of 5
    for _ in range(7):
        limits.check_request(_principal(acme.id))
    limits.charge_tokens(acme.id, 250)
    limits.charge_training_seconds(acme.id, 1800)
    limits.counters.add(acme.id, "requests", "1999-01-01", 99)  # another day's count is not today's
    uses = {(u.tenant, u.quota): (u.used, u.limit) for u in limits.quota_use()}
    assert uses == {
        ("acme", "requests_per_day"): (7.0, 10.0),
        ("acme", "tokens_per_day"): (250.0, 1000.0),
        ("acme", "training_hours_per_month"): (0.5, 2.0),
        ("later", "requests_per_day"): (0.0, 5.0),
    }


def test_refusals_are_counted_by_tenant_and_limit(services: tuple[Database, TenantService, Limits]) -> None:
    db, tenants, _ = services
    registry = CollectorRegistry()
    refusals = Counter("modelyard_limit_refusals", "refused", ["tenant", "limit"], registry=registry)
    limits = Limits(db=db, tenants=tenants, quota_ttl_s=0.0, refusals=refusals)
    t = tenants.create("acme", quotas=Quotas(requests_per_day=2, tokens_per_day=10))
    who = Principal(key_id="k1", tenant_id=t.id, tenant_name="acme", role="inference", rate_limit=1.0)
    limits.check_request(who)
    for _ in range(3):  # the bucket is empty
        with pytest.raises(RateLimited):
            limits.check_request(who)
    other = Principal(key_id="k2", tenant_id=t.id, tenant_name="acme", role="inference")
    limits.check_request(other)  # the day's second request
    with pytest.raises(RateLimited):
        limits.check_request(other)
    limits.charge_tokens(t.id, 10)
    with pytest.raises(RateLimited):
        limits.check_request(other)

    def counted(limit: str) -> float | None:
        return registry.get_sample_value("modelyard_limit_refusals_total", {"tenant": "acme", "limit": limit})

    assert (counted("key_requests_per_second"), counted("requests_per_day"), counted("tokens_per_day")) == (3, 1, 1)


def test_a_tenants_requests_per_second_hold_over_all_its_keys(services: tuple[Database, TenantService, Limits]) -> None:
    _db, tenants, limits = services
    t = tenants.create("acme", quotas=Quotas(requests_per_second=3))
    keys = [_principal(t.id, rate=100.0, key=f"k{i}") for i in range(3)]
    admitted = []
    for i in range(9):
        try:
            limits.check_request(keys[i % 3])
            admitted.append(i % 3)
        except RateLimited as exc:
            assert exc.message.startswith("tenant requests/second limit reached (3 requests/s)") and exc.retry_after >= 1
    assert admitted == [0, 1, 2]  # a bucket of one second, whichever key asks
    other = tenants.create("other")
    limits.check_request(_principal(other.id, key="x"))  # another tenant: no limit of acme's


def test_a_tenants_requests_per_second_must_be_above_zero(services: tuple[Database, TenantService, Limits]) -> None:
    _db, tenants, _ = services
    tenants.create("acme")
    with pytest.raises(ValidationFailed, match="requests_per_second must be > 0"):
        tenants.update("acme", quotas={"requests_per_second": 0})
    assert tenants.update("acme", quotas={"requests_per_second": 2.5}).quotas.requests_per_second == 2.5


def test_a_small_share_of_a_rate_says_retry_within_one_period_of_the_whole_rate(
    services: tuple[Database, TenantService, Limits],
) -> None:
    """A server with a hundredth of a key's 0.5/s (one request every 200 s here) would say
    "retry in 200 s"; the cluster frees one every 2 s, and that is what it says."""
    _db, tenants, limits = services
    t = tenants.create("acme")
    who = _principal(t.id, rate=0.5)
    limits.rates.share({"k1": 0.01})
    limits.check_request(who)
    with pytest.raises(RateLimited) as refused:
        limits.check_request(who)
    assert refused.value.retry_after == pytest.approx(2.0)
    assert refused.value.message.endswith("retry in 2 s")


def test_a_refused_request_gives_its_keys_token_back() -> None:
    rates = KeyRates()
    assert rates.take("k", 1.0, now=0.0) == 0
    assert rates.take("k", 1.0, now=0.0) > 0
    rates.refund("k")  # (the tenant's bucket refused the first after all)
    assert rates.take("k", 1.0, now=0.0) == 0
    rates.refund("k")
    rates.refund("k")  # never over the bucket's capacity
    assert rates.take("k", 1.0, now=0.0) == 0 and rates.take("k", 1.0, now=0.0) > 0
    rates.refund("unknown")  # a key with no bucket: nothing to give back
