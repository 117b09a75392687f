"""``modelyard models``: push, list, show, version history, update, promote, load, statistics and
delete models."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from modelyard.cli._common import (
    client, escape, handles_errors, human_bytes, json_object, make_table, out, print_json, print_table, watch,
)

if TYPE_CHECKING:
    from rich.table import Table

    from modelyard.client import ModelVersion, VersionStatistics

__all__ = ["app"]

app = typer.Typer(
    name="models",
    help=(
        "Push, list, inspect, promote and delete models and their versions.\n\n"
        "A model is a name in your tenant; every push adds an immutable, numbered version. The "
        "latest `production` version is the one served as `/v2/models/NAME`."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
_STAGE_HELP = "none | staging | production | archived"
LabelsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--labels",
        metavar="OUTPUT=FILE",
        help="Name an output's classes from a label file (one label per line, class 0 first), as "
        "Triton's label_filename does; answers asked for as classes then carry them. Repeat for "
        "more outputs.",
    ),
]


def read_labels(values: Iterable[str]) -> dict[str, list[str]]:
    """``--labels OUTPUT=FILE`` options as the ``labels`` tag: each file's lines, class 0 first
    (blank lines at its end ignored); a usage error (exit 2) says what is wrong."""
    labels: dict[str, list[str]] = {}
    for value in values:
        output, sep, name = value.partition("=")
        if not sep or not output or not name:
            raise typer.BadParameter(f"--labels takes OUTPUT=FILE, e.g. probabilities=classes.txt, not {value!r}")
        try:
            lines = Path(name).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise typer.BadParameter(f"--labels {value}: cannot read {name}: {exc}") from None
        while lines and not lines[-1].strip():
            lines.pop()
        if not lines:
            raise typer.BadParameter(f"--labels {value}: {name} holds no label (one per line, class 0 first)")
        labels[output] = lines
    return labels


@app.command("push")
@handles_errors
def push(
    file: Annotated[
        Path, typer.Argument(help="The artifact to upload (e.g. model.onnx).", exists=True, dir_okay=False, readable=True)
    ],
    name: Annotated[str, typer.Option("--name", "-n", help="Model name; created if new.")],
    stage: Annotated[str, typer.Option(help=_STAGE_HELP)] = "none",
    description: Annotated[str, typer.Option(help="What this version is.")] = "",
    format: Annotated[str, typer.Option("--format", help="Artifact format.")] = "onnx",
    labels: LabelsOption = None,
    json_out: JsonFlag = False,
) -> None:
    """Upload an artifact as the next version of a model, with a progress bar.

    Examples:

        modelyard models push digits.onnx --name digits

        modelyard models push digits.onnx --name digits --stage production --description "MLP, 97%"

        modelyard models push iris.onnx --name iris --labels probabilities=species.txt
    """
    tags = {"labels": read_labels(labels)} if labels else None
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from modelyard.cli._common import err

    total = file.stat().st_size
    with Progress(
        TextColumn("Uploading [bold]{task.description}[/bold]"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        console=err(),
    ) as bar:
        task = bar.add_task(file.name, total=total)
        with client() as sdk:
            version = sdk.models.push(
                file,
                name=name,
                format=format,
                description=description,
                stage=stage,
                tags=tags,
                progress=lambda sent, _total: bar.update(task, completed=sent),
            )
    if json_out:
        print_json(version.to_dict())
        return
    out().print(
        f"Pushed [bold]{escape(version.model)}[/bold] version [bold]{version.version}[/bold] "
        f"({human_bytes(version.size_bytes)}, sha256 {version.sha256[:12]}, stage {version.stage}).",
        highlight=False,
    )


@app.command("list")
@handles_errors
def list_models(json_out: JsonFlag = False) -> None:
    """List the models of your tenant.

    Examples:

        modelyard models list

        modelyard models list --json | jq '.[].name'
    """
    with client() as sdk:
        models = list(sdk.models.list())
    if json_out:
        print_json([m.to_dict() for m in models])
        return
    print_table(
        ["NAME", "LATEST", "PRODUCTION", "UPDATED", "DESCRIPTION"],
        (
            [m.name, m.latest_version, m.production_version, _when(m.updated_at), m.description]
            for m in models
        ),
        wrap_last=True,
        whole=("NAME",),
        empty="No models yet. Push one with `modelyard models push FILE --name NAME`.",
    )


@app.command("show")
@handles_errors
def show(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int | None, typer.Option("--version", "-v", help="A version (default: the served one, else the latest).")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Show a model version: stage, artifact, signature (inputs and outputs), metrics.

    Examples:

        modelyard models show digits

        modelyard models show digits --version 2 --json
    """
    with client() as sdk:
        model = sdk.models.get(name)
        number = version or model.production_version or model.latest_version
        v = sdk.models.get_version(name, number) if number is not None else None
    if json_out:
        print_json({"model": model.to_dict(), "version": v.to_dict() if v else None})
        return
    console = out()
    console.print(f"[bold]{escape(model.name)}[/bold]  {escape(model.description)}".rstrip(), highlight=False)
    console.print(
        f"latest version: {model.latest_version or '-'}   production version: "
        f"{model.production_version or '-'}",
        highlight=False,
    )
    if v is None:
        console.print("No versions yet.")
        return
    _print_version(v)


