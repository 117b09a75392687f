"""API keys: creation, hashing, authentication and the first-start bootstrap.

A key looks like ``my_<prefix>_<secret>``. Only ``sha256(key)`` is stored; lookup is by prefix
and the hash is compared in constant time. On the event loop (``authenticate_async``) results are
cached in-process for a moment (``cache_ttl_s``) so the inference hot path does not query the
database on every request; revoking a key or disabling a tenant in this process clears the cache
at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select

from modelyard.core.cache import AsyncTTLCache
from modelyard.core.principal import DEFAULT_TENANT, ROLES, Principal
from modelyard.errors import KeyNotFound, Unauthenticated, ValidationFailed
from modelyard.store.db import Database
from modelyard.store.tables import ApiKeyRow, TenantRow

__all__ = ["KeyService", "KeyInfo", "hash_key", "bearer_token"]

_PREFIX_LEN = 12


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _new_secret() -> tuple[str, str]:
    prefix = secrets.token_hex(_PREFIX_LEN // 2)
    return prefix, f"my_{prefix}_{secrets.token_urlsafe(32)}"


def _prefix_of(secret: str) -> str | None:
    parts = secret.split("_", 2)
    if len(parts) != 3 or parts[0] != "my" or len(parts[1]) != _PREFIX_LEN:
        return None
    return parts[1]


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: str
    tenant_id: str
    name: str
    prefix: str
    role: str
    scopes: tuple[str, ...]
    rate_limit: float | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


def _info(row: ApiKeyRow) -> KeyInfo:
    return KeyInfo(
        id=row.id,
        tenant_id=row.tenant_id,
        name=row.name,
        prefix=row.prefix,
        role=row.role,
        scopes=tuple(row.scopes or ()),
        rate_limit=row.rate_limit,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


def _aware(ts: datetime | None) -> datetime | None:
    if ts is not None and ts.tzinfo is None:
        return ts.replace(tzinfo=timezone.utc)
    return ts


def bearer_token(header: str | None, *, source: str = "Authorization header") -> str | None:
    """The key of a ``Bearer <key>`` value (``None`` when there is none); 401 when malformed.
    ``source`` names where it came from in the error (a header, gRPC metadata)."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(f"malformed {source}; expected 'Bearer <key>'")
    return token.strip()


