"""The rounds a cluster's servers share by: a round that fails is logged, not every time while
they keep failing, and once when they work again."""

from __future__ import annotations

import asyncio

import pytest

from modelyard.core import cluster
from modelyard.core.cluster import every, server_id


def test_server_ids_differ_between_servers_of_one_process() -> None:
    assert server_id() != server_id() and len(server_id()) <= 160


def _said(outcomes: list[Exception | None], caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the rounds logged, one round per outcome (None: it worked)."""
    left = iter(outcomes)
    rounds = []

    async def one_round() -> None:
        rounds.append(1)
        outcome = next(left, None)
        if outcome is not None:
            raise outcome

    async def run() -> None:
        task = asyncio.create_task(every(0.001, one_round, "the figures"))
        while len(rounds) < len(outcomes) + 2:
            await asyncio.sleep(0.005)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level("WARNING", logger="modelyard.core.cluster"):
        asyncio.run(run())
    return [r.getMessage() for r in caplog.records]


def test_failing_rounds_are_logged_once_a_while_and_the_recovery_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cluster, "FAILURE_LOG_S", 3600.0)
    said = _said([RuntimeError("database away")] * 5 + [None] * 3 + [RuntimeError("away again")], caplog)
    assert len(said) == 4, said  # failed, back, failed again, back again: not once per round
    assert said[0].startswith("could not share the figures with the cluster (failing for 0 s") and "database away" in said[0]
    assert said[1].startswith("sharing the figures with the cluster again, after")
    assert "away again" in said[2] and said[3].startswith("sharing the figures with the cluster again")


def test_rounds_that_keep_failing_are_logged_again_each_period(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cluster, "FAILURE_LOG_S", 0.0)
    said = _said([RuntimeError("database away")] * 4, caplog)
    assert [line.startswith("could not share the figures") for line in said] == [True] * 4 + [False], said
    assert said[-1].startswith("sharing the figures with the cluster again")
