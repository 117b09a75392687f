"""Authentication, authorisation and tenant isolation on every route of the live OpenAPI
document, so routes added later are covered without editing this file."""

from __future__ import annotations

import re
import uuid

import pytest

from tests.security.conftest import ROLES, World, assert_clean

#: POSTs that change nothing: inference, and Triton's repository index (a query, POST by its spec);
#: and the shared-memory registrations that inference through regions needs: a key that may infer
#: sets them up (its tenant's regions are inference's session state, not its models or keys)
READ_ONLY_POSTS = re.compile(
    r"(/infer$|^/v1/(chat/completions|completions|embeddings)$|^/v2/repository/index$"
    r"|^/v2/(system|cuda)sharedmemory/(region/[^/]+/)?(register|unregister)$)"
)
BAD_AUTH = {
    "no key": None,
    "basic scheme": "Basic dXNlcjpwYXNz",
    "bearer without key": "Bearer",
    "not a key": "Bearer not-a-key",
    "unknown key": "Bearer my_0123456789ab_" + "x" * 40,
    "sql in key": "Bearer ' OR 1=1 --",
}


def _report(failures: list[str]) -> None:
    assert not failures, f"{len(failures)} failure(s):\n" + "\n".join(failures[:60])


def test_the_document_lists_the_tenancy_routes(world: World) -> None:
    paths = {op.path for op in world.operations}
    assert {"/api/v1/tenants", "/api/v1/keys", "/api/v1/usage", "/api/v1/audit"} <= paths
    assert len(world.operations) >= 20


@pytest.mark.parametrize("label", list(BAD_AUTH))
def test_every_route_refuses_missing_or_malformed_keys(world: World, label: str) -> None:
    failures = []
    for op in world.operations:
        resp = world.call(op, None, world.params_for(op, world.red), raw_auth=BAD_AUTH[label])
        assert_clean(resp, str(op))
        if op.public:
            if resp.status_code != 200:
                failures.append(f"{op}: public route answered {resp.status_code}")
        elif resp.status_code != 401:
            failures.append(f"{op} [{label}]: {resp.status_code} {resp.text[:120]}")
        elif resp.headers.get("www-authenticate", "").lower() != "bearer":
            failures.append(f"{op} [{label}]: 401 without WWW-Authenticate: Bearer")
    _report(failures)


@pytest.mark.parametrize("which", ["revoked", "expired"])
def test_every_route_refuses_revoked_and_expired_keys(world: World, which: str) -> None:
    key = world.revoked if which == "revoked" else world.expired
    failures = []
    for op in world.operations:
        if op.public:
            continue
        resp = world.call(op, key, world.params_for(op, world.red))
        assert_clean(resp, str(op))
        if resp.status_code != 401:
            failures.append(f"{op}: {resp.status_code} {resp.text[:120]}")
        elif which not in resp.json()["error"]["message"]:
            failures.append(f"{op}: message does not say the key is {which}")
    _report(failures)


def test_only_public_routes_lack_a_security_requirement(world: World) -> None:
    unsecured = {str(op) for op in world.operations if not op.spec.get("security") and not op.public}
    assert not unsecured, f"routes without a documented key requirement: {sorted(unsecured)}"