def _labels_text(output: str, names: list[str]) -> str:
    """``probabilities: red, green, blue`` (the first five of many, and how many)."""
    shown = ", ".join(names[:5])
    return f"{output}: {shown}" if len(names) <= 5 else f"{output}: {shown}, ... ({len(names):,} labels)"


def _print_version(v: ModelVersion) -> None:
    fields: list[tuple[str, Any]] = [
        ("version", v.version),
        ("stage", v.stage),
        ("format", v.format),
        ("size", human_bytes(v.size_bytes)),
        ("sha256", v.sha256),
        ("created", _when(v.created_at)),
        ("description", v.description or "-"),
    ]
    if v.tags:
        fields.append(("tags", ", ".join(f"{k}={val}" for k, val in v.tags.items() if k != "labels") or "-"))
    if isinstance(v.tags.get("labels"), dict):
        fields.append(("labels", "; ".join(_labels_text(output, names) for output, names in v.tags["labels"].items())))
    if v.metrics:
        fields.append(("metrics", ", ".join(f"{k}={val}" for k, val in v.metrics.items())))
    if v.lineage:
        fields.append(("lineage", ", ".join(f"{k}={val}" for k, val in v.lineage.items())))
    print_table(["FIELD", "VALUE"], fields, wrap_last=True)
    print_table(
        ["", "NAME", "DATATYPE", "SHAPE"],
        [("input", t.name, t.datatype, list(t.shape)) for t in v.inputs]
        + [("output", t.name, t.datatype, list(t.shape)) for t in v.outputs],
        empty="(no signature recorded)",
    )


@app.command("versions")
@handles_errors
def versions(
    name: Annotated[str, typer.Argument(help="Model name.")],
    json_out: JsonFlag = False,
) -> None:
    """List the versions of a model, newest first (`models show NAME -v N` for one in full).

    Examples:

        modelyard models versions digits
    """
    with client() as sdk:
        items = list(sdk.models.versions(name))
    if json_out:
        print_json([v.to_dict() for v in items])
        return
    print_table(
        ["VERSION", "STAGE", "FORMAT", "SIZE", "SHA256", "CREATED"],
        ([v.version, v.stage, v.format, human_bytes(v.size_bytes), v.sha256[:12], _when(v.created_at)] for v in items),
        empty=f"Model {name!r} has no versions.",
    )


@app.command("promote")
@handles_errors
def promote(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version number.")],
    stage: Annotated[str, typer.Option(help=_STAGE_HELP)] = "production",
    json_out: JsonFlag = False,
) -> None:
    """Move a version to a stage (default `production`: it becomes the served version).

    Examples:

        modelyard models promote digits 2

        modelyard models promote digits 1 --stage archived
    """
    with client() as sdk:
        v = sdk.models.promote(name, version, stage=stage)
    if json_out:
        print_json(v.to_dict())
        return
    out().print(f"{v.model} version {v.version} is now in stage {v.stage}.", highlight=False)


