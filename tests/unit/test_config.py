"""Serving settings: defaults and what is refused."""

from __future__ import annotations

import pytest

from modelyard.config import Settings


def test_inline_compute_default() -> None:
    assert Settings().inline_compute_us == 500.0
    assert Settings(inline_compute_us=0).inline_compute_us == 0.0


def test_inline_compute_refuses_negative_values() -> None:
    with pytest.raises(ValueError):
        Settings(inline_compute_us=-1)


def test_grpc_transport_is_native_by_default_and_checked() -> None:
    assert Settings().grpc_transport == "native"
    assert Settings(grpc_transport="grpcio").grpc_transport == "grpcio"
    with pytest.raises(ValueError):
        Settings(grpc_transport="h3")
