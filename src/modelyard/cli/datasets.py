"""``modelyard datasets``: push, list, show and delete datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from modelyard.cli._common import client, err, escape, handles_errors, human_bytes, out, print_json, print_table

__all__ = ["app"]

app = typer.Typer(
    name="datasets",
    help=(
        "Push, list, inspect and delete datasets (CSV, Parquet, NPZ, JSONL).\n\n"
        "Datasets are validated and described on arrival and never change. Built-in ones need no "
        "upload: builtin:digits, builtin:iris, builtin:wine, builtin:breast_cancer, builtin:diabetes."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@app.command("push")
@handles_errors
def push(
    file: Annotated[Path, typer.Argument(help="The file (.csv, .parquet, .npz, .jsonl).", exists=True,
                                         dir_okay=False, readable=True)],
    name: Annotated[str | None, typer.Option("--name", "-n", help="Dataset name (default: file name stem).")] = None,
    format: Annotated[str | None, typer.Option(help="csv | parquet | npz | jsonl (default: extension).")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Upload a dataset with a progress bar; prints its description.

    Examples:

        modelyard datasets push iris.csv

        modelyard datasets push reviews.jsonl --name reviews
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    total = file.stat().st_size
    with Progress(
        TextColumn("Uploading [bold]{task.description}[/bold]"), BarColumn(), DownloadColumn(binary_units=True),
        TransferSpeedColumn(), TextColumn("{task.percentage:>3.0f}%"), console=err(),
    ) as bar:
        task = bar.add_task(file.name, total=total)
        with client() as sdk:
            ds = sdk.datasets.push(file, name=name, format=format,
                                   progress=lambda sent, _total: bar.update(task, completed=sent))
    if json_out:
        print_json(ds.to_dict())
        return
    out().print(
        f"Dataset [bold]{escape(ds.name)}[/bold]: {ds.n_rows} rows, {len(ds.columns)} columns, "
        f"{human_bytes(ds.size_bytes)}, sha256 {ds.sha256[:12]}.", highlight=False,
    )
    _columns(ds.columns)


def _columns(columns: list[dict[str, Any]]) -> None:
    print_table(
        ["column", "dtype", "shape", "missing"],
        ([c["name"], c["dtype"], "x".join(str(d) for d in c.get("shape") or []) or "-", c["missing"]]
         for c in columns),
    )


@app.command("list")
@handles_errors
def list_(json_out: JsonFlag = False) -> None:
    """List uploaded datasets (built-in ones: builtin:digits, iris, wine, breast_cancer, diabetes)."""
    with client() as sdk:
        items = list(sdk.datasets.list())
    if json_out:
        print_json([d.to_dict() for d in items])
        return
    print_table(
        ["name", "format", "rows", "columns", "size", "sha256", "created"],
        ([d.name, d.format, d.n_rows, len(d.columns), human_bytes(d.size_bytes), d.sha256[:12],
          d.created_at.strftime("%Y-%m-%d %H:%M") if d.created_at else "-"] for d in items),
        empty="No datasets yet. Push one with `modelyard datasets push FILE`, or train on builtin:digits.",
    )


@app.command("show")
@handles_errors
def show(
    name: Annotated[str, typer.Argument(help="Dataset name, id, or builtin:<name>.")],
    json_out: JsonFlag = False,
) -> None:
    """Show a dataset's columns, dtypes, missing values and first rows."""
    with client() as sdk:
        ds = sdk.datasets.get(name)
    if json_out:
        print_json(ds.to_dict())
        return
    out().print(f"[bold]{escape(ds.reference)}[/bold]  {ds.format}, {ds.n_rows} rows, sha256 {ds.sha256[:12]}",
                highlight=False)
    _columns(ds.columns)
    if ds.preview:
        shown = [c["name"] for c in ds.columns][:8]
        print_table(shown, ([row.get(c) for c in shown] for row in ds.preview), title="preview")


@app.command("delete")
@handles_errors
def delete(
    name: Annotated[str, typer.Argument(help="Dataset name or id.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete an uploaded dataset."""
    if not yes:
        typer.confirm(f"Delete dataset {name}?", abort=True)
    with client() as sdk:
        sdk.datasets.delete(name)
    out().print(f"Deleted dataset {escape(name)}.", highlight=False)