@pytest.mark.parametrize("role", ROLES)
def test_each_role_gets_403_where_its_role_may_not_act(world: World, role: str) -> None:
    key = world.red.keys[role]
    failures = []
    for op in world.operations:
        if op.public:
            continue
        params = world.params_for(op, world.red)
        # never let an allowed role really delete the shared fixtures
        if op.method == "DELETE" and role in ("owner", "developer") and not op.path.startswith("/api/v1/tenants"):
            continue
        if op.method != "GET" and role in ("owner", "developer"):
            if not op.path.startswith("/api/v1/tenants"):
                continue
        resp = world.call(op, key, params)
        assert_clean(resp, f"{op} as {role}")
        status = resp.status_code
        if status >= 500:
            failures.append(f"{op} as {role}: {status}")
        if op.path.startswith("/api/v1/tenants") and status != 403:
            failures.append(f"{op} as {role}: admin-only route answered {status}")
        read_only = role in ("viewer", "inference")
        if read_only and op.method == "DELETE" and status != 403:
            failures.append(f"{op} as {role}: DELETE answered {status}, expected 403")
        if read_only and op.method in ("POST", "PUT", "PATCH") and not READ_ONLY_POSTS.search(op.path):
            if 200 <= status < 300:
                failures.append(f"{op} as {role}: a read-only role mutated ({status})")
        if world.blue.model in resp.text or world.blue.id in resp.text:
            failures.append(f"{op} as {role}: response shows the other tenant's data")
    _report(failures)


def _normalise(text: str, *values: str) -> str:
    for v in values:
        text = text.replace(v, "<OBJECT>")
    return text


@pytest.mark.parametrize("role", ROLES)
def test_another_tenants_key_never_sees_or_touches_its_objects(world: World, role: str) -> None:
    """Blue's keys against red's objects: 403/404 only, and a 404 that reads exactly like the
    one for an object that does not exist at all."""
    key = world.blue.keys[role]
    failures = []
    for op in world.operations:
        if op.public:
            continue
        red_params = world.params_for(op, world.red)
        resp = world.call(op, key, red_params)
        assert_clean(resp, f"{op} as blue {role}")
        if 200 <= resp.status_code < 300 and op.path_params and "key_id" not in op.path_params:
            if not (op.path.startswith("/v1/") and op.method == "POST"):
                failures.append(f"{op} as blue {role}: red's object answered {resp.status_code}")
        if 200 <= resp.status_code < 300 and "key_id" in op.path_params:
            failures.append(f"{op} as blue {role}: red's key answered {resp.status_code}")
        if op.path == "/api/v1/audit" and resp.status_code == 200:
            # the audit log echoes blue's own requests (which name red's objects): check owners
            if any(e["tenant_id"] != world.blue.id for e in resp.json()["items"]):
                failures.append(f"{op} as blue {role}: audit shows entries of another tenant")
        elif world.red.id in resp.text or (not op.path_params and world.red.model in resp.text):
            failures.append(f"{op} as blue {role}: response shows red's data")
        if op.path_params and resp.status_code == 404:
            ghost = {
                k: ("1" if v == "1" else str(uuid.uuid4()) if k == "key_id" else "gone-model" if v == world.red.model
                    else "ghost")
                for k, v in red_params.items()
            }
            missing = world.call(op, key, ghost)
            a = _normalise(resp.text, *red_params.values())
            b = _normalise(missing.text, *ghost.values())
            if missing.status_code != 404 or a != b:
                failures.append(f"{op} as blue {role}: 'other tenant' and 'missing' differ: {a[:100]} | {b[:100]}")
    _report(failures)


def test_owner_cannot_escalate_with_keys(world: World) -> None:
    keys_op = next(op for op in world.operations if op.method == "POST" and op.path == "/api/v1/keys")
    owner = world.red.keys["owner"]
    assert world.call(keys_op, owner, {}, json={"role": "admin"}).status_code == 403
    assert world.call(keys_op, owner, {}, json={"role": "owner", "tenant": "blue"}).status_code == 403
    assert world.call(keys_op, world.red.keys["developer"], {}, json={"role": "viewer"}).status_code == 403
    created = world.call(keys_op, owner, {}, json={"role": "viewer", "tenant": "red"})
    assert created.status_code == 201 and created.json()["tenant_id"] == world.red.id
    list_op = next(op for op in world.operations if op.method == "GET" and op.path == "/api/v1/keys")
    listed = world.call(list_op, owner, {}, query={"tenant": "blue"}).json()
    assert all(k["tenant_id"] == world.red.id for k in listed["items"])
    assert "secret" not in str(listed) and created.json()["secret"] not in str(listed)
