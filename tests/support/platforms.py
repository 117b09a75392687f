"""A platform in process (no HTTP) with model ``m``'s two versions registered, for core tests:
version 1 doubles nothing (``y = x``), version 2 doubles (``y = 2x``)."""

from __future__ import annotations

from pathlib import Path

from modelyard.config import Settings
from modelyard.core.platform import Platform
from tests.integration._serving import scale_model


def platform_with_m(folder: Path, **settings: object) -> Platform:
    """A platform under ``folder / "home"`` (``settings``: more of its settings, e.g. the
    database's URL) whose default tenant has ``m`` versions 1 and 2, both in production."""
    p = Platform.open(Settings(home=folder / "home", builtin_models=False, grpc_enabled=False, **settings))  # type: ignore[arg-type]
    tenant = p.keys.ensure_default_tenant()
    for factor in (1.0, 2.0):
        path = scale_model(folder / f"m{factor}.onnx", factor)
        with open(path, "rb") as f:
            staged = p.artifacts.stage_stream(f, max_bytes=path.stat().st_size)
        p.registry.register_version(tenant_id=tenant, model_name="m", staged=staged, stage="production")
    return p
