"""What the trainer reports: :class:`ProgressEvent` during a run and :class:`TrainResult` at the end."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.tensors import TensorSpec

__all__ = ["ProgressEvent", "TrainResult"]


@dataclass(frozen=True)
class ProgressEvent:
    """One finished epoch. ``step`` counts optimizer steps since the start (of all epochs, on one
    worker); ``val_loss`` is ``None`` without a validation split; ``metrics`` holds the scalar
    validation metrics; ``eta_s`` estimates the seconds left. For regression the losses are in
    standardised target units (the metrics are in target units)."""

    epoch: int
    epochs: int
    step: int
    train_loss: float
    val_loss: float | None
    metrics: dict[str, float]
    samples_per_s: float
    eta_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "epochs": self.epochs,
            "step": self.step,
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "metrics": dict(self.metrics),
            "samples_per_s": self.samples_per_s,
            "eta_s": self.eta_s,
        }


@dataclass(frozen=True)
class TrainResult:
    """The artifacts and facts of a finished training run.

    ``onnx_path`` is the servable model (preprocessing inside; see ``inputs``/``outputs`` for its
    signature); ``torch_weights_path`` (safetensors) plus ``architecture`` rebuild the PyTorch
    module without pickle (:func:`modelyard.engine.trainer.recipes.load_module`).
    ``tokenizer_path`` is the tokenizer folder of a text classifier, else ``None``.
    """

    onnx_path: Path
    torch_weights_path: Path
    architecture_path: Path
    architecture: dict[str, Any]
    metrics: dict[str, Any]
    curves: list[dict[str, Any]]
    lineage: dict[str, Any]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    task: str
    classes: tuple[Any, ...] = ()
    epochs_completed: int = 0
    stopped_early: bool = False
    tokenizer_path: Path | None = None

    @property
    def signature(self) -> dict[str, list[dict[str, Any]]]:
        return {"inputs": [s.to_dict() for s in self.inputs], "outputs": [s.to_dict() for s in self.outputs]}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (paths as strings)."""
        return {
            "onnx_path": str(self.onnx_path),
            "torch_weights_path": str(self.torch_weights_path),
            "architecture_path": str(self.architecture_path),
            "tokenizer_path": None if self.tokenizer_path is None else str(self.tokenizer_path),
            "architecture": self.architecture,
            "metrics": self.metrics,
            "curves": self.curves,
            "lineage": self.lineage,
            "signature": self.signature,
            "task": self.task,
            "classes": list(self.classes),
            "epochs_completed": self.epochs_completed,
            "stopped_early": self.stopped_early,
        }
