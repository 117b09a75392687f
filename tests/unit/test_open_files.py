"""The server raises its soft open-file limit to its hard one (``server.raise_open_file_limit``):
every connection takes a descriptor, and a soft limit of 1,024 would refuse a flood's connections."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

_CHILD = """
import json, logging, resource
logging.basicConfig(level=logging.INFO)
from modelyard.server import raise_open_file_limit
print(json.dumps([raise_open_file_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)]))
"""


def _run_with_limit(soft: int, hard: int) -> tuple[list[int] | None, list[int], str]:
    """Run the raise in a child process started with the limit ``(soft, hard)``."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    proc = subprocess.run(
        [sys.executable, "-c", _CHILD], preexec_fn=limit, capture_output=True, text=True, timeout=120, check=True
    )
    returned, after = json.loads(proc.stdout.strip().splitlines()[-1])
    return returned, after, proc.stderr


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard == resource.RLIM_INFINITY or hard >= 4096, "this machine's hard limit is too low to test the raise"
    ceiling = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    returned, after, log = _run_with_limit(256, ceiling)
    assert returned == [256, ceiling]
    assert after == [ceiling, ceiling]
    assert f"open-file limit raised from 256 to {ceiling}" in log
    assert "may open only" not in log


def test_a_low_hard_limit_is_kept_and_named_in_a_warning() -> None:
    returned, after, log = _run_with_limit(512, 1024)
    assert returned == [512, 1024] and after == [1024, 1024], "raised as far as the hard limit allows"
    assert "may open only 1024 files" in log and "ulimit -Hn" in log


def test_a_soft_limit_already_at_the_hard_one_is_left_alone() -> None:
    returned, after, log = _run_with_limit(4096, 4096)
    assert returned == [4096, 4096] and after == [4096, 4096]
    assert "raised" not in log and "may open only" not in log