@app.command("update")
@handles_errors
def update(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int | None, typer.Option("--version", "-v", help="Change this version, not the model.")] = None,
    description: Annotated[str | None, typer.Option(help="New description.")] = None,
    serving: Annotated[
        str | None, typer.Option(help='Serving settings as JSON, e.g. {"max_batch_size": 16} (replace the old ones).')
    ] = None,
    no_serving: Annotated[bool, typer.Option("--no-serving", help="Drop the serving settings.")] = False,
    labels: LabelsOption = None,
    no_labels: Annotated[bool, typer.Option("--no-labels", help="Drop the labels of output classes.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Change a model's or a version's description, serving settings (batching, queue,
    instances, isolation, timeout, response cache, unloading when idle: see docs/serving.md) or the labels of its
    output classes (docs/inference.md). A model's settings and labels apply to all its
    versions; a version's own settings and a deployment's go over them, as a version's labels
    do. They take effect at the next request, without a reload.

    Examples:

        modelyard models update digits --serving '{"max_batch_size": 32, "timeout_s": 5}'

        modelyard models update digits -v 2 --serving '{"isolation": "process"}'

        modelyard models update digits --serving '{"response_cache": true}'

        modelyard models update rare --serving '{"idle_unload_s": 600}'   (unloaded after 10 idle minutes)

        modelyard models update digits -v 2 --no-serving --description "back to the model's"

        modelyard models update iris -v 3 --labels probabilities=species.txt
    """
    if serving is not None and no_serving:
        raise typer.BadParameter("give --serving or --no-serving, not both")
    if labels and no_labels:
        raise typer.BadParameter("give --labels or --no-labels, not both")
    if description is None and serving is None and not no_serving and not labels and not no_labels:
        raise typer.BadParameter(
            "nothing to change: give --description, --serving, --no-serving, --labels or --no-labels"
        )
    settings = json_object(serving, "--serving") if serving is not None else None
    new_labels = read_labels(labels) if labels else None
    with client() as sdk:
        tags = None
        if settings is not None or no_serving or new_labels or no_labels:  # both are tags
            current = sdk.models.get(name) if version is None else sdk.models.get_version(name, version)
            tags = dict(current.tags)
            if settings is not None or no_serving:
                tags.pop("serving", None)
                if settings:
                    tags["serving"] = settings
            if new_labels or no_labels:
                tags.pop("labels", None)
                if new_labels:
                    tags["labels"] = new_labels
        if version is None:
            changed: Any = sdk.models.update(name, description=description, tags=tags)
        else:
            changed = sdk.models.update_version(name, version, description=description, tags=tags)
    if json_out:
        print_json(changed.to_dict())
        return
    what = name if version is None else f"{name} version {version}"
    settings_now = changed.tags.get("serving")
    labels_now = changed.tags.get("labels") or {}
    named = ", ".join(f"{output} ({len(names):,})" for output, names in labels_now.items()) or "none of its own"
    out().print(f"Updated {what}; serving settings: {json.dumps(settings_now) if settings_now else 'none of its own'}; "
                f"labelled outputs: {named}.", highlight=False)


@app.command("loaded")
@handles_errors
def loaded(json_out: JsonFlag = False) -> None:
    """Show your versions in the server's memory and how full its memory budget is.

    The server loads a version on its first request and unloads the least recently used idle
    ones to stay within the budget; pinned versions stay. A version whose serving settings have
    idle_unload_s is also unloaded after that long without a request ("idle 12 s of 600").
    """
    with client() as sdk:
        report = sdk.memory.loaded()
    if json_out:
        print_json({"budget_bytes": report.budget_bytes, "in_use_bytes": report.in_use_bytes,
                    "items": [asdict(v) for v in report.versions]})
        return
    share = report.in_use_bytes / report.budget_bytes if report.budget_bytes else 0.0
    filled = min(30, round(30 * share))
    title = (f"memory {'█' * filled}{'░' * (30 - filled)} {human_bytes(report.in_use_bytes)} of "
             f"{human_bytes(report.budget_bytes)} ({share:.0%}, all tenants)")
    out().print(title, highlight=False)
    rows = [[v.model, v.version, human_bytes(v.memory_bytes), "yes" if v.pinned else "", v.in_flight, v.queue_depth,
             f"{v.idle_s:.0f} s" + (f" of {v.idle_unload_s:g}" if v.idle_unload_s else "")]
            for v in report.versions]
    print_table(["model", "version", "memory", "pinned", "in flight", "queued", "idle"], rows,
                empty="none of your versions is loaded; each loads on its first request (or: modelyard models load)")


@app.command("stats")
@handles_errors
def stats(
    name: Annotated[str | None, typer.Argument(help="Model or deployment name (default: all you have served).")] = None,
    version: Annotated[int | None, typer.Option("--version", "-v", help="One version of NAME.")] = None,
    watch: Annotated[float | None, typer.Option(
        "--watch", "-w", min=0.1, help="Refresh every this many seconds, showing what happened in each interval.",
    )] = None,
    count: Annotated[int, typer.Option(help="With --watch: stop after this many refreshes (0: until Ctrl-C).", min=0)] = 0,
    json_out: JsonFlag = False,
) -> None:
    """Show what your versions served since the server started: requests answered and failed,
    answers from the response cache, mean latency, time queued and computing, rows per batch
    (with one version: how often each batch size ran). With --watch, what they serve now: requests a second and the means of each
    interval. --json adds memory and the counts per batch size.

    The figures of Triton's statistics extension (`GET /v2/models/NAME/stats`), counted by this
    server. Examples:

        modelyard models stats

        modelyard models stats digits -v 2

        modelyard models stats digits --watch 2
    """
    if version is not None and name is None:
        raise typer.BadParameter("--version needs a model NAME")
    if watch is not None:
        if json_out:
            raise typer.BadParameter("--watch shows a live table; leave out --json")
        _watch_stats(name, version, watch, count)
        return
    with client() as sdk:
        versions = sdk.statistics.get(name, version)
    if json_out:
        print_json({"items": [asdict(v) for v in versions]})
        return
    rows = [[v.model, v.version, v.answered.count, v.failed.count, _cached(v), f"{v.answered.mean_ms:.2f}",
             f"{v.queued.mean_ms:.2f}", f"{v.computed.mean_ms:.2f}", f"{v.mean_batch_size:.1f}"] for v in versions]
    print_table(["model", "v", "answered", "failed", "cached", "latency", "queue", "compute", "rows/batch"], rows,
                title="since the server started; mean times per request in ms", whole=("model",),
                empty="none of your versions has served a request since the server started")
    if len(versions) == 1 and versions[0].by_batch_size:
        _batch_sizes(versions[0].by_batch_size)


def _cached(v: VersionStatistics) -> str:
    """Answers that came from the response cache, for a version that uses it ("-" otherwise)."""
    return str(v.cache_hits.count) if v.cache_hits.count or v.cache_misses.count else "-"


def _watch_stats(name: str | None, version: int | None, every_s: float, count: int) -> None:
    """Every ``every_s`` seconds, what each version did since the last read, as requests a
    second and the interval's means: live on a terminal, a table per interval otherwise."""
    title = f"the last {every_s:g} s; mean times per request in ms (Ctrl-C to stop)"
    with client() as sdk:
        last, last_at = _by_version(sdk.statistics.get(name, version)), time.monotonic()

        def frame() -> tuple[Table, bool]:
            nonlocal last, last_at
            now, at = _by_version(sdk.statistics.get(name, version)), time.monotonic()
            table = make_table(_WATCH_COLUMNS, _interval_rows(now, last, max(at - last_at, 1e-9)),
                               title=title, whole=("model",))
            last, last_at = now, at
            return table, True

        watch(every_s, count, frame)


_WATCH_COLUMNS = ["model", "v", "req/s", "failed/s", "latency", "queue", "compute", "rows/batch"]


def _by_version(versions: Iterable[VersionStatistics]) -> dict[tuple[str, int], VersionStatistics]:
    return {(v.model, v.version): v for v in versions}


def _interval_rows(
    now: dict[tuple[str, int], VersionStatistics], last: dict[tuple[str, int], VersionStatistics], seconds: float,
) -> list[list[Any]]:
    """A row per version of what it did between the two reads, ``seconds`` apart."""
    rows = []
    for key, v in now.items():
        before = last.get(key)
        # figures that went down: the server restarted and counts from zero again
        d = v if before is None or v.answered.count < before.answered.count else v.since(before)
        rows.append([v.model, v.version, f"{d.answered.count / seconds:,.1f}", f"{d.failed.count / seconds:,.1f}",
                     f"{d.answered.mean_ms:.2f}", f"{d.queued.mean_ms:.2f}", f"{d.computed.mean_ms:.2f}",
                     f"{d.mean_batch_size:.1f}"])
    return rows


def _batch_sizes(by_size: dict[int, Any]) -> None:
    """How many batches of each size ran, as bars: one per size, or per power-of-two range of
    sizes when there are many sizes."""
    groups: dict[str, list[float]] = {}  # label -> [batches, compute seconds]
    many = len(by_size) > 12
    for size, duration in sorted(by_size.items()):
        low = 1 << (size.bit_length() - 1) if many else size
        label = f"{low}-{2 * low - 1}" if many and low > 1 else str(low)
        group = groups.setdefault(label, [0, 0.0])
        group[0] += duration.count
        group[1] += duration.seconds
    most = max(count for count, _ in groups.values())
    console = out()
    console.print("batches by size (rows)", highlight=False)
    for label, (count, seconds) in groups.items():
        bar = "█" * max(1, round(30 * count / most))
        console.print(f"{label:>9} {bar} {count:.0f} ({1000 * seconds / count:.2f} ms each)", highlight=False)


@app.command("load")
@handles_errors
def load(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int | None, typer.Option("--version", "-v", help="Version (default: the served one).")] = None,
    pin: Annotated[bool, typer.Option("--pin", help="Keep it loaded whatever the budget (administrators).")] = False,
) -> None:
    """Load a version now, so its first request does not wait for the load; --pin keeps it loaded.

    Examples:

        modelyard models load digits

        modelyard models load digits -v 2 --pin
    """
    with client() as sdk:
        state = sdk.memory.load(name, version, pin=pin)
    out().print(f"{state.model} version {state.version} is loaded{' and pinned' if state.pinned else ''}.",
                highlight=False)


@app.command("unload")
@handles_errors
def unload(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int | None, typer.Option("--version", "-v", help="Version (default: the served one).")] = None,
) -> None:
    """Unload a version now (and unpin it); requests in flight finish, its next request loads it again."""
    with client() as sdk:
        state = sdk.memory.unload(name, version)
    out().print(f"{state.model} version {state.version} is unloaded.", highlight=False)


@app.command("delete")
@handles_errors
def delete(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int | None, typer.Option("--version", "-v", help="Delete only this version.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a model with all its versions, or one version. Irreversible.

    Examples:

        modelyard models delete digits --version 1

        modelyard models delete digits --yes
    """
    what = f"version {version} of model {name!r}" if version is not None else f"model {name!r} and all its versions"
    if not yes:
        typer.confirm(f"Delete {what}?", abort=True, err=True)
    with client() as sdk:
        if version is None:
            sdk.models.delete(name)
        else:
            sdk.models.delete_version(name, version)
    out().print(f"Deleted {what}.", highlight=False)


def _when(t: Any) -> str:
    return t.strftime("%Y-%m-%d %H:%M") if t is not None else "-"
