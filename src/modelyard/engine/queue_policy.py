"""A priority level's own queue policy (Triton's ``priority_queue_policy``): the serving setting
``priority_queue_policy``, ``{"<level>": {"max_queue_size": N, "timeout_s": S}}``.

* ``max_queue_size``: at most this many requests of the level wait in the version's queue; one
  more gets 429 (``QueueFull``) while the other levels still get in. It is how a flood of
  background requests (say, level 2 of two) is kept from filling the queue that interactive
  ones (level 1) need: the version's own ``max_queue_size`` still bounds all levels together.
* ``timeout_s``: the level's deadline, over the version's ``timeout_s`` (a request's own
  ``timeout`` parameter may still shorten it, never extend it).

Levels are whole numbers from 1 (keys are strings in JSON); a level without a policy of its own
follows the version's settings. Checked when written (``ServingOptions.check``), each bad field
named: ``priority_queue_policy.<level>[.<name>]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelyard.errors import ValidationFailed

__all__ = ["check_queue_policy", "level_policy"]

_FIELD = "priority_queue_policy"
_MAX_QUEUE = 1_000_000
_MAX_TIMEOUT_S = 3600


def check_queue_policy(policy: Any, levels: int = 0) -> None:
    """Raise :class:`ValidationFailed` naming the field at fault unless ``policy`` is an object of
    levels (whole numbers from 1; up to ``levels`` when that is not 0) to their policies."""
    if not isinstance(policy, Mapping):
        raise ValidationFailed(
            f'{_FIELD} must be an object of priority levels to their policies, e.g. {{"2": {{"max_queue_size": 32}}}}',
            details={"field": _FIELD},
        )
    for level, rules in policy.items():
        field = f"{_FIELD}.{level}"
        number = _level(level)
        if number is None or levels and number > levels:
            within = f"1 to {levels}, the priority_levels declared beside it" if levels else "from 1"
            raise ValidationFailed(f"{field}: a priority level is a whole number {within}, not {level!r}",
                                   details={"field": field})
        if not isinstance(rules, Mapping) or not rules:
            raise ValidationFailed(f"{field} must be an object with max_queue_size and/or timeout_s",
                                   details={"field": field})
        for name, value in rules.items():
            if name == "max_queue_size":
                bad = type(value) is not int or not 1 <= value <= _MAX_QUEUE
                expected = f"a whole number from 1 to {_MAX_QUEUE:,}"
            elif name == "timeout_s":
                bad = type(value) not in (int, float) or not 0 < value <= _MAX_TIMEOUT_S
                expected = f"seconds, more than 0 and at most {_MAX_TIMEOUT_S:,}"
            else:
                raise ValidationFailed(f"{field}: unknown setting {name!r}; expected max_queue_size or timeout_s",
                                       details={"field": f"{field}.{name}"})
            if bad:
                raise ValidationFailed(f"{field}.{name} must be {expected}, not {value!r}",
                                       details={"field": f"{field}.{name}"})


def level_policy(policy: Mapping[str, Mapping[str, Any]], level: int) -> tuple[int | None, float | None]:
    """The queue bound and the deadline of ``level`` (``None`` where its policy sets none)."""
    rules = policy.get(str(level))  # (JSON's keys are strings)
    if rules is None:
        rules = policy.get(level)  # type: ignore[call-overload]
        if rules is None:
            return None, None
    return rules.get("max_queue_size"), rules.get("timeout_s")


def _level(key: Any) -> int | None:
    text = str(key)
    return int(text) if text.isascii() and text.isdigit() and not text.startswith("0") else None
