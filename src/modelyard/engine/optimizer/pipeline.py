"""Chained optimization steps with a metric guard.

A job is a list of :class:`Step` (``prune`` -> ``quantize-static``, ...). :func:`parse_steps`
checks methods, options and order (torch-level steps come before graph-level ones: ``prune``
needs the PyTorch source, which an int8 or fp16 graph no longer matches). :func:`optimize` runs
them on a :class:`Source`, then evaluates the source and the result on one table, measures both
in one interleaved run (size, parameters, sparsity, latency p50/p99 at batch 1 and 32,
throughput) and judges the guard: the metric may drop by at most ``max_metric_drop``
(absolute accuracy, or relative MSE increase). The caller decides what a failed guard means
(:attr:`OptimizeResult.guard_held`); nothing here registers anything.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.engine.dataframes import Table
from modelyard.engine.optimizer import evaluate as ev
from modelyard.engine.optimizer import measure
from modelyard.errors import ValidationFailed

__all__ = ["METHODS", "Step", "Source", "OptimizeResult", "parse_steps", "optimize", "check_max_metric_drop"]

METHODS = ("quantize-dynamic", "quantize-static", "prune", "fp16")
_TORCH_METHODS = ("prune",)
_OPTIONS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "quantize-dynamic": {"per_channel": bool, "reduce_range": bool, "keep_first_layer": bool},
    "quantize-static": {"samples": int, "per_channel": bool, "calibration_method": str, "format": str},
    "prune": {"sparsity": (int, float), "mode": str, "fine_tune_epochs": int, "learning_rate": (int, float),
              "batch_size": int},
    "fp16": {"op_block_list": list},
}


@dataclass(frozen=True)
class Step:
    """One optimization: a method from :data:`METHODS` and its options."""

    method: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "options": dict(self.options)}


@dataclass(frozen=True)
class Source:
    """The version being optimized: its ONNX file and, when platform-trained, its PyTorch source."""

    onnx_path: Path
    architecture: dict[str, Any] | None = None
    weights_path: Path | None = None

    @property
    def has_torch(self) -> bool:
        return self.architecture is not None and self.weights_path is not None


@dataclass(frozen=True)
class OptimizeResult:
    """The optimized model and its report; ``weights_path``/``architecture`` are set only when the
    result still has a matching PyTorch source (prune without a later graph-level step)."""

    onnx_path: Path
    report: dict[str, Any]
    guard_held: bool
    weights_path: Path | None = None
    architecture: dict[str, Any] | None = None


def check_max_metric_drop(value: Any) -> float:
    """``max_metric_drop`` as a float >= 0, else ``ValidationFailed``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= float(value) < 1e9:
        raise ValidationFailed("max_metric_drop must be a number >= 0", details={"field": "max_metric_drop"})
    return float(value)


def parse_steps(steps: Sequence[Mapping[str, Any]]) -> tuple[Step, ...]:
    """Validate raw ``[{"method": ..., "options": {...}}, ...]``; ``ValidationFailed`` names the field."""
    from modelyard.engine.optimizer.prune import PRUNE_MODES, check_sparsity

    if not steps:
        raise ValidationFailed("at least one optimization step is needed", details={"field": "steps"})
    if len(steps) > 8:
        raise ValidationFailed("at most 8 optimization steps", details={"field": "steps"})
    out: list[Step] = []
    graph_level_seen = False
    for i, raw in enumerate(steps):
        if not isinstance(raw, Mapping):
            raise ValidationFailed(f"step {i} must be an object", details={"field": f"steps[{i}]"})
        method = str(raw.get("method", "")).strip().lower().replace("_", "-")
        if method not in METHODS:
            raise ValidationFailed(f"unknown optimization method {raw.get('method')!r}; expected one of "
                                   f"{', '.join(METHODS)}", details={"field": f"steps[{i}].method"})
        options = dict(raw.get("options") or {})
        allowed = _OPTIONS[method]
        for key, value in options.items():
            if key not in allowed:
                raise ValidationFailed(f"unknown option {key!r} for {method}; expected "
                                       f"{', '.join(allowed) or 'none'}", details={"field": f"steps[{i}].options.{key}"})
            kind = allowed[key]
            if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
                raise ValidationFailed(f"option {key!r} of {method} has the wrong type",
                                       details={"field": f"steps[{i}].options.{key}"})
        if method == "prune":
            if "sparsity" not in options:
                raise ValidationFailed("prune needs options.sparsity in (0, 1)", details={"field": f"steps[{i}].options.sparsity"})
            check_sparsity(options["sparsity"])
            if options.get("mode", "structured") not in PRUNE_MODES:
                raise ValidationFailed(f"unknown prune mode {options['mode']!r}; expected one of {', '.join(PRUNE_MODES)}",
                                       details={"field": f"steps[{i}].options.mode"})
            if not 0 <= int(options.get("fine_tune_epochs", 0)) <= 1000:
                raise ValidationFailed("fine_tune_epochs must be in 0..1000", details={"field": f"steps[{i}].options.fine_tune_epochs"})
            if graph_level_seen:
                raise ValidationFailed("prune must come before quantize/fp16 steps", details={"field": f"steps[{i}]"})
        else:
            if graph_level_seen:
                raise ValidationFailed("only one quantize/fp16 step per job (an int8 or fp16 graph is not re-quantized)",
                                       details={"field": f"steps[{i}]"})
            graph_level_seen = True
        if method == "quantize-static" and not 1 <= int(options.get("samples", 256)) <= 100_000:
            raise ValidationFailed("samples must be in 1..100000", details={"field": f"steps[{i}].options.samples"})
        out.append(Step(method=method, options=options))
    return tuple(out)


