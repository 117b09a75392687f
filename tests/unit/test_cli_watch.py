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
