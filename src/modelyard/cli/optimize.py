"""Top-level commands ``modelyard optimize`` and ``modelyard compare`` (promotion is
``modelyard models promote``). :func:`register` adds them to the main app."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from modelyard.cli._common import client, err, handles_errors, human_bytes, out, print_json, print_table
from modelyard.errors import ValidationFailed

__all__ = ["register", "optimize", "compare", "parse_options", "report_rows", "write_chart"]

_METHODS = "quantize-dynamic | quantize-static | prune | fp16"


def parse_options(values: list[str] | None) -> dict[str, Any]:
    """``["sparsity=0.5", "mode=structured"]`` -> ``{"sparsity": 0.5, "mode": "structured"}``
    (values parsed as JSON when they are JSON, else kept as strings)."""
    options: dict[str, Any] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValidationFailed(f"--option {item!r} must look like KEY=VALUE", details={"field": "option"})
        try:
            options[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            options[key.strip()] = raw
    return options


def _steps(value: str | None) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    try:
        steps = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationFailed(f"--steps is not valid JSON: {exc}", details={"field": "steps"}) from exc
    if not isinstance(steps, list):
        raise ValidationFailed("--steps must be a JSON list of {method, options}", details={"field": "steps"})
    return steps


def _ms(side: dict[str, Any], batch: str, key: str) -> str:
    value = side.get("latency", {}).get(batch, {}).get(key)
    return "-" if value is None else f"{value:.3f} ms"


def report_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(what, before, after, after/before) rows of an optimization report."""
    b, a = report["before"], report["after"]

    def ratio(x: float | None, y: float | None) -> str:
        return "-" if not x or y is None else f"{y / x:.2f}x"

    rows = [
        (report["metric"], f"{b['metric']:.4f}", f"{a['metric']:.4f}", f"drop {report['metric_drop']:+.4f}"),
        ("file size", human_bytes(b["file_bytes"]), human_bytes(a["file_bytes"]), ratio(b["file_bytes"], a["file_bytes"])),
        ("parameters", str(b["parameters"]), str(a["parameters"]), ratio(b["parameters"], a["parameters"])),
        ("sparsity", f"{b['sparsity']:.1%}", f"{a['sparsity']:.1%}", ""),
    ]
    for batch in sorted(b.get("latency", {}), key=int):
        for key in ("p50_ms", "p99_ms"):
            rows.append((f"latency {key[:3]} batch {batch}", _ms(b, batch, key), _ms(a, batch, key),
                         ratio(b["latency"][batch][key], a["latency"][batch][key])))
        tb, ta = b["latency"][batch]["throughput"], a["latency"][batch]["throughput"]
        rows.append((f"throughput batch {batch}", f"{tb:,.0f}/s", f"{ta:,.0f}/s", ratio(tb, ta)))
    return rows


def _show_report(report: dict[str, Any]) -> None:
    held = "held" if report["guard_held"] else "FAILED"
    print_table(["", "BEFORE", "AFTER", "CHANGE"], report_rows(report),
                title=f"guard {held}: max_metric_drop {report['max_metric_drop']}")


