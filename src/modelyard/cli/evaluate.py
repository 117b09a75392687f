"""Top-level command ``modelyard evaluate``: score a model version on a dataset (an ``evaluate``
job). :func:`register` adds it to the main app."""

from __future__ import annotations

from typing import Annotated

import typer

from modelyard.cli._common import client, err, exit_unless_succeeded, handles_errors, out, print_json, print_table

__all__ = ["register", "evaluate"]


@handles_errors
def evaluate(
    model: Annotated[str, typer.Argument(help="Model name.")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help='The data to score it on (a name or "builtin:digits").')],
    version: Annotated[str | None, typer.Option("--version", "-v", help="A version (number, latest, production; "
                                                "default: the one the model serves).")] = None,
    target: Annotated[str | None, typer.Option(help="The column of true values (default target, else label).")] = None,
    max_rows: Annotated[int | None, typer.Option("--max-rows", min=1, help="Score only the first N rows.")] = None,
    follow: Annotated[bool, typer.Option("--follow/--no-follow", "-f", help="Wait for the result (default) or "
                                         "print the queued job's id.")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print the job as JSON.")] = False,
) -> None:
    """Score a model version on a dataset: accuracy for a classifier, mean squared error for a
    regressor. Runs as a job on the server's workers; nothing is changed.

    Examples:

        modelyard evaluate digits --dataset builtin:digits

        modelyard evaluate churn -v 3 -d customers-2026-11 --target churned --json

        modelyard evaluate digits -d builtin:digits --max-rows 500 --no-follow
    """
    with client() as sdk:
        job = sdk.jobs.evaluate(model, dataset=dataset, target=target, max_rows=max_rows,
                                version=int(version) if version and version.isdigit() else version)
        if not follow:
            if json_out:
                print_json(job.to_dict())
            else:
                out().print(f"Job {job.id} queued; `modelyard evaluate ... --follow` or GET /api/v1/jobs/{job.id} "
                            "has its result.", highlight=False)
            return
        with err().status(f"evaluating {model}..."):
            job = sdk.jobs.wait(job.id, poll_s=0.3)
    if json_out:
        print_json(job.to_dict())
    exit_unless_succeeded(job)
    if json_out:
        return
    r = job.result or {}
    print_table(["MODEL", "VERSION", "DATASET", "ROWS", "METRIC", "VALUE"],
                [(r["model_name"], r["version"], r["dataset"]["reference"], f"{r['n_rows']:,}", r["metric"],
                  f"{r['value']:.4f}")])


def register(app: typer.Typer) -> None:
    """Add ``evaluate`` to the main app."""
    app.command("evaluate")(evaluate)
