"""The training loop: deterministic, checkpointed after every epoch, resumable, cancellable.

:func:`train` is the entry point. With a fixed ``seed`` a run is deterministic on one machine;
a run stopped (``should_stop``) or killed after epoch *k* and started again with the same
``workdir`` resumes from the epoch-*k* checkpoint and ends with weights equal (``torch.equal``)
to those of an uninterrupted run: the shuffling order of epoch *e* is derived from
``(seed, epoch)`` and the other random state (dropout) is restored from the checkpoint.

The same loop runs inside each data-parallel worker (:mod:`.launcher`); only worker 0 evaluates,
checkpoints, reports events and exports.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from modelyard.engine.dataframes import Table
from modelyard.engine.trainer import data as data_mod
from modelyard.engine.trainer import export as export_mod
from modelyard.engine.trainer.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from modelyard.engine.trainer.errors import TrainingCancelled, TrainingFailed
from modelyard.engine.trainer.metrics import classification_metrics, regression_metrics, scalar_metrics
from modelyard.engine.trainer.recipes import (
    TabularNet,
    TextClassifierNet,
    encoder_path,
    tabular_architecture,
    text_architecture,
)
from modelyard.engine.trainer.results import ProgressEvent, TrainResult
from modelyard.engine.trainer.spec import TrainPlan, TrainSpec
from modelyard.errors import ValidationFailed

__all__ = ["train", "run_worker", "Collective", "SingleProcess", "ARTIFACTS_DIR"]

#: Sub-folder of the workdir that receives the exported artifacts.
ARTIFACTS_DIR = "artifacts"
_STOP_CHECK_STEPS = 8
_EVAL_BATCH = 4096


class Collective(Protocol):
    """What the loop needs from the worker group (one process: :class:`SingleProcess`)."""

    rank: int
    world_size: int

    def sum(self, values: list[float]) -> list[float]: ...

    def any(self, flag: bool) -> bool: ...

    def gather(self, obj: Any) -> list[Any]: ...

    def stop_requested(self) -> bool: ...


class SingleProcess:
    """The trivial group of one worker; ``should_stop`` is polled directly."""

    rank = 0
    world_size = 1

    def __init__(self, should_stop: Callable[[], bool] | None = None) -> None:
        self._should_stop = should_stop

    def sum(self, values: list[float]) -> list[float]:
        return list(values)

    def any(self, flag: bool) -> bool:
        return flag

    def gather(self, obj: Any) -> list[Any]:
        return [obj]

    def stop_requested(self) -> bool:
        return bool(self._should_stop and self._should_stop())


def train(
    spec: TrainSpec,
    table: Table,
    *,
    workdir: Path,
    on_event: Callable[[ProgressEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train ``spec`` on ``table``; artifacts and the checkpoint go to ``workdir``.

    Validates the spec first (``ValidationFailed``). Resumes from ``workdir``'s checkpoint when
    there is one. ``on_event`` gets a :class:`ProgressEvent` after every epoch; ``should_stop``
    is polled every few steps and after each epoch and makes the run raise
    :class:`TrainingCancelled` (the last epoch checkpoint is kept). A non-finite loss raises
    :class:`TrainingFailed`. ``spec.workers > 1`` runs data-parallel worker processes
    (:class:`~modelyard.engine.trainer.launcher.DDPLauncher`).
    """
    if spec.workers > 1:
        from modelyard.engine.trainer.launcher import DDPLauncher

        return DDPLauncher().run(spec, table, workdir=workdir, on_event=on_event, should_stop=should_stop)
    spec.validate(table)
    result = run_worker(spec, table, workdir=Path(workdir), on_event=on_event, group=SingleProcess(should_stop))
    assert result is not None  # the only worker is worker 0
    return result


# ----------------------------------------------------------------------------------------------
# setup per recipe


@dataclass
class _Setup:
    net: nn.Module  # the full module that is exported
    trainable: nn.Module  # what the optimizer updates; forward(*inputs) -> scaled outputs
    inputs: tuple[torch.Tensor, ...]  # all rows
    y: torch.Tensor  # loss targets (class indices, or standardised values) for all rows
    y_raw: np.ndarray  # class indices or target values for metrics
    train_rows: np.ndarray
    val_rows: np.ndarray
    architecture: dict[str, Any]
    target_mean: float
    target_std: float
    export: Callable[[nn.Module, Path, np.ndarray], export_mod.Exported]


