"""docs/security.md shows exactly the permission table of core/principal.py."""

from __future__ import annotations

from pathlib import Path

from modelyard.core.principal import PERMISSIONS, ROLES, permission_table

DOC = Path(__file__).resolve().parents[3] / "docs" / "security.md"


def test_doc_embeds_the_current_table() -> None:
    text = DOC.read_text()
    start, end = text.index("<!-- permissions:start -->"), text.index("<!-- permissions:end -->")
    assert text[start:end].split("\n", 1)[1].strip() == permission_table().strip()


def test_table_covers_every_action_and_role() -> None:
    table = permission_table()
    for action in PERMISSIONS:
        assert f"`{action}`" in table
    assert all(role in table.splitlines()[0] for role in ROLES)
    assert PERMISSIONS["tenants:manage"] == frozenset({"admin"})
