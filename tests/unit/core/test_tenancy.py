"""Tenants, keys (list/revoke/expiry), usage metering and the audit log, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest

from modelyard.core.audit import AuditEntry, AuditLog
from modelyard.core.keys import KeyService
from modelyard.core.tenants import TenantService
from modelyard.core.usage import UsageMeter, to_csv
from modelyard.errors import Conflict, KeyNotFound, TenantNotFound, Unauthenticated, ValidationFailed
from modelyard.store.db import Database


@pytest.fixture
def db(database_url: str) -> Database:
    database = Database(database_url)
    database.migrate()
    yield database
    database.dispose()


def test_tenant_lifecycle_and_disable_stops_keys(db: Database) -> None:
    keys = KeyService(db, cache_ttl_s=60)
    tenants = TenantService(db, keys)
    t = tenants.create("acme")
    with pytest.raises(Conflict):
        tenants.create("acme")
    with pytest.raises(ValidationFailed):
        tenants.create("../etc")
    _info, secret = keys.create(tenant_id=t.id, role="developer")
    assert keys.authenticate(secret).tenant_name == "acme"
    tenants.update("acme", disabled=True)
    with pytest.raises(Unauthenticated, match="disabled"):
        keys.authenticate(secret)  # at once, despite the 60 s cache
    tenants.update("acme", disabled=False, quotas={"requests_per_day": 5})
    assert tenants.get("acme").quotas.requests_per_day == 5
    with pytest.raises(ValidationFailed):
        tenants.update("acme", quotas={"owner": 1})
    assert [x.name for x in tenants.list().items] == ["acme"]
    tenants.delete("acme")
    with pytest.raises(TenantNotFound):
        tenants.get("acme")


def test_delete_refused_while_tenant_owns_models(db: Database) -> None:
    from modelyard.store.tables import ModelRow

    keys = KeyService(db)
    tenants = TenantService(db, keys)
    t = tenants.create("acme")
    with db.transaction() as s:
        s.add(ModelRow(id="m1", tenant_id=t.id, name="digits", description="", tags={}, next_version=1))
    with pytest.raises(Conflict, match="owns 1 models"):
        tenants.delete("acme")
    tenants.delete("acme", force=True)
    with pytest.raises(TenantNotFound):
        tenants.get(t.id)


def test_keys_list_revoke_expire(db: Database) -> None:
    keys = KeyService(db, cache_ttl_s=60)
    tenants = TenantService(db, keys)
    a, b = tenants.create("a"), tenants.create("b")
    ka, secret = keys.create(tenant_id=a.id, role="owner")
    kb, _ = keys.create(tenant_id=b.id, role="owner")
    assert [k.id for k in keys.list(a.id)] == [ka.id]
    assert {k.id for k in keys.list(None)} >= {ka.id, kb.id}
    with pytest.raises(KeyNotFound):
        keys.get(a.id, kb.id)  # other tenant's key: not found
    assert keys.get(a.id, ka.prefix).id == ka.id
    assert keys.authenticate(secret).key_id == ka.id
    keys.revoke(a.id, ka.id)
    with pytest.raises(Unauthenticated, match="revoked"):
        keys.authenticate(secret)
    assert keys.list(a.id) == [] and len(keys.list(a.id, include_revoked=True)) == 1
    _k, short = keys.create(tenant_id=a.id, role="viewer", expires_at=datetime.now(timezone.utc) - timedelta(seconds=1))
    with pytest.raises(Unauthenticated, match="expired"):
        keys.authenticate(short)


def test_usage_meter_sums_concurrent_records_and_prices(db: Database) -> None:
    meter = UsageMeter(db, prices={"request": 0.01, "output_token": 0.001, "compute_second": 1.0}, flush_s=0.05)
    meter.start()
    hour = datetime(2026, 1, 1, 10, 30, tzinfo=timezone.utc)

    def work() -> None:
        for _ in range(250):
            meter.record("t1", "digits", compute_s=0.002, output_tokens=2, at=hour)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    meter.record("t1", "digits", errors=1, at=hour)
    meter.record("t2", "other", at=hour + timedelta(hours=1))
    meter.close()
    rows = meter.query(tenant_id="t1")
    assert len(rows) == 1
    r = rows[0]
    assert (r.requests, r.errors, r.output_tokens) == (1001, 1, 2000)
    assert r.hour == hour.replace(minute=0)
    assert r.compute_s == pytest.approx(2.0)
    assert r.cost == pytest.approx(1001 * 0.01 + 2000 * 0.001 + 2.0)
    assert len(meter.query(tenant_id=None)) == 2
    assert meter.query(tenant_id=None, start=hour + timedelta(hours=1))[0].model == "other"
    assert meter.query(tenant_id=None, model="nope") == []
    csv_text = to_csv(rows)
    assert csv_text.splitlines()[0].startswith("tenant,model,hour,requests")
    assert ",1001,1,0,2000," in csv_text


def test_usage_second_meter_adds_to_same_row(db: Database) -> None:
    one, two = UsageMeter(db), UsageMeter(db)
    one.record("t", "m")
    two.record("t", "m", requests=2)
    one.flush()
    two.flush()
    assert one.query(tenant_id="t")[0].requests == 3


def test_audit_append_only_and_scoped(db: Database) -> None:
    log = AuditLog(db)
    log.append(AuditEntry(action="POST", object="/api/v1/models/x/versions", result=201, request_id="r1",
                          tenant_id="t1", key_id="k1", role="developer"))
    log.append(AuditEntry(action="GET", object="/api/v1/models", result=401, request_id="r2"))
    log.append(AuditEntry(action="DELETE", object="/api/v1/models/y", result=204, request_id="r3", tenant_id="t2"))
    log.close()
    assert [e.request_id for e in log.query(tenant_id=None).items] == ["r3", "r2", "r1"]
    mine = log.query(tenant_id="t1").items
    assert [e.request_id for e in mine] == ["r1"] and mine[0].role == "developer"
    assert log.query(tenant_id=None, action="delete").total == 1
    assert log.query(tenant_id=None, object_prefix="/api/v1/models/x").total == 1
    assert not hasattr(log, "delete") and not hasattr(log, "update")
