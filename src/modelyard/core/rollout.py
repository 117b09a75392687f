"""A deployment's progressive rollout: its canary's share of the traffic raised step by step on a
schedule (``{"steps": [10, 25, 50, 100], "interval_s": 300}``), as a release engineer would by
hand, and the canary promoted when a step reaches 100.

A rollout runs on a deployment of two routes (the primary, then the canary). Setting one puts the
canary at its first step at once; every ``interval_s`` seconds the next step follows
(``Deployments.advance_rollouts``, which each server runs every ``MODELYARD_ROLLOUT_CHECK_S``;
of a cluster's servers the first to see a step due takes it, under the deployment row's lock, and
the others find it taken). What stops it: a rollback (by hand, or the automatic one of the
deployment's ``rollback`` policy, which is what makes a rollout safe to leave alone), a
promotion, any change of the routes or weights by hand, or removing it. Each step is an event
of the deployment (``rollout_step``); the last, at 100, promotes the canary (``promoted``, reason
``rollout``). A schedule whose last step is under 100 stays at that split when it ends.

Time alone is thin evidence: a canary may have answered nothing in a quiet interval. With
``min_requests`` (``{"steps": [...], "interval_s": 300, "min_requests": 200}``) a step that is due
waits until the canary has answered that many requests without error at the current step, as the
server taking the step counted them (each server counts what it served itself: in a cluster, the
first server that has seen enough takes the step). Until then the canary stays where it is; the
deployment's live ``stats.rollout`` shows the count.

Nothing here touches the database: :class:`Rollout` is the schedule and where it stands, read
from and written to the deployment's row by ``core/deployments.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from modelyard.errors import ValidationFailed

__all__ = ["Rollout", "parse_rollout", "MAX_STEPS"]

#: steps a schedule may have
MAX_STEPS = 20
#: the shortest and the longest time between two steps
INTERVAL_RANGE_S = (0.1, 7 * 86_400.0)
#: the most answers a step may wait for
MAX_MIN_REQUESTS = 10_000_000


@dataclass(frozen=True, slots=True)
class Rollout:
    """The canary's share (percent of the traffic) at each step, the time between steps, the
    step it is at and when (wall-clock seconds) that step was taken, and the canary's answers
    (without error) a step waits for besides its time."""

    steps: tuple[float, ...]
    interval_s: float
    step: int = 0
    since: float = 0.0
    min_requests: int = 0

    @property
    def share(self) -> float:
        """The canary's share now, in percent."""
        return self.steps[self.step]

    @property
    def last(self) -> bool:
        return self.step == len(self.steps) - 1

    @property
    def next_at(self) -> float:
        """When the next step is due (infinity once at the last one)."""
        return math.inf if self.last else self.since + self.interval_s

    def due(self, now: float) -> bool:
        """Whether the next step's time has come (its evidence is counted apart, by the servers)."""
        return now >= self.next_at

    @property
    def at(self) -> tuple[int, float]:
        """Which step this is: the step and when it was taken (a new step is another)."""
        return self.step, self.since

    def next(self, now: float) -> Rollout:
        """The rollout one step on, taken at ``now``."""
        return replace(self, step=self.step + 1, since=now)

    def to_row(self) -> dict[str, Any]:
        return {"steps": list(self.steps), "interval_s": self.interval_s, "step": self.step, "since": self.since,
                "min_requests": self.min_requests}

    def to_dict(self) -> dict[str, Any]:
        """As the API shows it: the schedule, the step it is at (from 0), the canary's share now,
        when the next step is due (``None`` at the last) and the answers it waits for."""
        next_at = self.next_at
        return {
            "steps": list(self.steps), "interval_s": self.interval_s, "step": self.step, "share": self.share,
            "next_step_at": None if math.isinf(next_at) else datetime.fromtimestamp(next_at, UTC).isoformat(),
            "min_requests": self.min_requests,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any] | None) -> Rollout | None:
        if not row:
            return None
        return cls(tuple(float(s) for s in row["steps"]), float(row["interval_s"]), int(row["step"]),
                   float(row["since"]), int(row.get("min_requests", 0)))


def parse_rollout(raw: Any, routes: Sequence[Any], now: float) -> Rollout | None:
    """A schedule as a caller sends it (``{"steps": [...], "interval_s": N, "min_requests": M}``),
    starting at ``now``, for a deployment with ``routes``; :class:`ValidationFailed` names what is
    wrong."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or set(raw) - {"steps", "interval_s", "min_requests"}:
        raise _bad("rollout", 'rollout is {"steps": [canary percents, rising], "interval_s": seconds between steps, '
                              '"min_requests": canary answers each step waits for (optional)}')
    if len(routes) != 2:
        raise _bad("rollout", f"a rollout moves traffic from a primary to one canary: the deployment needs exactly "
                              f"two routes, not {len(routes)}")
    steps = raw.get("steps")
    if not isinstance(steps, Sequence) or isinstance(steps, str) or not 1 <= len(steps) <= MAX_STEPS:
        raise _bad("rollout.steps", f"rollout.steps is a list of 1 to {MAX_STEPS} canary percents, e.g. [10, 25, 50, 100]")
    shares: list[float] = []
    for i, step in enumerate(steps):
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 < step <= 100:
            raise _bad(f"rollout.steps.{i}", f"each step is the canary's percent of the traffic, over 0 and at most "
                                             f"100, not {step!r}")
        if shares and step <= shares[-1]:
            raise _bad(f"rollout.steps.{i}", "the steps must rise: each gives the canary more traffic than the last")
        shares.append(float(step))
    interval = raw.get("interval_s", 300.0)
    low, high = INTERVAL_RANGE_S
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not low <= interval <= high:
        raise _bad("rollout.interval_s", f"rollout.interval_s is the seconds between two steps, {low:g} to "
                                         f"{high:g}, not {interval!r}")
    least = raw.get("min_requests", 0)
    if type(least) is not int or not 0 <= least <= MAX_MIN_REQUESTS:
        raise _bad("rollout.min_requests", f"rollout.min_requests is how many canary answers (without error) a "
                                           f"step waits for, 0 to {MAX_MIN_REQUESTS:,}, not {least!r}")
    return Rollout(tuple(shares), float(interval), 0, now, least)


def _bad(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, details={"field": field})
