"""Settings defaults that depend on other settings."""

from __future__ import annotations

import pytest

from modelyard.config import Settings


@pytest.mark.parametrize(
    ("cores", "given", "expected"),
    [(1, None, 5000.0), (2, None, 500.0), (16, None, 500.0), (1, 0.0, 0.0), (8, 1234.0, 1234.0)],
)
def test_inline_compute_default_follows_the_cores(cores: int, given: float | None, expected: float) -> None:
    """With one core a thread has no second core to use, so longer batches compute on the loop."""
    assert Settings(cores=cores, inline_compute_us=given).resolved_inline_compute_us == expected


def test_inline_compute_refuses_negative_values() -> None:
    with pytest.raises(ValueError):
        Settings(inline_compute_us=-1)


def test_grpc_transport_is_native_by_default_and_checked() -> None:
    assert Settings().grpc_transport == "native"
    assert Settings(grpc_transport="grpcio").grpc_transport == "grpcio"
    with pytest.raises(ValueError):
        Settings(grpc_transport="h3")
