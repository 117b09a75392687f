"""The CLI's live views (``deploy watch``, ``models stats --watch``): redrawn in place on a
terminal, one frame after another in a log or a pipe, and quiet on Ctrl-C."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from rich.console import Console
from rich.text import Text

from modelyard.cli import _common
from modelyard.cli._common import watch

#: what Rich's live view writes to go back over the frame it showed (up a line, clear it)
_REDRAW = "\x1b[1A\x1b[2K"


def _frames(stop_at: int | None = None) -> tuple[list[int], Callable[[], tuple[Text, bool]]]:
    shown: list[int] = []

    def frame() -> tuple[Text, bool]:
        shown.append(len(shown) + 1)
        return Text(f"frame {len(shown)}\nsecond line"), stop_at is None or len(shown) < stop_at

    return shown, frame


def _console(monkeypatch: pytest.MonkeyPatch, *, terminal: bool) -> io.StringIO:
    written = io.StringIO()
    console = Console(file=written, force_terminal=terminal, width=80, color_system=None)
    monkeypatch.setattr(_common, "out", lambda: console)
    return written


def test_on_a_terminal_each_frame_replaces_the_last(monkeypatch: pytest.MonkeyPatch) -> None:
    written = _console(monkeypatch, terminal=True)
    shown, frame = _frames()
    watch(0.0, 3, frame)
    text = written.getvalue()
    assert shown == [1, 2, 3]
    assert all(f"frame {n}" in text for n in (1, 2, 3))
    assert text.count(_REDRAW) >= 2, repr(text)  # frames 2 and 3 went back over the one before
    assert text.rindex("frame 3") > text.rindex(_REDRAW)


def test_in_a_pipe_frames_follow_one_another_and_a_frame_can_end_the_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    written = _console(monkeypatch, terminal=False)
    shown, frame = _frames(stop_at=2)
    watch(0.0, 10, frame)
    text = written.getvalue()
    assert shown == [1, 2]  # the frame that said stop was the last
    assert "\x1b[" not in text
    assert text == "frame 1\nsecond line\nframe 2\nsecond line\n"


def test_ctrl_c_ends_the_watch_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    written = _console(monkeypatch, terminal=True)
    calls = []

    def frame() -> tuple[Text, bool]:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return Text("frame"), True

    watch(0.0, 0, frame)  # 0: until Ctrl-C
    assert len(calls) == 2 and "frame" in written.getvalue()


def _deployment(requests: int, servers: int) -> object:
    from types import SimpleNamespace

    route = {"model": "m", "version": 1, "weight": 100.0}
    stats = {"servers": servers, "routes": [{**route, "requests": requests, "errors": 0, "latency_ms_avg": 2.0}]}
    return SimpleNamespace(name="web", revision=3, routes=[route], stats=stats, rollout=None, events=[])


def _shown(group: object) -> str:
    written = io.StringIO()
    Console(file=written, width=140, color_system=None).print(group)
    return " ".join(written.getvalue().replace("│", " ").split())


def test_deploy_watch_shows_the_clusters_rates_and_none_when_a_server_joined_or_left() -> None:
    from modelyard.cli.deploy import _frame, _route_stats

    before = _deployment(100, 2)
    steady = _shown(_frame(_deployment(300, 2), _route_stats(before), 2, 2.0))
    assert "counted by 2 servers" in steady and "m:1 100 100.0 0.0 2.00" in steady, steady
    # a third server's counters joined the sum: its totals are no rate of the last two seconds
    joined = _shown(_frame(_deployment(5_300, 3), _route_stats(before), 2, 2.0))
    assert "counted by 3 servers" in joined and "m:1 100 - - -" in joined, joined
    assert "nothing counted yet" in _shown(_frame(_deployment(0, 0), {}, 0, 1.0))
