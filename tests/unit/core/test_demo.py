"""The digits demo model: registered once, and a start never fails on what a user did to it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.config import Settings
from modelyard.core.demo import DEMO_MODEL, ensure_demo_model
from modelyard.core.platform import Platform


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    p = Platform.open(Settings(home=tmp_path / "home", builtin_models=False, grpc_enabled=False))
    yield p
    asyncio.run(p.aclose())


@pytest.mark.slow
def test_demo_is_registered_once_and_survives_a_deleted_version(platform: Platform, tmp_path: Path) -> None:
    tenant = platform.keys.ensure_default_tenant()
    first = ensure_demo_model(platform.registry, platform.artifacts, tenant, tmp_path / "work")
    assert first.model_name == DEMO_MODEL and first.stage == "production" and first.metrics["accuracy"] > 0.9
    again = ensure_demo_model(platform.registry, platform.artifacts, tenant, tmp_path / "work")
    assert again.version == first.version
    # the user deletes the only version but keeps the model: the next start registers a new one
    platform.registry.delete_version(tenant, DEMO_MODEL, first.version)
    fresh = ensure_demo_model(platform.registry, platform.artifacts, tenant, tmp_path / "work")
    assert fresh.version == first.version + 1 and fresh.stage == "production"
    assert list((tmp_path / "work").iterdir()) == []  # the temporary .onnx file is gone
