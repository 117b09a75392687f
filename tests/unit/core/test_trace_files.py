"""Trace files (``core/trace_files.py``): lines are written by a thread of their own; a line that
cannot be written (a traces folder that is a file, a full disk) is dropped, counted and logged once
a minute, never raised to the caller, and writing resumes once the cause is gone; a disk slower
than the traces drops the lines past the backlog instead of blocking; close writes and flushes
what is queued."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from modelyard.core.trace_files import TraceFiles


class _Counted:
    def __init__(self) -> None:
        self.lines: dict[str, int] = {}

    def __call__(self, reason: str, lines: int) -> None:
        self.lines[reason] = self.lines.get(reason, 0) + lines


def _read(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_lines_are_written_in_order_and_flushed_as_asked(tmp_path: Path) -> None:
    files = TraceFiles(tmp_path / "traces")
    for i in range(5):
        files.append("a.jsonl", f"a{i}", 0)  # 0: flushed at each line
        files.append("b.jsonl", f"b{i}", 2)
    assert files.drain()
    assert _read(tmp_path / "traces" / "a.jsonl") == [f"a{i}" for i in range(5)]
    assert _read(tmp_path / "traces" / "b.jsonl") == [f"b{i}" for i in range(4)]  # the fifth waits for a sixth
    files.close()
    assert _read(tmp_path / "traces" / "b.jsonl") == [f"b{i}" for i in range(5)]  # close flushes it


def test_a_folder_that_cannot_be_made_drops_lines_counted_and_logged_once_then_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "traces"
    folder.write_text("a file where the folder should be")
    counted = _Counted()
    files = TraceFiles(folder, dropped=counted)
    with caplog.at_level(logging.WARNING, logger="modelyard.core.trace_files"):
        for i in range(3):
            files.append("t.jsonl", f"lost{i}", 0)  # never raises
        assert files.drain()
    assert counted.lines == {"write": 3}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "cannot write" in warnings[0] and "trace_level OFF" in warnings[0], warnings
    folder.unlink()  # the cause is gone: the next line makes the folder and is written
    files.append("t.jsonl", "kept", 0)
    assert files.drain()
    assert _read(folder / "t.jsonl") == ["kept"] and counted.lines == {"write": 3}
    files.close()


def test_a_full_disk_drops_what_the_buffer_held_and_the_file_is_opened_again(tmp_path: Path) -> None:
    folder = tmp_path / "traces"
    folder.mkdir()
    (folder / "t.jsonl").symlink_to("/dev/full")  # every write that reaches it: ENOSPC
    counted = _Counted()
    files = TraceFiles(folder, dropped=counted)
    files.append("t.jsonl", "one", 3)
    files.append("t.jsonl", "two", 3)  # buffered: nothing reached the disk yet
    assert files.drain() and counted.lines == {}
    files.append("t.jsonl", "three", 3)  # the flush fails: the three buffered lines are lost
    assert files.drain() and counted.lines == {"write": 3}
    (folder / "t.jsonl").unlink()
    files.append("t.jsonl", "four", 0)
    assert files.drain()
    assert _read(folder / "t.jsonl") == ["four"]
    files.close()


def test_a_disk_slower_than_the_traces_drops_the_lines_past_the_backlog_without_blocking(tmp_path: Path) -> None:
    writing, disk = threading.Event(), threading.Event()

    class SlowDisk(TraceFiles):
        def _write(self, name: str, line: str, flush_every: int) -> None:
            writing.set()
            disk.wait(10)
            super()._write(name, line, flush_every)

    counted = _Counted()
    files = SlowDisk(tmp_path, dropped=counted, backlog=4)
    files.append("t.jsonl", "l0", 0)
    assert writing.wait(10)  # the thread holds that line
    for i in range(1, 10):  # the queue takes four: five are dropped at once
        files.append("t.jsonl", f"l{i}", 0)
    assert counted.lines == {"backlog": 5}
    disk.set()
    assert files.drain()
    assert _read(tmp_path / "t.jsonl") == [f"l{i}" for i in range(5)]
    files.close()


def test_close_writes_what_is_queued_and_later_lines_are_ignored(tmp_path: Path) -> None:
    files = TraceFiles(tmp_path)
    for i in range(100):
        files.append("t.jsonl", str(i), 1000)
    files.close()
    assert _read(tmp_path / "t.jsonl") == [str(i) for i in range(100)]
    files.append("t.jsonl", "after", 0)
    files.close()  # twice: nothing happens
    assert len(_read(tmp_path / "t.jsonl")) == 100


def test_nothing_starts_until_a_line_comes(tmp_path: Path) -> None:
    files = TraceFiles(tmp_path / "traces")
    assert files.drain()  # no thread, nothing to wait for
    files.close()
    assert not (tmp_path / "traces").exists()


def test_an_unexpected_error_costs_its_line_not_the_thread(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class Flaky(TraceFiles):
        failed = False

        def _write(self, name: str, line: str, flush_every: int) -> None:
            if not Flaky.failed:
                Flaky.failed = True
                raise RuntimeError("a bug, not the disk")
            super()._write(name, line, flush_every)

    counted = _Counted()
    files = Flaky(tmp_path, dropped=counted)
    with caplog.at_level(logging.ERROR, logger="modelyard.core.trace_files"):
        files.append("t.jsonl", "lost", 0)
        files.append("t.jsonl", "kept", 0)
        assert files.drain()
    assert counted.lines == {"write": 1} and _read(tmp_path / "t.jsonl") == ["kept"]
    assert [str(r.exc_info[1]) for r in caplog.records if r.exc_info] == ["a bug, not the disk"]
    files.close()
