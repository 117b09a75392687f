from __future__ import annotations

import numpy as np
import pytest
import torch

from modelyard.engine.optimizer import evaluate_onnx, export_pruned, fine_tune, model_facts, prune_net
from modelyard.engine.optimizer.prune import encode_table
from modelyard.engine.trainer import load_module
from modelyard.errors import ValidationFailed


def _net(source):
    return load_module(source.architecture, source.weights_path)


def test_structured_prune_removes_neurons(digits_source):
    pruned = prune_net(_net(digits_source), digits_source.architecture, sparsity=0.5, mode="structured")
    widths = [(d["in_features"], d["out_features"]) for d in pruned.architecture["layers"] if d["type"] == "linear"]
    assert widths == [(64, 32), (32, 16), (16, 10)]
    # the source architecture is not modified
    assert digits_source.architecture["layers"][0]["out_features"] == 64
    out = pruned.net(torch.zeros(3, 64))
    assert out.shape == (3, 10)


def test_structured_prune_keeps_the_strongest_units_exactly(digits_source):
    net = _net(digits_source)
    pruned = prune_net(net, digits_source.architecture, sparsity=0.5)
    # every kept row of the first layer is a row of the original layer, unchanged
    orig = net.layers[0].weight.detach()
    for row in pruned.net.layers[0].weight.detach():
        assert any(torch.equal(row, o) for o in orig)


def test_unstructured_prune_zeroes_weights_and_fine_tune_keeps_them_zero(digits, digits_source):
    pruned = prune_net(_net(digits_source), digits_source.architecture, sparsity=0.6, mode="unstructured")
    weights = [p for n, p in pruned.net.named_parameters() if n.endswith("weight")]
    zeros = sum(int((p == 0).sum()) for p in weights) / sum(p.numel() for p in weights)
    assert zeros == pytest.approx(0.6, abs=0.01)
    tuned = fine_tune(pruned, digits, epochs=1)
    tuned_weights = [p for n, p in tuned.net.named_parameters() if n.endswith("weight")]
    for before, after in zip(weights, tuned_weights):
        assert torch.all(after[before == 0] == 0)


def test_export_then_fine_tune_recovers_accuracy(tmp_path, digits, digits_source):
    base = evaluate_onnx(digits_source.onnx_path, digits, architecture=digits_source.architecture).value
    harsh = prune_net(_net(digits_source), digits_source.architecture, sparsity=0.75)
    raw = export_pruned(harsh, digits, tmp_path / "raw")
    tuned = export_pruned(fine_tune(harsh, digits, epochs=10, learning_rate=5e-3), digits, tmp_path / "tuned")
    acc_raw = evaluate_onnx(raw, digits, architecture=harsh.architecture).value
    acc_tuned = evaluate_onnx(tuned, digits, architecture=harsh.architecture).value
    assert acc_tuned > acc_raw
    assert acc_tuned > min(0.9, base - 0.05)
    assert model_facts(tuned).parameters < 0.3 * model_facts(digits_source.onnx_path).parameters
    assert (tmp_path / "tuned" / "model.safetensors").is_file()
    assert (tmp_path / "tuned" / "architecture.json").is_file()


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, float("nan"), "0.5", True])
def test_sparsity_outside_the_open_interval_is_refused(digits_source, bad):
    with pytest.raises(ValidationFailed, match="sparsity"):
        prune_net(_net(digits_source), digits_source.architecture, sparsity=bad)


def test_bad_mode_text_model_and_wrong_table(digits, digits_source):
    with pytest.raises(ValidationFailed, match="prune mode"):
        prune_net(_net(digits_source), digits_source.architecture, sparsity=0.5, mode="random")
    text_arch = {"format": "modelyard.text/1", "recipe": "text-classifier", "layers": []}
    with pytest.raises(ValidationFailed, match="tabular"):
        prune_net(_net(digits_source), text_arch, sparsity=0.5)
    from modelyard.engine.dataframes import Table

    wrong = Table(columns={"x": np.zeros(5), "target": np.zeros(5, dtype=np.int64)})
    with pytest.raises(ValidationFailed, match="lacks the model's input column"):
        encode_table(digits_source.architecture, wrong)