class _Scaled(nn.Module):
    """Calls ``forward_scaled`` so DDP (which calls ``forward``) trains on the loss scale."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.net.forward_scaled(*inputs)


def _tabular_setup(plan: TrainPlan, table: Table) -> _Setup:
    prepared = data_mod.prepare(plan, table)
    architecture = tabular_architecture(plan)
    net = TabularNet(architecture)
    net.feature_mean.copy_(torch.from_numpy(prepared.feature_mean))
    net.feature_std.copy_(torch.from_numpy(prepared.feature_std))
    net.target_mean.fill_(prepared.target_mean)
    net.target_std.fill_(prepared.target_std)
    if plan.task == "classification":
        y = torch.from_numpy(prepared.y)
    else:
        y = torch.from_numpy(((prepared.y - prepared.target_mean) / prepared.target_std).astype(np.float32))
    numeric = data_mod.numeric_matrix(plan, table)
    categorical = data_mod.categorical_inputs(plan, table)

    def export(module: nn.Module, out_dir: Path, rows: np.ndarray) -> export_mod.Exported:
        return export_mod.export_tabular(
            module, architecture, out_dir,
            numeric=numeric[rows], categorical={k: v[rows] for k, v in categorical.items()},
            features=prepared.x[rows],
        )

    return _Setup(
        net=net, trainable=_Scaled(net), inputs=(torch.from_numpy(prepared.x),), y=y, y_raw=prepared.y,
        train_rows=prepared.train_rows, val_rows=prepared.val_rows, architecture=architecture,
        target_mean=prepared.target_mean, target_std=prepared.target_std, export=export,
    )


def _text_setup(plan: TrainPlan, table: Table) -> _Setup:
    from transformers import AutoModel, AutoTokenizer

    spec = plan.spec
    folder = encoder_path()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    encoder = AutoModel.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager")
    cfg = encoder.config.to_dict()
    keep = {k: v for k, v in cfg.items() if isinstance(v, (int, float, str, bool, list, type(None)))}
    keep["model_type"] = encoder.config.model_type
    for k in ("_name_or_path", "transformers_version", "architectures", "torch_dtype", "dtype"):
        keep.pop(k, None)
    architecture = text_architecture(plan, keep, int(encoder.config.hidden_size))
    net = TextClassifierNet(architecture, encoder=encoder)
    texts = [str(t) for t in table[spec.text_field].tolist()]
    enc = tokenizer(texts, padding=True, truncation=True, max_length=spec.max_text_length, return_tensors="pt")
    ids, mask = enc["input_ids"].to(torch.int64), enc["attention_mask"].to(torch.int64)
    y_np = data_mod.encode_target(plan, table)
    train_rows, val_rows = data_mod.split_rows(table.n_rows, spec.validation_split, spec.seed)
    if spec.fine_tune_encoder:
        trainable: nn.Module = net
        inputs: tuple[torch.Tensor, ...] = (ids, mask)
    else:
        for p in net.encoder.parameters():
            p.requires_grad_(False)
        net.encoder.eval()
        chunks = []
        with torch.no_grad():
            for start in range(0, len(texts), 64):
                chunks.append(net.embed(ids[start : start + 64], mask[start : start + 64]))
        inputs = (torch.cat(chunks),)
        trainable = net.layers
    sample = [texts[i] for i in (val_rows if len(val_rows) else train_rows)[:16]]

    def export(module: nn.Module, out_dir: Path, rows: np.ndarray) -> export_mod.Exported:
        return export_mod.export_text(module, architecture, out_dir, tokenizer=tokenizer, sample_texts=sample)

    return _Setup(
        net=net, trainable=trainable, inputs=inputs, y=torch.from_numpy(y_np), y_raw=y_np,
        train_rows=train_rows, val_rows=val_rows, architecture=architecture,
        target_mean=0.0, target_std=1.0, export=export,
    )


def _loss_fn(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if name == "cross_entropy":
        return nn.functional.cross_entropy
    if name == "mae":
        return nn.functional.l1_loss
    return nn.functional.mse_loss


def _optimizer(spec: TrainSpec, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.learning_rate, momentum=spec.momentum, weight_decay=spec.weight_decay)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=spec.weight_decay)
    return torch.optim.Adam(params, lr=spec.learning_rate, weight_decay=spec.weight_decay)


def _run_id(spec: TrainSpec, table: Table) -> str:
    text = json.dumps(spec.to_dict(), sort_keys=True) + data_mod.table_fingerprint(table)
    return hashlib.sha256(text.encode()).hexdigest()


def _library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "numpy", "onnx", "onnxruntime", "transformers", "safetensors", "modelyard"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


# ----------------------------------------------------------------------------------------------
# the worker


def run_worker(
    spec: TrainSpec,
    table: Table,
    *,
    workdir: Path,
    on_event: Callable[[ProgressEvent], None] | None,
    group: Collective,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
) -> TrainResult | None:
    """Run the loop as one worker of ``group``; worker 0 returns the result, others ``None``.

    ``wrap`` wraps the trainable module (e.g. in ``DistributedDataParallel``). The spec must
    already be validated.
    """
    rank, world = group.rank, group.world_size
    main = rank == 0
    plan = spec.plan(table, max_workers=spec.workers)
    device = torch.device(plan.device)
    torch.manual_seed(spec.seed)
    np.random.seed(spec.seed)
    random.seed(spec.seed)
    setup = _text_setup(plan, table) if spec.recipe == "text-classifier" else _tabular_setup(plan, table)
    if rank:
        torch.manual_seed(spec.seed + 7919 * rank)  # different dropout masks per worker
    setup.net.to(device)
    trainable = setup.trainable
    params = [p for p in trainable.parameters() if p.requires_grad]
    optimizer = _optimizer(spec, params)
    loss_fn = _loss_fn(plan.loss)
    run_id = _run_id(spec.replace(workers=1), table) if world > 1 else _run_id(spec, table)

    start_epoch, step = 0, 0
    curves: list[dict[str, Any]] = []
    best_loss, best_state, bad_epochs, stopped_early = math.inf, None, 0, False
    checkpoint = load_checkpoint(workdir)
    if checkpoint is not None:
        if checkpoint.get("run_id") != run_id:
            raise ValidationFailed(
                "the job folder holds a checkpoint of a different run (other spec or data)",
                details={"field": "workdir"},
            )
        trainable.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        rngs = checkpoint["rng"]
        if len(rngs) == world:
            restore_rng(rngs[rank])
        start_epoch, step = int(checkpoint["epoch"]), int(checkpoint["step"])
        curves = json.loads(checkpoint["curves"])
        best = checkpoint["best"]
        best_loss, bad_epochs, best_state = float(best["loss"]), int(best["bad_epochs"]), best["state"]
        stopped_early = bool(checkpoint.get("stopped_early", False))
    model = wrap(trainable) if wrap else trainable

    inputs = tuple(t.to(device) for t in setup.inputs)
    y = setup.y.to(device)
    train_rows = torch.from_numpy(setup.train_rows)
    per_worker_batch = max(1, math.ceil(spec.batch_size / world))
    durations: list[float] = []

    epoch = start_epoch
    while epoch < spec.epochs and not stopped_early:
        t0 = time.perf_counter()
        generator = torch.Generator().manual_seed(spec.seed * 1_000_003 + epoch)
        order = train_rows[torch.randperm(len(train_rows), generator=generator)]
        if world > 1:
            pad = (-len(order)) % world
            order = torch.cat([order, order[:pad]])[rank::world]
        trainable.train()
        if spec.recipe == "text-classifier" and not spec.fine_tune_encoder:
            setup.net.encoder.eval()
        loss_sum, seen, local_steps = 0.0, 0, 0
        for start in range(0, len(order), per_worker_batch):
            idx = order[start : start + per_worker_batch].to(device)
            batch = tuple(t[idx] for t in inputs)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(*batch), y[idx])
            value = float(loss.item())
            if not math.isfinite(value):
                raise TrainingFailed(
                    f"the loss became {value} at epoch {epoch + 1}, step {step + 1}; "
                    "try a lower learning_rate or standardised targets",
                    details={"field": "learning_rate"},
                )
            loss.backward()
            optimizer.step()
            loss_sum += value * len(idx)
            seen += len(idx)
            step += 1
            local_steps += 1
            if local_steps % _STOP_CHECK_STEPS == 0 and group.any(group.stop_requested()):
                raise TrainingCancelled(f"training was cancelled during epoch {epoch + 1}")
        train_time = time.perf_counter() - t0
        total_loss, total_seen = group.sum([loss_sum, float(seen)])
        train_loss = total_loss / max(total_seen, 1.0)
        rngs = group.gather(capture_rng())
        epoch += 1
        early = False
        if main:
            val_loss, metrics = _evaluate(setup, trainable, loss_fn, plan, device, setup.val_rows, full=False)
            if spec.early_stopping_patience is not None and val_loss is not None:
                if val_loss < best_loss - 1e-12:
                    best_loss, bad_epochs = val_loss, 0
                    best_state = {k: v.detach().clone().cpu() for k, v in trainable.state_dict().items()}
                else:
                    bad_epochs += 1
                    early = bad_epochs >= spec.early_stopping_patience
            durations.append(time.perf_counter() - t0)
            samples_per_s = total_seen / train_time if train_time > 0 else 0.0
            curves.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, **metrics,
                           "samples_per_s": samples_per_s})
            save_checkpoint(workdir, {
                "format": 1,
                "run_id": run_id,
                "epoch": epoch,
                "step": step,
                "model": trainable.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": rngs,
                "curves": json.dumps(curves),
                "best": {"loss": best_loss, "bad_epochs": bad_epochs, "state": best_state},
                "stopped_early": early,
            })
            if on_event is not None:
                eta = (spec.epochs - epoch) * (sum(durations) / len(durations)) if not early else 0.0
                on_event(ProgressEvent(
                    epoch=epoch, epochs=spec.epochs, step=step, train_loss=train_loss, val_loss=val_loss,
                    metrics=metrics, samples_per_s=samples_per_s, eta_s=eta,
                ))
        stopped_early = group.any(early)
        if epoch < spec.epochs and not stopped_early and group.any(group.stop_requested()):
            raise TrainingCancelled(f"training was cancelled after epoch {epoch}")

    if not main:
        return None
    if best_state is not None and spec.early_stopping_patience is not None:
        trainable.load_state_dict(best_state)
    return _finish(spec, plan, table, setup, trainable, loss_fn, device, workdir, curves, epoch, stopped_early)


def _evaluate(setup: _Setup, trainable: nn.Module, loss_fn: Callable[..., torch.Tensor], plan: TrainPlan,
              device: torch.device, rows: np.ndarray, *, full: bool) -> tuple[float | None, dict[str, Any]]:
    if len(rows) == 0:
        return None, {}
    was_training = trainable.training
    trainable.eval()
    outs = []
    chunk = 64 if plan.spec.recipe == "text-classifier" and plan.spec.fine_tune_encoder else _EVAL_BATCH
    with torch.no_grad():
        idx_all = torch.from_numpy(rows)
        for start in range(0, len(rows), chunk):
            idx = idx_all[start : start + chunk].to(device)
            outs.append(trainable(*(t[idx] for t in setup.inputs)).cpu())
    trainable.train(was_training)
    out = torch.cat(outs)
    loss = float(loss_fn(out, setup.y[idx_all]).item())
    if plan.task == "classification":
        metrics = classification_metrics(torch.softmax(out, dim=-1).numpy(), setup.y_raw[rows], plan.n_outputs)
    else:
        metrics = regression_metrics(out.double().numpy() * setup.target_std + setup.target_mean, setup.y_raw[rows])
    return loss, metrics if full else scalar_metrics(metrics)


def _finish(spec: TrainSpec, plan: TrainPlan, table: Table, setup: _Setup, trainable: nn.Module,
            loss_fn: Callable[..., torch.Tensor], device: torch.device, workdir: Path,
            curves: list[dict[str, Any]], epochs_done: int, stopped_early: bool) -> TrainResult:
    rows = setup.val_rows if len(setup.val_rows) else setup.train_rows
    _, metrics = _evaluate(setup, trainable, loss_fn, plan, device, rows, full=True)
    metrics = {**metrics, "split": "validation" if len(setup.val_rows) else "train", "n_samples": int(len(rows))}
    sample = rows[:256]
    exported = setup.export(setup.net.cpu(), workdir / ARTIFACTS_DIR, sample)
    lineage = {
        "recipe": spec.recipe,
        "task": plan.task,
        "hyper_parameters": spec.to_dict(),
        "loss": plan.loss,
        "features": list(plan.numeric) + [n for n, _ in plan.categorical] or [spec.text_field],
        "target": spec.target,
        "n_rows": table.n_rows,
        "n_train": int(len(setup.train_rows)),
        "n_validation": int(len(setup.val_rows)),
        "data_sha256": data_mod.table_fingerprint(table),
        "workers": spec.workers,
        "device": plan.device,
        "libraries": _library_versions(),
        "onnx_max_abs_diff": exported.max_abs_diff,
    }
    return TrainResult(
        onnx_path=exported.onnx_path, torch_weights_path=exported.weights_path,
        architecture_path=exported.architecture_path, architecture=setup.architecture, metrics=metrics,
        curves=curves, lineage=lineage, inputs=exported.inputs, outputs=exported.outputs, task=plan.task,
        classes=plan.classes, epochs_completed=epochs_done, stopped_early=stopped_early,
        tokenizer_path=exported.tokenizer_path,
    )

