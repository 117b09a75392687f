"""``modelyard trace``: turn request traces on and off, and read the files the server writes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from modelyard.cli._common import client, handles_errors, print_json, print_table
from modelyard.errors import InvalidInput

__all__ = ["app"]

app = typer.Typer(
    name="trace",
    help=(
        "Trace a sample of requests: where each one's time went (queued, computing, end to end).\n\n"
        "The server writes one JSON line per traced request to a file in `$MODELYARD_HOME/traces` "
        "(Triton's trace extension: docs/serving.md, \"Traces\"). Changing the settings takes an "
        "administrator's key."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ModelOption = Annotated[str | None, typer.Option("--model", "-m", help="One model's settings (over the server's).")]


@app.command("show")
@handles_errors
def show(model: ModelOption = None, json_out: JsonFlag = False) -> None:
    """Show the trace settings in force: the server's, or a model's.

        modelyard trace show

        modelyard trace show -m digits
    """
    with client() as sdk:
        _show(sdk.traces.settings(model), f"trace settings of {model or 'the server'}", json_out)


@app.command("set")
@handles_errors
def set_(
    model: ModelOption = None,
    on: Annotated[bool | None, typer.Option("--on/--off", help="Trace (TIMESTAMPS) or not (OFF).")] = None,
    rate: Annotated[int | None, typer.Option(min=1, help="Trace every this many-th request.")] = None,
    count: Annotated[int | None, typer.Option(min=-1, help="Traces to write, then stop (-1: no limit).")] = None,
    file: Annotated[str | None, typer.Option(help="File name in the server's traces folder.")] = None,
    log_frequency: Annotated[int | None, typer.Option(min=0, help="Flush the file every this many traces.")] = None,
    reset: Annotated[list[str] | None, typer.Option(
        help="With --model: give this setting (e.g. trace_rate) the server's value again; repeat for more.",
    )] = None,
    json_out: JsonFlag = False,
) -> None:
    """Change trace settings (administrators). What is not given stays as it is.

        modelyard trace set --on --rate 100 --count 1000

        modelyard trace set -m digits --on --rate 1 --file digits.jsonl

        modelyard trace set -m digits --reset trace_rate --reset trace_file

        modelyard trace set --off
    """
    changes: dict[str, Any] = {}
    if on is not None:
        changes["trace_level"] = "TIMESTAMPS" if on else "OFF"
    for name, value in (("trace_rate", rate), ("trace_count", count), ("trace_file", file),
                        ("log_frequency", log_frequency)):
        if value is not None:
            changes[name] = value
    if reset:
        if model is None:
            raise typer.BadParameter("--reset takes a model's setting back to the server's: give --model")
        changes.update(dict.fromkeys(reset))
    if not changes:
        raise typer.BadParameter("nothing to change: give --on/--off, --rate, --count, --file, --log-frequency or --reset")
    with client() as sdk:
        _show(sdk.traces.update(model, **changes), f"trace settings of {model or 'the server'} now", json_out)


def _show(settings: dict[str, Any], title: str, json_out: bool) -> None:
    if json_out:
        print_json(settings)
        return
    rows = [[name, " ".join(value) if isinstance(value, list) else value] for name, value in settings.items()]
    print_table(["setting", "value"], rows, title=title)


@app.command("summary")
@handles_errors
def summary(
    path: Annotated[Path, typer.Argument(help="A trace file the server wrote (JSON lines).")],
    json_out: JsonFlag = False,
) -> None:
    """Sum up a trace file: per model version, how many traces, how they ended, and the time of
    a request end to end (mean, p50, p99) and queued and computing (means), in ms.

        modelyard trace summary modelyard-data/traces/trace.jsonl
    """
    from modelyard.client import summarize

    if not path.is_file():
        raise InvalidInput(f"no trace file at {path}; the server writes them to $MODELYARD_HOME/traces")
    with path.open(encoding="utf-8") as lines:
        summaries = summarize(lines)
    if json_out:
        print_json({"items": [s.as_dict() for s in summaries]})
        return
    rows = [[s.model, s.version, s.traces, s.failed, s.cache_hits, f"{s.mean_ms:.2f}", f"{s.p50_ms:.2f}",
             f"{s.p99_ms:.2f}", f"{s.mean_queue_ms:.2f}", f"{s.mean_compute_ms:.2f}"] for s in summaries]
    print_table(["model", "v", "traces", "failed", "cached", "mean", "p50", "p99", "queue", "compute"], rows,
                title=f"{path.name}: times in ms", whole=("model",), empty="the file holds no traces")
