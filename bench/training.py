"""Training throughput: the platform trainer vs a hand-written PyTorch loop, and DDP 2 vs 1 worker.

Run: ``PYTHONPATH=src python bench/training.py`` (about 1-2 minutes on 2 cores).

1. Trainer overhead. The same MLP, data, batch size, optimizer and epochs, trained by
   ``modelyard.engine.trainer.train`` and by a plain loop (randperm, index, forward, backward,
   step) in the same process with the same thread count. Reported: training samples/s of both
   (the trainer's from its progress events, which time the training phase of each epoch) and the
   ratio trainer/plain (target >= 0.9). The trainer's per-epoch checkpoint and the final
   evaluation/export are reported separately as end-to-end wall time.
2. Data-parallel. A larger MLP on more rows: 1 worker with 2 threads vs 2 DDP workers (gloo) with
   1 thread each, same global batch. Reported: samples/s of each and the speed-up.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modelyard.engine.dataframes import Table
from modelyard.engine.trainer import DDPLauncher, LocalLauncher, ProgressEvent, TrainSpec


def synthetic(n: int, d: int, classes: int, seed: int = 0) -> Table:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float64)
    w = rng.normal(size=(d, classes))
    y = (x @ w + 0.5 * rng.normal(size=(n, classes))).argmax(1).astype(np.int64)
    cols = {f"f{i}": np.ascontiguousarray(x[:, i]) for i in range(d)}
    cols["target"] = y
    return Table(columns=cols)


def plain_loop(table: Table, spec: TrainSpec) -> float:
    """A hand-written loop on the same model shape; returns training samples/s."""
    names = [c for c in table.column_names if c != "target"]
    x = torch.from_numpy(np.stack([table[c] for c in names], axis=1).astype(np.float32))
    x = (x - x.mean(0)) / x.std(0)
    y = torch.from_numpy(table["target"])
    layers: list[nn.Module] = []
    width = x.shape[1]
    for h in spec.hidden_sizes:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, int(y.max()) + 1))
    torch.manual_seed(spec.seed)
    model = nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=spec.learning_rate)
    g = torch.Generator().manual_seed(spec.seed)
    rates = []
    for _ in range(spec.epochs):
        t0 = time.perf_counter()
        order = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), spec.batch_size):
            idx = order[start : start + spec.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        rates.append(len(x) / (time.perf_counter() - t0))
    return float(np.median(rates))


def trainer_rate(launcher: object, spec: TrainSpec, table: Table) -> tuple[float, float]:
    """(median training samples/s from progress events, end-to-end wall seconds)."""
    events: list[ProgressEvent] = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        launcher.run(spec, table, workdir=Path(tmp), on_event=events.append)  # type: ignore[attr-defined]
        wall = time.perf_counter() - t0
    rates = [e.samples_per_s for e in events[1:]] or [e.samples_per_s for e in events]
    return float(np.median(rates)), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scale = 4 if args.quick else 1

    # 1. trainer vs plain loop ------------------------------------------------------------
    table = synthetic(20000 // scale, 64, 10)
    spec = TrainSpec(target="target", hidden_sizes=[256, 256], batch_size=128, epochs=4, validation_split=0.0)
    plain = plain_loop(table, spec)
    ours, wall = trainer_rate(LocalLauncher(threads=args.threads), spec, table)
    plain2 = plain_loop(table, spec)  # again, so drift on a shared machine shows
    base = max(plain, plain2)
    print(f"[trainer vs plain] rows={table.n_rows} mlp(256,256) batch=128 threads={args.threads}")
    print(f"  plain loop      : {base:10.0f} samples/s  (runs: {plain:.0f}, {plain2:.0f})")
    print(f"  modelyard train : {ours:10.0f} samples/s  (end-to-end {wall:.2f} s incl. checkpoints, eval, ONNX export)")
    print(f"  ratio trainer/plain = {ours / base:.2f}  (target >= 0.90)")

    # 2. DDP 2 workers vs 1 worker --------------------------------------------------------
    big = synthetic(24000 // scale, 256, 10, seed=1)
    spec_big = TrainSpec(target="target", hidden_sizes=[1024, 1024, 1024], batch_size=1024, epochs=3,
                         validation_split=0.0)
    one, wall1 = trainer_rate(LocalLauncher(threads=2), spec_big, big)
    two, wall2 = trainer_rate(DDPLauncher(threads_per_worker=1), spec_big.replace(workers=2), big)
    params = sum(a * b + b for a, b in zip([256, 1024, 1024, 1024], [1024, 1024, 1024, 10]))
    print(f"[DDP] rows={big.n_rows} mlp(1024x3) params={params / 1e6:.1f}M global batch=1024")
    print(f"  1 worker x 2 threads : {one:8.0f} samples/s  (end-to-end {wall1:.1f} s)")
    print(f"  2 workers x 1 thread : {two:8.0f} samples/s  (end-to-end {wall2:.1f} s incl. process spawn)")
    print(f"  speed-up 2 vs 1 = {two / one:.2f}x  (same 2 cores either way; DDP pays a gloo all-reduce per step)")


if __name__ == "__main__":
    main()
