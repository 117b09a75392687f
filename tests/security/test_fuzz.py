"""Schemathesis fuzzing of every operation in the live OpenAPI document: no 5xx, ever."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.security.conftest import assert_clean
from tests.support.live import LiveServer

MAX_EXAMPLES = 20
BUDGET_S = 110.0


@pytest.fixture
def fuzz_server(tmp_path: Path) -> Iterator[LiveServer]:
    server = LiveServer.build(tmp_path / "home").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_fuzz_every_operation_without_server_errors(fuzz_server: LiveServer) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    headers = {"Authorization": f"Bearer {fuzz_server.admin_key}"}
    failures: list[str] = []
    started = time.monotonic()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    calls = [0]
    for operation in operations:
        if time.monotonic() - started > BUDGET_S:
            break

        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case: object) -> None:
            response = case.call(base_url=fuzz_server.url, headers=headers, timeout=15)  # type: ignore[attr-defined]
            calls[0] += 1
            label = f"{case.method} {case.formatted_path}"  # type: ignore[attr-defined]
            if response.status_code >= 500:
                failures.append(f"{label}: {response.status_code} {response.text[:200]}")
            if response.status_code >= 400:
                flat = [(k, v) for k, vs in response.headers.items() for v in (vs if isinstance(vs, list) else [vs])]
                try:
                    assert_clean(httpx.Response(response.status_code, headers=flat, content=response.content), label)
                except AssertionError as exc:
                    failures.append(str(exc).splitlines()[0])

        run()
    assert calls[0] >= 5 * len(operations), f"only {calls[0]} fuzz requests were sent"
    assert not failures, f"{len(failures)} failure(s):\n" + "\n".join(sorted(set(failures))[:40])
