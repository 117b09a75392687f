"""Optimization: int8 size/speed, int8 accuracy, structured pruning speed/accuracy.

Run: ``PYTHONPATH=src python bench/optimize.py`` (about 1-2 minutes on 2 cores). Every ratio is
against a baseline measured in the same run, interleaved call by call, one ONNX Runtime thread.

1. Dynamic int8 (``quantize-dynamic``) of an MLP 784-2048-2048-2048-10 (random weights; size and
   speed do not depend on them). Targets: int8 file <= 30% of the fp32 file; >= 1.5x faster at
   batch 32.
2. The digits classifier (platform trainer, MLP 128-64, 20 epochs) after int8: accuracy on its
   held-out validation rows may drop by <= 1 point. Reported for dynamic int8 and for static int8
   (activations calibrated on the training rows, per-channel weights, QDQ).
3. 50% structured pruning + 10 fine-tuning epochs of a digits MLP (platform trainer). Targets:
   >= 1.3x faster at batch 32 with <= 1 point of validation accuracy lost. Reported for the wide
   digits MLP 1024-1024 (where the matrix work dominates a call) and for the default 128-64 one.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np

from modelyard.engine.dataframes import Table, load_builtin
from modelyard.engine.optimizer import (
    Source,
    evaluate_onnx,
    export_pruned,
    feed_from_table,
    fine_tune,
    measure_many,
    model_facts,
    prune_net,
    quantize_dynamic,
    quantize_static,
)
from modelyard.engine.optimizer.measure import session
from modelyard.engine.trainer import TrainSpec, load_module, train
from modelyard.engine.trainer.data import split_rows
from modelyard.engine.trainer.recipes import TABULAR_FORMAT, TabularNet


def rows(table: Table, idx: np.ndarray) -> Table:
    return Table(columns={k: v[idx] for k, v in table.columns.items()}, image_shape=table.image_shape)


def big_mlp(out: Path) -> Path:
    """Export the random-weight MLP 784-2048-2048-2048-10 the same way the trainer does."""
    from modelyard.engine.trainer.export import export_tabular

    widths = [784, 2048, 2048, 2048, 10]
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [{"type": "linear", "in_features": a, "out_features": b}, {"type": "relu"}]
    layers.pop()
    arch = {"format": TABULAR_FORMAT, "recipe": "mlp", "task": "classification", "n_inputs": 784, "n_outputs": 10,
            "layers": layers, "inputs": {"numeric": [f"p{i}" for i in range(784)], "numeric_widths": [1] * 784,
                                         "categorical": []}, "classes": list(range(10))}
    import torch

    torch.manual_seed(0)
    net = TabularNet(arch).eval()
    x = np.random.default_rng(0).normal(size=(16, 784)).astype(np.float32)
    return export_tabular(net, arch, out, numeric=x, categorical={}, features=x).onnx_path


def trained_digits(work: Path, hidden: tuple[int, ...]) -> tuple[Source, Table, Table]:
    table = load_builtin("digits")
    spec = TrainSpec(target="target", hidden_sizes=hidden, epochs=20, seed=0, validation_split=0.2)
    result = train(spec, table, workdir=work)
    train_idx, val_idx = split_rows(table.n_rows, 0.2, 0)
    source = Source(onnx_path=result.onnx_path, architecture=result.architecture,
                    weights_path=result.torch_weights_path)
    return source, rows(table, train_idx), rows(table, val_idx)


def speed(paths: dict[str, Path], feed: dict[str, np.ndarray], iterations: int) -> dict[str, dict[int, float]]:
    out = measure_many(paths, feed, batches=(1, 32), iterations=iterations, warmup=20)
    return {k: {lat.batch: lat.mean_ms for lat in v} for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)

        # 1. int8 on the big MLP
        fp32 = big_mlp(tmp_path / "big")
        int8 = quantize_dynamic(fp32, tmp_path / "big-int8.onnx")
        feed = {"input": np.random.default_rng(1).normal(size=(32, 784)).astype(np.float32)}
        t = speed({"fp32": fp32, "int8": int8}, feed, max(30, args.iterations // 5))
        size_ratio = model_facts(int8).file_bytes / model_facts(fp32).file_bytes
        figures["mlp_int8_size_ratio"] = size_ratio
        figures["mlp_int8_speedup_b1"] = t["fp32"][1] / t["int8"][1]
        figures["mlp_int8_speedup_b32"] = t["fp32"][32] / t["int8"][32]
        print("1. MLP 784-2048x3-10, dynamic int8")
        print(f"   file: {model_facts(fp32).file_bytes / 1e6:.1f} MB -> {model_facts(int8).file_bytes / 1e6:.1f} MB "
              f"= {size_ratio:.1%} (target <= 30%)")
        for b in (1, 32):
            print(f"   batch {b:2d}: fp32 {t['fp32'][b]:.3f} ms, int8 {t['int8'][b]:.3f} ms, "
                  f"speed-up {t['fp32'][b] / t['int8'][b]:.2f}x" + ("  (target >= 1.5x)" if b == 32 else ""))

        # 2. digits classifier after int8
        source, train_rows, val_rows = trained_digits(tmp_path / "digits", (128, 64))
        q = quantize_dynamic(source.onnx_path, tmp_path / "digits-int8.onnx")
        q_keep = quantize_dynamic(source.onnx_path, tmp_path / "digits-int8-keep.onnx", keep_first_layer=True)
        cal = feed_from_table(session(source.onnx_path).get_inputs(), train_rows, target="target",
                              architecture=source.architecture)
        qs = quantize_static(source.onnx_path, tmp_path / "digits-int8-static.onnx", calibration=cal, samples=512)
        before = evaluate_onnx(source.onnx_path, val_rows, architecture=source.architecture).value
        print("2. digits MLP 128-64, int8, validation rows:", val_rows.n_rows)
        for label, path in (("dynamic", q), ("dynamic_keep_first", q_keep), ("static", qs)):
            after = evaluate_onnx(path, val_rows, architecture=source.architecture).value
            figures[f"digits_int8_{label}_accuracy_drop_points"] = 100 * (before - after)
            print(f"   {label:18s}: accuracy {before:.4f} -> {after:.4f}: drop {100 * (before - after):.2f} points "
                  f"(target <= 1)")

        # 3. structured pruning + fine-tuning
        print("3. 50% structured pruning + 10 fine-tuning epochs (on the training rows)")
        for hidden in ((1024, 1024), (128, 64)):
            name = "x".join(str(h) for h in hidden)
            src = source if hidden == (128, 64) else trained_digits(tmp_path / f"digits-{name}", hidden)[0]
            net = load_module(src.architecture, src.weights_path)
            pruned = fine_tune(prune_net(net, src.architecture, sparsity=0.5, mode="structured"), train_rows,
                               epochs=10, learning_rate=1e-3)
            out = export_pruned(pruned, train_rows, tmp_path / f"pruned-{name}")
            acc0 = evaluate_onnx(src.onnx_path, val_rows, architecture=src.architecture).value
            acc1 = evaluate_onnx(out, val_rows, architecture=pruned.architecture).value
            feed = {"input": np.ascontiguousarray(np.stack([val_rows[c] for c in src.architecture["inputs"]["numeric"]],
                                                           axis=1).astype(np.float32)[:32])}
            t = speed({"base": src.onnx_path, "pruned": out}, feed, args.iterations)
            sp = t["base"][32] / t["pruned"][32]
            figures[f"prune_{name}_speedup_b32"] = sp
            figures[f"prune_{name}_speedup_b1"] = t["base"][1] / t["pruned"][1]
            figures[f"prune_{name}_accuracy_drop_points"] = 100 * (acc0 - acc1)
            print(f"   digits MLP {name}: params {model_facts(src.onnx_path).parameters} -> "
                  f"{model_facts(out).parameters}; batch 32: {t['base'][32]:.4f} ms -> {t['pruned'][32]:.4f} ms "
                  f"= {sp:.2f}x (target >= 1.3x); batch 1: {t['base'][1] / t['pruned'][1]:.2f}x; "
                  f"accuracy {acc0:.4f} -> {acc1:.4f} (drop {100 * (acc0 - acc1):.2f} points, target <= 1)")
    if args.json:
        print(json.dumps({k: round(v, 4) for k, v in figures.items()}, indent=2))


if __name__ == "__main__":
    main()
