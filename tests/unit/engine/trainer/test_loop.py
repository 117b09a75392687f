"""The training loop: quality, events, determinism, checkpoint/resume, cancel, divergence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from modelyard.engine.dataframes import Table, load_builtin
from modelyard.engine.trainer import ProgressEvent, TrainingCancelled, TrainingFailed, TrainSpec, train
from modelyard.engine.trainer.checkpoint import CHECKPOINT_NAME, load_checkpoint
from modelyard.errors import ValidationFailed


@pytest.fixture(scope="module")
def digits() -> Table:
    return load_builtin("digits")


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(2)


def test_digits_mlp_reaches_95_percent_with_events(digits: Table, tmp_path: Path) -> None:
    events: list[ProgressEvent] = []
    result = train(TrainSpec(target="target", epochs=15), digits, workdir=tmp_path, on_event=events.append)
    assert result.metrics["accuracy"] >= 0.95
    assert result.metrics["split"] == "validation" and result.metrics["n_samples"] == 359
    assert np.array(result.metrics["confusion_matrix"]).sum() == 359
    assert [e.epoch for e in events] == list(range(1, 16))
    assert events[-1].step == 15 * 23 and events[-1].eta_s == 0.0 and events[0].samples_per_s > 0
    assert events[-1].val_loss is not None and "accuracy" in events[-1].metrics
    assert len(result.curves) == 15 and result.curves[-1]["epoch"] == 15
    assert result.classes == tuple(range(10)) and result.lineage["recipe"] == "mlp"
    assert result.lineage["libraries"]["torch"].startswith("2.")
    json.dumps(result.to_dict())


def test_same_seed_same_weights_and_resume_is_exact(digits: Table, tmp_path: Path) -> None:
    spec = TrainSpec(target="target", epochs=4, hidden_sizes=[32], dropout=0.2, seed=7)
    straight = train(spec, digits, workdir=tmp_path / "a")

    seen: list[int] = []
    with pytest.raises(TrainingCancelled):
        train(spec, digits, workdir=tmp_path / "b", on_event=lambda e: seen.append(e.epoch),
              should_stop=lambda: len(seen) >= 2)
    assert seen == [1, 2]
    assert load_checkpoint(tmp_path / "b")["epoch"] == 2
    resumed_events: list[int] = []
    resumed = train(spec, digits, workdir=tmp_path / "b", on_event=lambda e: resumed_events.append(e.epoch))
    assert resumed_events == [3, 4]
    a, b = load_file(str(straight.torch_weights_path)), load_file(str(resumed.torch_weights_path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [c["train_loss"] for c in straight.curves] == [c["train_loss"] for c in resumed.curves]


def test_cancel_mid_epoch_keeps_last_checkpoint(digits: Table, tmp_path: Path) -> None:
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 3  # polled at steps 8 and 16 and after each epoch: stops in epoch 2

    with pytest.raises(TrainingCancelled):
        train(TrainSpec(target="target", epochs=5), digits, workdir=tmp_path, should_stop=stop)
    assert load_checkpoint(tmp_path)["epoch"] >= 1


def test_checkpoint_of_another_run_is_refused(digits: Table, tmp_path: Path) -> None:
    train(TrainSpec(target="target", epochs=1, recipe="linear"), digits, workdir=tmp_path)
    assert (tmp_path / CHECKPOINT_NAME).is_file()
    with pytest.raises(ValidationFailed, match="different run"):
        train(TrainSpec(target="target", epochs=2, recipe="linear"), digits, workdir=tmp_path)


def test_diverging_loss_raises_training_failed(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    t = Table(columns={"x": x, "y": x * 1e30})
    with pytest.raises(TrainingFailed) as info:
        train(TrainSpec(target="y", recipe="linear", optimizer="sgd", learning_rate=10.0, momentum=0.99,
                        epochs=50), t, workdir=tmp_path)
    assert info.value.code == "training_failed" and info.value.http_status == 422


def test_early_stopping_restores_best(digits: Table, tmp_path: Path) -> None:
    result = train(TrainSpec(target="target", epochs=200, early_stopping_patience=2, learning_rate=0.01),
                   digits, workdir=tmp_path)
    assert result.stopped_early and result.epochs_completed < 200
    best = min(c["val_loss"] for c in result.curves)
    assert result.metrics["log_loss"] == pytest.approx(best, rel=1e-4)


def test_diabetes_regression(tmp_path: Path) -> None:
    result = train(TrainSpec(target="target", recipe="linear", epochs=60, learning_rate=0.01),
                   load_builtin("diabetes"), workdir=tmp_path)
    assert result.task == "regression"
    assert result.metrics["r2"] > 0.3 and result.metrics["mae"] < 60
    assert [o.name for o in result.outputs] == ["prediction"] and result.outputs[0].shape == (-1,)


def test_cnn_on_digits(digits: Table, tmp_path: Path) -> None:
    result = train(TrainSpec(target="target", recipe="cnn", epochs=6, conv_channels=[8, 16], hidden_sizes=[32]),
                   digits, workdir=tmp_path)
    assert result.metrics["accuracy"] >= 0.93
    assert result.architecture["layers"][0] == {"type": "reshape", "shape": [1, 8, 8]}