@handles_errors
def optimize(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Option("--version", "-v", help="Source version (number, latest, production).")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help='Evaluation dataset (a name or "builtin:digits").')],
    method: Annotated[str | None, typer.Option("--method", "-m", help=_METHODS)] = None,
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="Method option KEY=VALUE (repeatable), "
                                                     "e.g. sparsity=0.5, fine_tune_epochs=5.")] = None,
    steps: Annotated[str | None, typer.Option(help="Chained steps as JSON (or @file.json) instead of --method: "
                                              '[{"method": "prune", "options": {...}}, {"method": "quantize-dynamic"}]')] = None,
    max_metric_drop: Annotated[float, typer.Option(help="Guard: most accuracy lost (absolute) or MSE "
                                                   "gained (relative).")] = 0.01,
    calibration_dataset: Annotated[str | None, typer.Option(help="Calibration data for quantize-static.")] = None,
    fine_tune_dataset: Annotated[str | None, typer.Option(help="Fine-tuning data for prune.")] = None,
    target: Annotated[str | None, typer.Option(help="Target column (default target, else label).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Register even if the guard fails.")] = False,
    stage: Annotated[str | None, typer.Option(help="Stage of the new version (default none).")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Wait for the job and print its report.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Optimize a version (int8 quantization, pruning, fp16) behind a metric guard.

    The job evaluates both versions on the dataset and measures both on the server in one run.
    If the metric drops by more than --max-metric-drop, the job fails and registers nothing.

    Examples:

        modelyard optimize digits --version 1 --method quantize-dynamic --dataset builtin:digits --follow

        modelyard optimize digits -v 1 -m prune -o sparsity=0.5 -o fine_tune_epochs=5 -d builtin:digits -f
    """
    chain = _steps(steps)
    if chain is None and method is None:
        raise ValidationFailed("give --method (with --option KEY=VALUE) or --steps", details={"field": "method"})
    with client() as sdk:
        job = sdk.optimize.submit(
            model, version=int(version) if version.isdigit() else version, dataset=dataset, method=method,
            options=parse_options(option), steps=chain, max_metric_drop=max_metric_drop,
            calibration_dataset=calibration_dataset, fine_tune_dataset=fine_tune_dataset, target=target,
            force=force, stage=stage,
        )
        if not follow:
            if json_out:
                print_json(job.to_dict())
            else:
                out().print(f"Job {job.id} queued; follow it with `modelyard optimize ... --follow` or the jobs API.",
                            highlight=False)
            return
        with err().status("optimizing...") as status:
            while not job.done:
                time.sleep(0.5)
                job = sdk.optimize.get(job.id)
                if job.progress:
                    status.update(f"optimizing: {job.progress.get('stage', '')}")
    if json_out:
        print_json(job.to_dict())
    elif job.report is not None:
        _show_report(job.report)
    if job.state == "succeeded" and job.result is not None and not json_out:
        out().print(f"Registered {model} version {job.version} (stage {job.result.get('stage')}). "
                    f"Promote it with `modelyard models promote {model} {job.version}`.", highlight=False)
    job.raise_for_state()


def write_chart(table: dict[str, Any], path: Path) -> Path:
    """A PNG: the metric against latency (p50, batch 1), one labelled point per version."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for row in table["rows"]:
        x = row["latency"].get("1", next(iter(row["latency"].values())))["p50_ms"]
        ax.scatter([x], [row["metric"]], s=40)
        label = f"v{row['version']}" + (f" {row['method']}" if row.get("method") else "")
        ax.annotate(label, (x, row["metric"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("latency p50, batch 1 (ms)")
    ax.set_ylabel(table["metric"])
    ax.set_title(f"{table['model']} on {table['dataset']}")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


@handles_errors
def compare(
    model: Annotated[str, typer.Argument(help="Model name.")],
    versions: Annotated[str, typer.Option("--versions", help="Comma-separated versions, e.g. 1,2,3.")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help='Dataset (a name or "builtin:digits").')],
    target: Annotated[str | None, typer.Option(help="Target column (default target, else label).")] = None,
    chart: Annotated[Path | None, typer.Option(help="PNG chart path (default compare-MODEL.png).")] = None,
    no_chart: Annotated[bool, typer.Option("--no-chart", help="Do not write the chart.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Evaluate versions on one dataset: metric, size, latency, throughput, cost per million.

    Examples:

        modelyard compare digits --versions 1,2,3 --dataset builtin:digits
    """
    numbers = [int(v) for v in versions.split(",") if v.strip()]
    with client() as sdk:
        result = sdk.optimize.compare(model, numbers, dataset=dataset, target=target).to_dict()
    path = None
    if not no_chart:
        path = write_chart(result, chart or Path(f"compare-{model}.png"))
    if json_out:
        print_json({**result, "chart": None if path is None else str(path)})
        return
    rows = []
    for r in result["rows"]:
        lat1, lat32 = r["latency"].get("1", {}), r["latency"].get("32", {})
        rows.append((
            r["version"], r["stage"], r.get("method") or "-", f"{r['metric']:.4f}", human_bytes(r["file_bytes"]),
            r["parameters"], f"{r['sparsity']:.0%}", f"{lat1.get('p50_ms', 0):.3f}", f"{lat1.get('p99_ms', 0):.3f}",
            f"{lat32.get('p50_ms', 0):.3f}", f"{r['throughput']:,.0f}",
            "-" if r["cost_per_million"] is None else f"{r['cost_per_million']:.6f}",
        ))
    print_table(
        ["VERSION", "STAGE", "METHOD", result["metric"].upper(), "SIZE", "PARAMS", "SPARSE", "P50 B1 ms",
         "P99 B1 ms", "P50 B32 ms", "ROWS/S", "COST/1M"], rows,
        title=f"{model} on {result['dataset']} ({result['evaluation_rows']} rows; "
              f"{result['price_per_core_hour']}/core-hour)",
    )
    if path is not None:
        out().print(f"Chart: {path}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``optimize`` and ``compare`` to the main app."""
    app.command("optimize")(optimize)
    app.command("compare")(compare)