def _side(path: Path, evaluation: ev.Evaluation, facts: measure.ModelFacts,
          latency: list[measure.Latency]) -> dict[str, Any]:
    return {
        "metric": evaluation.value,
        **facts.to_dict(),
        "latency": {str(lat.batch): lat.to_dict() for lat in latency},
    }


def optimize(
    source: Source,
    steps: Sequence[Step],
    *,
    evaluation: Table,
    workdir: Path,
    max_metric_drop: float,
    target: str = "target",
    calibration: Table | None = None,
    fine_tune: Table | None = None,
    max_eval_rows: int | None = None,
    measure_iterations: int = 100,
    measure_budget_s: float = 10.0,
    on_progress: Callable[[str, float], None] | None = None,
) -> OptimizeResult:
    """Run ``steps`` on ``source``; evaluate and measure both; judge the guard.

    ``calibration`` (static quantization) and ``fine_tune`` (prune) default to ``evaluation``.
    Raises ``ValidationFailed`` for a request the source cannot satisfy (prune without a PyTorch
    source, an already-quantized model, columns that do not fit the model's inputs).
    """
    from modelyard.engine.optimizer import fp16, prune, quantize

    max_metric_drop = check_max_metric_drop(max_metric_drop)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    progress = on_progress or (lambda stage, fraction: None)
    calibration = calibration if calibration is not None else evaluation
    fine_tune = fine_tune if fine_tune is not None else evaluation
    evaluation = ev.limit_rows(evaluation, max_eval_rows)
    arch = source.architecture
    src_session = measure.session(source.onnx_path)
    # Fail fast on a table that does not fit the model, before any expensive step.
    ev.feed_from_table(src_session.get_inputs(), ev.limit_rows(evaluation, 8), target=target, architecture=arch)
    if any(s.method == "prune" for s in steps) and not source.has_torch:
        raise ValidationFailed(
            "prune needs the PyTorch source of the version (weights + architecture); this version is "
            "ONNX-only — prune applies to platform-trained versions", details={"field": "method"},
        )
    if any(s.method != "prune" for s in steps) and quantize.is_quantized(source.onnx_path):
        raise ValidationFailed("the model is already quantized (int8)", details={"field": "method"})

    current = source.onnx_path
    pruned: prune.Pruned | None = None
    torch_current = False
    for i, step in enumerate(steps):
        progress(step.method, i / (len(steps) + 2))
        out_dir = workdir / f"step{i}-{step.method}"
        out_dir.mkdir(parents=True, exist_ok=True)
        opts = step.options
        if step.method == "prune":
            from modelyard.engine.trainer.recipes import load_module

            assert source.architecture is not None and source.weights_path is not None
            net = pruned.net if pruned is not None else load_module(source.architecture, source.weights_path)
            net_arch = pruned.architecture if pruned is not None else source.architecture
            pruned = prune.prune_net(net, net_arch, sparsity=float(opts["sparsity"]), mode=str(opts.get("mode", "structured")))
            epochs = int(opts.get("fine_tune_epochs", 0))
            if epochs:
                pruned = prune.fine_tune(pruned, fine_tune, target=target, epochs=epochs,
                                         learning_rate=float(opts.get("learning_rate", 1e-3)),
                                         batch_size=int(opts.get("batch_size", 64)))
            current = prune.export_pruned(pruned, evaluation, out_dir)
            torch_current = True
        elif step.method == "quantize-dynamic":
            current = quantize.quantize_dynamic(current, out_dir / "model.onnx",
                                                per_channel=bool(opts.get("per_channel", False)),
                                                reduce_range=bool(opts.get("reduce_range", False)),
                                                keep_first_layer=bool(opts.get("keep_first_layer", False)))
            torch_current = False
        elif step.method == "quantize-static":
            cal_session = measure.session(current)
            try:
                feed = ev.feed_from_table(cal_session.get_inputs(), calibration, target=target,
                                          architecture=pruned.architecture if pruned else arch)
            except ValidationFailed as exc:
                raise ValidationFailed(f"the calibration dataset does not fit the model: {exc.message}",
                                       details={**(exc.details or {}), "field": "calibration_dataset"}) from exc
            feed = {k: v for k, v in feed.items() if v.dtype.kind == "f"}
            current = quantize.quantize_static(
                current, out_dir / "model.onnx", calibration=feed, samples=int(opts.get("samples", 256)),
                per_channel=bool(opts.get("per_channel", True)),
                method=str(opts.get("calibration_method", "minmax")), fmt=str(opts.get("format", "qdq")),
            )
            torch_current = False
        elif step.method == "fp16":
            block = opts.get("op_block_list")
            current = fp16.convert_fp16(current, out_dir / "model.onnx",
                                        op_block_list=[str(x) for x in block] if block is not None else None)
            torch_current = False

    progress("evaluate", len(steps) / (len(steps) + 2))
    new_arch = pruned.architecture if pruned is not None else arch
    before = ev.evaluate_onnx(source.onnx_path, evaluation, target=target, architecture=arch, session=src_session)
    after = ev.evaluate_onnx(current, evaluation, target=target, architecture=new_arch)
    progress("measure", (len(steps) + 1) / (len(steps) + 2))
    feed = ev.feed_from_table(src_session.get_inputs(), ev.limit_rows(evaluation, 64), target=target, architecture=arch)
    timings = measure.measure_many({"before": source.onnx_path, "after": current}, feed,
                                   iterations=measure_iterations, budget_s=measure_budget_s)
    facts_before, facts_after = measure.model_facts(source.onnx_path), measure.model_facts(current)
    drop = ev.metric_drop(before, after)
    held = drop <= max_metric_drop + 1e-12
    lat_b = {lat.batch: lat for lat in timings["before"]}
    lat_a = {lat.batch: lat for lat in timings["after"]}
    report = {
        "steps": [s.to_dict() for s in steps],
        "metric": before.metric,
        "higher_is_better": before.higher_is_better,
        "evaluation_rows": before.n_rows,
        "before": _side(source.onnx_path, before, facts_before, timings["before"]),
        "after": _side(current, after, facts_after, timings["after"]),
        "ratios": {
            "size": facts_after.file_bytes / facts_before.file_bytes if facts_before.file_bytes else None,
            "parameters": facts_after.parameters / facts_before.parameters if facts_before.parameters else None,
            **{f"speedup_batch_{b}": (lat_b[b].mean_ms / lat_a[b].mean_ms if lat_a[b].mean_ms else None) for b in lat_b},
        },
        "metric_drop": drop,
        "max_metric_drop": max_metric_drop,
        "guard_held": held,
        "measured_on": {"cpu_count": os.cpu_count(), "threads": 1},
    }
    progress("done", 1.0)
    keep_torch = torch_current and pruned is not None
    weights = (Path(current).parent / "model.safetensors") if keep_torch else None
    return OptimizeResult(onnx_path=Path(current), report=report, guard_held=held, weights_path=weights,
                          architecture=new_arch if keep_torch else None)