class KeyService:
    """Creates and checks API keys."""

    def __init__(self, db: Database, *, cache_ttl_s: float = 1.0) -> None:
        self._db = db
        self._async_cache: AsyncTTLCache[str, tuple[Principal, datetime | None]] = AsyncTTLCache(ttl_s=cache_ttl_s)

    # -- bootstrap -------------------------------------------------------------------------
    def ensure_default_tenant(self) -> str:
        with self._db.transaction() as s:
            row = s.scalar(select(TenantRow).where(TenantRow.name == DEFAULT_TENANT))
            if row is None:
                row = TenantRow(id=str(uuid.uuid4()), name=DEFAULT_TENANT)
                s.add(row)
                s.flush()
            return row.id

    def bootstrap(self, admin_key: str | None) -> str | None:
        """Make sure an admin key exists. Returns a new secret to print once, or ``None``.

        With ``admin_key`` given (``MODELYARD_ADMIN_KEY``), that exact key is registered (once).
        """
        tenant_id = self.ensure_default_tenant()
        with self._db.transaction() as s:
            if admin_key is not None:
                prefix = _prefix_of(admin_key) or hash_key(admin_key)[:_PREFIX_LEN]
                exists = s.scalar(select(ApiKeyRow).where(ApiKeyRow.prefix == prefix))
                if exists is None:
                    s.add(self._row(tenant_id, "admin", "bootstrap admin", prefix, admin_key))
                return None
            any_admin = s.scalar(select(ApiKeyRow.id).where(ApiKeyRow.role == "admin").limit(1))
            if any_admin is not None:
                return None
            prefix, secret = _new_secret()
            s.add(self._row(tenant_id, "admin", "bootstrap admin", prefix, secret))
            return secret

    @staticmethod
    def _row(tenant_id: str, role: str, name: str, prefix: str, secret: str, **extra: object) -> ApiKeyRow:
        return ApiKeyRow(
            id=str(uuid.uuid4()),
            tenant_id=tenant_id,
            name=name,
            prefix=prefix,
            secret_hash=hash_key(secret),
            role=role,
            scopes=list(extra.pop("scopes", None) or []),  # type: ignore[call-overload]
            **extra,
        )

    # -- management ------------------------------------------------------------------------
    def create(
        self,
        *,
        tenant_id: str,
        role: str,
        name: str = "",
        scopes: list[str] | None = None,
        rate_limit: float | None = None,
        expires_at: datetime | None = None,
    ) -> tuple[KeyInfo, str]:
        """Create a key; the secret is returned once and never stored."""
        if role not in ROLES:
            raise ValidationFailed(f"unknown role {role!r}; expected one of {', '.join(ROLES)}", details={"field": "role"})
        prefix, secret = _new_secret()
        row = self._row(
            tenant_id, role, name or f"{role} key", prefix, secret,
            scopes=scopes, rate_limit=rate_limit, expires_at=expires_at,
        )
        with self._db.transaction() as s:
            s.add(row)
            s.flush()
            return _info(row), secret

    def list(self, tenant_id: str | None, *, include_revoked: bool = False) -> list[KeyInfo]:
        """Keys of one tenant (``None``: all tenants, for admins), newest first; no secrets."""
        query = select(ApiKeyRow).order_by(ApiKeyRow.created_at.desc())
        if tenant_id is not None:
            query = query.where(ApiKeyRow.tenant_id == tenant_id)
        if not include_revoked:
            query = query.where(ApiKeyRow.revoked_at.is_(None))
        with self._db.read() as s:
            return [_info(r) for r in s.scalars(query)]

    def get(self, tenant_id: str | None, key_id: str) -> KeyInfo:
        """One key by id or prefix, inside ``tenant_id`` (``None``: any tenant); else ``KeyNotFound``."""
        query = select(ApiKeyRow).where((ApiKeyRow.id == key_id) | (ApiKeyRow.prefix == key_id))
        if tenant_id is not None:
            query = query.where(ApiKeyRow.tenant_id == tenant_id)
        with self._db.read() as s:
            row = s.scalar(query)
            if row is None:
                raise KeyNotFound(f"API key {key_id!r} not found")
            return _info(row)

    def revoke(self, tenant_id: str | None, key_id: str) -> KeyInfo:
        """Revoke a key at once (this process forgets it immediately; others within the TTL)."""
        found = self.get(tenant_id, key_id)
        with self._db.transaction() as s:
            row = s.get(ApiKeyRow, found.id)
            assert row is not None
            if row.revoked_at is None:
                row.revoked_at = datetime.now(timezone.utc)
            info = _info(row)
        self.invalidate_cache()
        return info

    def invalidate_cache(self) -> None:
        self._async_cache.clear()

    def remembers_key(self, secret: str | None) -> bool:
        """Whether ``secret`` (a key read off its ``Bearer`` header) was authenticated here and
        not forgotten since (a revocation, or any change to keys, forgets them all at once).
        False for none. For answers made from memory of a caller (overload gates): a key
        revoked since is authenticated again."""
        return secret is not None and self._async_cache.peek(secret) is not None

    def known(self, secret: str | None) -> Principal | None:
        """:meth:`authenticate_async` from memory, without a coroutine: the principal of a key
        remembered and unexpired (a stale entry is refreshed in the background, as
        ``authenticate_async`` does); ``None``: await ``authenticate_async`` (which also answers
        a missing, unknown or expired key). Call it on the event loop."""
        if not secret:
            return None
        hit = self._async_cache.now(secret, lambda: self._lookup(secret))
        if hit is None:
            return None
        principal, expires = hit
        if expires is not None and expires <= datetime.now(timezone.utc):
            return None
        return principal

    async def authenticate_async(self, secret: str | None) -> Principal:
        """:meth:`authenticate` for the event loop: answered from memory while a key's entry is
        fresh or being refreshed; the database lookup runs in a thread, once per key."""
        if not secret:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        principal, expires = await self._async_cache.get(secret, lambda: self._lookup(secret))
        if expires is not None and expires <= datetime.now(timezone.utc):
            self._async_cache.discard(secret)
            raise Unauthenticated("API key has expired")
        return principal

    # -- authentication --------------------------------------------------------------------
    def authenticate(self, secret: str | None) -> Principal:
        """The principal for a presented key, or ``Unauthenticated`` (blocking, uncached: the
        event loop uses :meth:`authenticate_async`)."""
        if not secret:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        return self._lookup(secret)[0]

    def _lookup(self, secret: str) -> tuple[Principal, datetime | None]:
        prefix = _prefix_of(secret) or hash_key(secret)[:_PREFIX_LEN]
        with self._db.read() as s:
            found = s.execute(
                select(ApiKeyRow, TenantRow)
                .join(TenantRow, TenantRow.id == ApiKeyRow.tenant_id)
                .where(ApiKeyRow.prefix == prefix)
            ).first()
        candidate = hash_key(secret)
        if found is None or not hmac.compare_digest(found[0].secret_hash, candidate):
            raise Unauthenticated("invalid API key")
        key, tenant = found
        if key.revoked_at is not None:
            raise Unauthenticated("API key has been revoked")
        expires = _aware(key.expires_at)
        if expires is not None and expires <= datetime.now(timezone.utc):
            raise Unauthenticated("API key has expired")
        if tenant.disabled:
            raise Unauthenticated("the key's tenant is disabled")
        principal = Principal(
            key_id=key.id,
            tenant_id=tenant.id,
            tenant_name=tenant.name,
            role=key.role,
            scopes=tuple(key.scopes or ()),
            rate_limit=key.rate_limit,
        )
        return principal, expires
