"""The CLI's tables on a narrow terminal: ids a next command needs stay whole, the rest gives way."""

from __future__ import annotations

import pytest

from modelyard.cli._common import print_table

JOB_ID = "0f9c2a7e6b5d4c3b2a19f8e7d6c5b4a3"


def test_whole_columns_are_never_cut(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    rows = [[JOB_ID, "train", "succeeded", "a-model-with-a-rather-long-name", "10/10", "2026-12-06 16:00"]]
    print_table(["id", "type", "state", "model", "progress", "created"], rows, whole=("id",))
    shown = capsys.readouterr().out
    assert JOB_ID in shown
    assert "…" in shown  # something else was cut to make room
    assert max(len(line) for line in shown.splitlines()) <= 60

    print_table(["id", "type", "state", "model", "progress", "created"], rows)
    assert JOB_ID not in capsys.readouterr().out  # without it, the id is cut like any cell


def test_a_whole_cell_of_several_lines_is_as_wide_as_its_widest_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tenant's quotas, one a line: each line whole, and the table no wider than they need."""
    monkeypatch.setenv("COLUMNS", "80")
    quotas = "requests_per_second=2.5\nrequests_per_day=100000\ntokens_per_day=2000000"
    print_table(["name", "disabled", "quotas", "id"], [["acme", False, quotas, JOB_ID]], whole=("name", "quotas"))
    lines = capsys.readouterr().out.splitlines()
    for quota in quotas.splitlines():
        assert any(quota in line for line in lines), lines
    assert any("acme" in line and "False" in line for line in lines), lines  # nothing squeezed out
    assert max(len(line) for line in lines) <= 80


def test_empty_tables_say_what_to_do(capsys: pytest.CaptureFixture[str]) -> None:
    print_table(["id"], [], empty="No jobs yet.", whole=("id",))
    assert capsys.readouterr().out.strip() == "No jobs yet."


def test_a_versions_labels_show_the_first_five_and_how_many() -> None:
    from modelyard.cli.models import _labels_text

    assert _labels_text("y", ["red", "green"]) == "y: red, green"
    assert _labels_text("p", [str(i) for i in range(1000)]) == "p: 0, 1, 2, 3, 4, ... (1,000 labels)"
