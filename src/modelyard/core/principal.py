"""Who is calling: the authenticated principal, its role, and what each role may do.

The permission table below is the single source of truth for authorisation; interfaces ask
``principal.require(action)`` and never compare role names themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from modelyard.errors import PermissionDenied

__all__ = ["Principal", "ROLES", "ACTIONS", "PERMISSIONS", "DEFAULT_TENANT", "permission_table"]

DEFAULT_TENANT: Final = "default"

ROLES: Final = ("admin", "owner", "developer", "viewer", "inference")

#: action -> roles allowed to perform it.
PERMISSIONS: Final[dict[str, frozenset[str]]] = {
    "models:read": frozenset({"admin", "owner", "developer", "viewer", "inference"}),
    "models:write": frozenset({"admin", "owner", "developer"}),
    "models:delete": frozenset({"admin", "owner", "developer"}),
    "models:promote": frozenset({"admin", "owner", "developer"}),
    # load ahead of traffic and unload: each version's memory, not the other tenants'
    "models:load": frozenset({"admin", "owner", "developer"}),
    # pinned versions hold the server's memory budget for every tenant: the operator's call
    "models:pin": frozenset({"admin"}),
    "infer": frozenset({"admin", "owner", "developer", "viewer", "inference"}),
    "datasets:read": frozenset({"admin", "owner", "developer", "viewer"}),
    "datasets:write": frozenset({"admin", "owner", "developer"}),
    "jobs:read": frozenset({"admin", "owner", "developer", "viewer"}),
    "jobs:write": frozenset({"admin", "owner", "developer"}),
    "deployments:read": frozenset({"admin", "owner", "developer", "viewer"}),
    "deployments:write": frozenset({"admin", "owner", "developer"}),
    "keys:read": frozenset({"admin", "owner"}),
    "keys:write": frozenset({"admin", "owner"}),
    "usage:read": frozenset({"admin", "owner", "developer", "viewer"}),
    "audit:read": frozenset({"admin", "owner"}),
    "tenants:manage": frozenset({"admin"}),
    # Prometheus metrics are server-wide (labels name every tenant's models): admins only.
    "metrics:read": frozenset({"admin"}),
    "server:read": frozenset({"admin", "owner", "developer", "viewer", "inference"}),
    # the server's own settings (its log level): every tenant's, so the operator's
    "server:manage": frozenset({"admin"}),
}

ACTIONS: Final = tuple(PERMISSIONS)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: an API key acting as ``role`` inside ``tenant_id``.

    ``scopes`` optionally restricts the key to named models or deployments (empty: all).
    """

    key_id: str
    tenant_id: str
    tenant_name: str
    role: str
    scopes: tuple[str, ...] = field(default_factory=tuple)
    rate_limit: float | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def can(self, action: str) -> bool:
        return self.role in PERMISSIONS[action]

    def require(self, action: str) -> None:
        if not self.can(action):
            raise PermissionDenied(f"role {self.role!r} may not perform {action!r}")

    def in_scope(self, name: str) -> bool:
        return not self.scopes or name in self.scopes


def permission_table() -> str:
    """:data:`PERMISSIONS` as a Markdown table (action x role); ``docs/security.md`` embeds it
    and a test keeps the two equal."""
    lines = ["| action | " + " | ".join(ROLES) + " |", "| --- |" + " :---: |" * len(ROLES)]
    for action, roles in PERMISSIONS.items():
        lines.append(f"| `{action}` | " + " | ".join("yes" if r in roles else "-" for r in ROLES) + " |")
    return "\n".join(lines)
