"""``modelyard train`` (submit a training job, follow it live) and ``modelyard jobs``
(list, show, cancel, logs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from modelyard.cli._common import (
    client, err, escape, exit_unless_succeeded, handles_errors, out, print_json, print_table,
)

if TYPE_CHECKING:
    from modelyard.client._jobs import Job

__all__ = ["register", "jobs_app", "plot_curves", "train"]

jobs_app = typer.Typer(
    name="jobs",
    help="List, inspect, cancel and read the logs of jobs (training, optimization).",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
_PRIMARY = ("accuracy", "r2", "f1_macro", "mae", "rmse")


def _parse_set(values: list[str]) -> dict[str, Any]:
    out_: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        try:
            out_[key] = json.loads(raw)
        except ValueError:
            out_[key] = raw
    return out_


def train(
    model: Annotated[str, typer.Option("--model", "-m", help="Model name the trained version joins.")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset name, or builtin:digits (iris, wine, "
                                                                 "breast_cancer, diabetes).")],
    recipe: Annotated[str, typer.Option(help="linear | mlp | cnn | text-classifier")] = "mlp",
    target: Annotated[str | None, typer.Option(help="Target column (default: target, else label).")] = None,
    features: Annotated[str | None, typer.Option(help="Comma-separated feature columns (default: all others).")] = None,
    task: Annotated[str | None, typer.Option(help="classification | regression (default: inferred).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (default 20).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size (default 64).")] = None,
    learning_rate: Annotated[float | None, typer.Option("--learning-rate", "--lr", help="Learning rate.")] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd | adam | adamw")] = None,
    hidden: Annotated[str | None, typer.Option(help="Hidden layer sizes, e.g. 128,64 (mlp).")] = None,
    validation_split: Annotated[float | None, typer.Option(help="Fraction held out for validation.")] = None,
    patience: Annotated[int | None, typer.Option(help="Early stopping patience (epochs).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    workers: Annotated[int | None, typer.Option(help="Data-parallel training processes.")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda")] = None,
    stage: Annotated[str | None, typer.Option(help="Stage of the new version (default: production if none).")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Any other hyper-parameter, KEY=VALUE (JSON value).")] = [],  # noqa: B006
    follow: Annotated[bool, typer.Option("--follow/--no-follow", "-f", help="Show live progress until the end.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Where to write the curves PNG (default: MODEL-JOB.png).")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Train a model on a dataset as a job; with --follow, a live progress bar and, at the end,
    the loss and metric curves as a PNG next to a short summary.

    Examples:

        modelyard train --model digits --dataset builtin:digits --recipe mlp --epochs 20 --follow

        modelyard train -m prices -d houses --target price --lr 0.001 --set weight_decay=0.0001
    """
    body: dict[str, Any] = {"model_name": model, "dataset": dataset, "recipe": recipe, **_parse_set(set_)}
    optional = {
        "target": target, "task": task, "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
        "optimizer": optimizer, "validation_split": validation_split, "early_stopping_patience": patience,
        "seed": seed, "workers": workers, "device": device, "stage": stage,
        "features": [f.strip() for f in features.split(",") if f.strip()] if features else None,
        "hidden_sizes": [int(h) for h in hidden.split(",") if h.strip()] if hidden else None,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    with client() as sdk:
        job = sdk.jobs.submit("train", **body)
        if not follow:
            if json_out:
                print_json(job.to_dict())
            else:
                out().print(f"Submitted job [bold]{job.id}[/bold] ({job.state}). Follow it with "
                            f"`modelyard jobs show {job.id}` or `modelyard jobs logs {job.id}`.", highlight=False)
            return
        err().print(f"Job [bold]{job.id}[/bold] submitted; Ctrl-C stops following (the job keeps running).",
                    highlight=False)
        _follow(sdk, job)
        final = sdk.jobs.get(job.id)
    _summary(final, plot, json_out)


def _follow(sdk: Any, job: Job) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    epochs = int(job.params.get("spec", {}).get("epochs") or 1)
    with Progress(
        TextColumn("[bold]epoch[/bold]"), MofNCompleteColumn(), BarColumn(),
        TextColumn("{task.fields[status]}"), TimeRemainingColumn(), console=err(),
    ) as bar:
        task = bar.add_task("train", total=epochs, status="queued")
        for event in sdk.jobs.events(job.id):
            if event.kind == "progress":
                d = event.data
                metric = next(((k, v) for k, v in (d.get("metrics") or {}).items() if k in _PRIMARY), None)
                status = f"loss {d['train_loss']:.4f}"
                if d.get("val_loss") is not None:
                    status += f"  val {d['val_loss']:.4f}"
                if metric:
                    status += f"  {metric[0]} {metric[1]:.4f}"
                bar.update(task, completed=d["epoch"], total=d.get("epochs", epochs), status=status)
            elif event.kind == "state":
                bar.update(task, status=event.data.get("state", ""))
            elif event.kind == "end":
                break


def plot_curves(curves: list[dict[str, Any]], path: Path, *, title: str = "") -> Path:
    """Write the loss curves (left) and the validation metric (right) of a run as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [c["epoch"] for c in curves]
    metric = next((k for k in _PRIMARY if any(k in c for c in curves)), None)
    fig, axes = plt.subplots(1, 2 if metric else 1, figsize=(10 if metric else 5, 4), squeeze=False)
    ax = axes[0][0]
    ax.plot(epochs, [c.get("train_loss") for c in curves], label="train loss")
    if any(c.get("val_loss") is not None for c in curves):
        ax.plot(epochs, [c.get("val_loss") for c in curves], label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    if metric:
        mx = axes[0][1]
        mx.plot(epochs, [c.get(metric) for c in curves], color="tab:green")
        mx.set_xlabel("epoch")
        mx.set_ylabel(f"validation {metric}")
        mx.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _summary(job: Job, plot: Path | None, json_out: bool) -> None:
    if json_out:
        print_json(job.to_dict())
    exit_unless_succeeded(job)
    result = job.result or {}
    curves = result.get("curves") or []
    png = None
    if curves:
        png = plot_curves(curves, plot or Path(f"{result.get('model_name', 'model')}-{job.id[:8]}.png"),
                          title=f"{result.get('model_name')} v{result.get('version')}")
    if json_out:
        return
    metrics = result.get("metrics") or {}
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, (int, float)) and k != "n_samples")
    last = curves[-1] if curves else {}
    console = out()
    console.print(
        f"Trained [bold]{escape(str(result.get('model_name')))}[/bold] version [bold]{result.get('version')}[/bold] "
        f"({result.get('stage')}) in {result.get('epochs_completed')} epochs"
        + (" (stopped early)" if result.get("stopped_early") else "") + ".", highlight=False)
    if last:
        console.print(f"Final train loss {last.get('train_loss', float('nan')):.4f}"
                      + (f", validation loss {last['val_loss']:.4f}" if last.get("val_loss") is not None else ""),
                      highlight=False)
    console.print(f"Validation metrics: {shown}", highlight=False)
    if png is not None:
        console.print(f"Curves: {png}", highlight=False)


# -- modelyard jobs ------------------------------------------------------------------------------

def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


@jobs_app.command("list")
@handles_errors
def list_jobs(
    state: Annotated[str | None, typer.Option(help="queued | running | succeeded | failed | cancelled")] = None,
    type: Annotated[str | None, typer.Option(help="Job type, e.g. train.")] = None,
    limit: Annotated[int, typer.Option(help="Show at most this many.")] = 50,
    json_out: JsonFlag = False,
) -> None:
    """List jobs, newest first."""
    with client() as sdk:
        items = []
        for job in sdk.jobs.list(state=state, type=type):
            items.append(job)
            if len(items) >= limit:
                break
    if json_out:
        print_json([j.to_dict() for j in items])
        return
    print_table(
        ["id", "type", "state", "model", "progress", "created"],
        ([j.id, j.type, j.state, j.params.get("model_name"),
          f"{j.progress['epoch']}/{j.progress['epochs']}" if j.progress and "epoch" in j.progress else "-",
          _when(j.created_at)] for j in items),
        empty="No jobs. Start one with `modelyard train --model NAME --dataset builtin:digits`.",
        whole=("id",),
    )


@jobs_app.command("show")
@handles_errors
def show_job(job_id: Annotated[str, typer.Argument(help="Job id.")], json_out: JsonFlag = False) -> None:
    """Show a job: state, progress, result or error."""
    with client() as sdk:
        job = sdk.jobs.get(job_id)
    if json_out:
        print_json(job.to_dict())
        return
    rows: list[tuple[str, Any]] = [
        ("id", job.id), ("type", job.type), ("state", job.state), ("attempts", job.attempts),
        ("model", job.params.get("model_name")), ("dataset", job.params.get("dataset")),
        ("created", _when(job.created_at)), ("started", _when(job.started_at)), ("finished", _when(job.finished_at)),
    ]
    if job.progress:
        p = job.progress
        rows.append(("progress", f"epoch {p.get('epoch')}/{p.get('epochs')}, train loss {p.get('train_loss'):.4f}"))
    if job.result:
        rows.append(("version", job.result.get("version")))
        rows.append(("metrics", json.dumps({k: v for k, v in (job.result.get("metrics") or {}).items()
                                            if isinstance(v, (int, float))})))
    if job.error:
        rows.append(("error", job.error.get("message")))
    print_table(["field", "value"], rows, wrap_last=True)


@jobs_app.command("cancel")
@handles_errors
def cancel_job(job_id: Annotated[str, typer.Argument(help="Job id.")]) -> None:
    """Cancel a job (a running one stops within an epoch and registers nothing)."""
    with client() as sdk:
        job = sdk.jobs.cancel(job_id)
    out().print(f"Job {job.id}: {'cancelled' if job.state == 'cancelled' else 'cancellation requested'}.",
                highlight=False)


@jobs_app.command("logs")
@handles_errors
def job_logs(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
) -> None:
    """Print a job's log lines."""
    console = out()
    with client() as sdk:
        if not follow:
            for line in sdk.jobs.logs(job_id):
                console.print(f"{line['at']} {line['level']:5} {escape(line['message'])}", highlight=False)
            return
        for event in sdk.jobs.events(job_id):
            if event.kind == "log":
                console.print(f"{event.data.get('level', 'info'):5} {escape(event.data.get('message', ''))}",
                              highlight=False)
            elif event.kind == "end":
                console.print(f"job {event.data.get('state')}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``modelyard train`` and ``modelyard jobs ...`` to the CLI."""
    app.command("train")(handles_errors(train))
    app.add_typer(jobs_app)
