"""Validation of caller-chosen names (models, datasets, deployments, tenants).

Names become URL path segments and never file paths, but they are still held to a strict
alphabet so that no encoded or traversal variant can be stored.
"""

from __future__ import annotations

import re

from modelyard.errors import ValidationFailed

__all__ = ["check_name"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_name(value: str, *, field: str = "name") -> str:
    if not isinstance(value, str) or not _NAME.match(value) or ".." in value:
        raise ValidationFailed(
            f"invalid {field} {value!r}: use 1-128 letters, digits, '_', '-', '.', "
            "starting with a letter or digit, without '..'",
            details={"field": field},
        )
    return value
