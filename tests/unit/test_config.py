"""Serving settings: defaults and what is refused."""

from __future__ import annotations

import os

import pytest

from modelyard.config import INLINE_COMPUTE_ONE_CORE_US, INLINE_COMPUTE_US, Settings


def test_inline_compute_default_depends_on_the_cores() -> None:
    assert Settings(cores=2).inline_below_s == INLINE_COMPUTE_US / 1e6 == 0.0005
    assert Settings(cores=1).inline_below_s == INLINE_COMPUTE_ONE_CORE_US / 1e6 == 0.025
    assert Settings(cores=1, inline_compute_us=0).inline_below_s == 0.0
    assert Settings(cores=8, inline_compute_us=2000).inline_below_s == 0.002


def test_cores_default_to_those_the_process_may_run_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELYARD_CORES", raising=False)
    assert Settings().cores == len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert Settings().cores == 1
    monkeypatch.delattr(os, "sched_getaffinity")  # macOS has none: every core counts
    assert Settings().cores == (os.cpu_count() or 1)


def test_inline_compute_refuses_negative_values() -> None:
    with pytest.raises(ValueError):
        Settings(inline_compute_us=-1)


def test_grpc_transport_is_native_by_default_and_checked() -> None:
    assert Settings().grpc_transport == "native"
    assert Settings(grpc_transport="grpcio").grpc_transport == "grpcio"
    with pytest.raises(ValueError):
        Settings(grpc_transport="h3")


def test_listen_sockets_default_to_eight_and_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().listen_sockets == 8
    monkeypatch.setenv("MODELYARD_LISTEN_SOCKETS", "2")
    assert Settings().listen_sockets == 2
    for bad in (0, 65, -1):
        with pytest.raises(ValueError, match="listen_sockets"):
            Settings(listen_sockets=bad)
