"""Exported artifacts: ONNX with preprocessing inside, safetensors + JSON rebuild, categoricals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from modelyard.engine.dataframes import Table, load_builtin, read_table
from modelyard.engine.trainer import TrainSpec, load_module, train
from modelyard.engine.trainer.metrics import classification_metrics, regression_metrics
from modelyard.errors import InvalidArtifact


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(2)


def test_onnx_takes_raw_features_and_matches_rebuilt_torch(tmp_path: Path) -> None:
    digits = load_builtin("digits")
    result = train(TrainSpec(target="target", epochs=3, hidden_sizes=[32]), digits, workdir=tmp_path)
    assert result.onnx_path.is_file() and result.torch_weights_path.suffix == ".safetensors"
    assert json.loads(result.architecture_path.read_text()) == result.architecture
    raw = np.stack([digits[c] for c in digits.column_names[:-1]], axis=1).astype(np.float32)[:50]
    sess = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"]
    probs = sess.run(["probabilities"], {"input": raw})[0]
    assert probs.shape == (50, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    net = load_module(result.architecture, result.torch_weights_path)
    with torch.no_grad():
        want = torch.softmax(net(torch.from_numpy(raw)), -1).numpy()
    assert np.max(np.abs(probs - want)) < 1e-5
    assert (probs.argmax(1) == digits["target"][:50]).mean() > 0.8
    bad = dict(result.architecture, layers=[{"type": "linear", "in_features": 64, "out_features": 3}])
    with pytest.raises(InvalidArtifact):
        load_module(bad, result.torch_weights_path)


def test_categorical_strings_and_missing_values_inside_the_graph(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 300
    color = rng.choice(["red", "green", "blue"], size=n)
    size = rng.normal(size=n)
    label = np.where(color == "red", "hot", np.where(size > 0, "big", "small"))
    lines = ["color,size,label"] + [f"{c},{'' if i % 17 == 0 else round(s, 4)},{lab}"
                                     for i, (c, s, lab) in enumerate(zip(color, size, label))]
    path = tmp_path / "d.csv"
    path.write_text("\n".join(lines) + "\n")
    table = read_table(path, "csv")
    result = train(TrainSpec(target="label", epochs=40, hidden_sizes=[16]), table, workdir=tmp_path / "w")
    assert result.metrics["accuracy"] >= 0.85
    assert [(s.name, s.datatype, s.shape) for s in result.inputs] == [
        ("input", "FP32", (-1, 1)), ("color", "BYTES", (-1, 1))]
    sess = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    probs = sess.run(["probabilities"], {
        "input": np.array([[0.0], [2.0], [-2.0], [np.nan]], dtype=np.float32),
        "color": np.array([["red"], ["green"], ["blue"], ["purple"]], dtype=object),
    })[0]
    classes = list(result.classes)
    assert classes == ["big", "hot", "small"]
    assert [classes[i] for i in probs[:3].argmax(1)] == ["hot", "big", "small"]
    assert np.isfinite(probs).all()  # unknown category and a missing value still give probabilities


def test_regression_prediction_in_target_units(tmp_path: Path) -> None:
    x = np.linspace(-1, 1, 200)
    table = Table(columns={"x": x, "y": 1000.0 + 500.0 * x})
    result = train(TrainSpec(target="y", recipe="linear", epochs=80, learning_rate=0.05), table, workdir=tmp_path)
    sess = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    pred = sess.run(["prediction"], {"input": np.array([[0.0], [0.5]], dtype=np.float32)})[0]
    assert pred.shape == (2,) and np.allclose(pred, [1000.0, 1250.0], rtol=0.02)
    assert result.metrics["r2"] > 0.99


def test_metrics_by_hand() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    m = classification_metrics(probs, np.array([0, 1, 1, 1]), 2)
    assert m["accuracy"] == 0.75 and m["confusion_matrix"] == [[1, 0], [1, 2]]
    assert m["f1_macro"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4, 0.7])))
    r = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    assert r["mse"] == pytest.approx(4 / 3) and r["mae"] == pytest.approx(2 / 3)
    assert r["r2"] == pytest.approx(1 - 4 / (((np.array([1, 2, 5]) - 8 / 3) ** 2).sum()))
