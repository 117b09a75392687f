"""Magnitude pruning of a platform-trained tabular model, optional fine-tuning, and re-export.

Works on the PyTorch source of a version (JSON architecture + safetensors, rebuilt with
:func:`~modelyard.engine.trainer.recipes.load_module`; never pickle):

* ``structured``: whole neurons (linear outputs) or channels (conv filters) with the smallest
  magnitude are removed, together with the matching inputs of the next layer, so the
  architecture's ``layers`` get narrower and the exported graph is really smaller and faster.
  Score of a unit: L2 norm of its outgoing weights times L2 norm of its incoming weights. The
  output layer keeps all its units; every layer keeps at least one.
* ``unstructured``: the weights with the smallest magnitudes (one global threshold over all
  linear/conv weights) are set to zero; the shapes stay, so the file does not shrink but the
  ``sparsity`` rises. Fine-tuning keeps pruned weights at zero.

:func:`fine_tune` trains the pruned net for a few epochs on a table (classification:
cross-entropy; regression: MSE on standardised targets); :func:`export_pruned` exports it like
the trainer does (ONNX with preprocessing inside, checked against PyTorch; safetensors; JSON).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from modelyard.engine.dataframes import Table
from modelyard.engine.trainer.recipes import TABULAR_FORMAT, TabularNet, build_module
from modelyard.errors import ValidationFailed

__all__ = ["PRUNE_MODES", "Pruned", "prune_net", "fine_tune", "export_pruned", "encode_table", "check_sparsity"]

PRUNE_MODES = ("structured", "unstructured")
_WEIGHTED = ("linear", "conv2d")
_PASS_THROUGH = ("relu", "gelu", "tanh", "dropout", "maxpool2d", "flatten")


@dataclass(frozen=True)
class Pruned:
    """A pruned net, its (possibly narrower) architecture and, for unstructured mode, the masks."""

    net: nn.Module
    architecture: dict[str, Any]
    masks: dict[str, torch.Tensor]
    mode: str
    sparsity: float


def check_sparsity(value: Any) -> float:
    """``value`` as a float strictly inside (0, 1), else ``ValidationFailed``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ValidationFailed("sparsity must be a number", details={"field": "options.sparsity"})
    if not 0.0 < float(value) < 1.0:
        raise ValidationFailed(f"sparsity={value} is out of range; it must lie strictly between 0 and 1",
                               details={"field": "options.sparsity"})
    return float(value)


def _require_tabular(architecture: dict[str, Any]) -> None:
    if architecture.get("format") != TABULAR_FORMAT:
        raise ValidationFailed(
            f"pruning supports platform-trained tabular models; this one is {architecture.get('recipe')!r}",
            details={"field": "method"},
        )


def prune_net(net: nn.Module, architecture: dict[str, Any], *, sparsity: float, mode: str = "structured") -> Pruned:
    """Prune a copy of ``net`` to ``sparsity`` (share of hidden units, or of weights, removed)."""
    _require_tabular(architecture)
    sparsity = check_sparsity(sparsity)
    if mode not in PRUNE_MODES:
        raise ValidationFailed(f"unknown prune mode {mode!r}; expected one of {', '.join(PRUNE_MODES)}",
                               details={"field": "options.mode"})
    if mode == "unstructured":
        return _unstructured(net, architecture, sparsity)
    return _structured(net, architecture, sparsity)


def _unstructured(net: nn.Module, architecture: dict[str, Any], sparsity: float) -> Pruned:
    net = copy.deepcopy(net).eval()
    weights = {name: p for name, p in net.named_parameters() if name.startswith("layers.") and name.endswith(".weight")}
    flat = torch.cat([p.detach().abs().flatten() for p in weights.values()])
    k = int(round(sparsity * flat.numel()))
    masks: dict[str, torch.Tensor] = {}
    if k > 0:
        threshold = torch.kthvalue(flat, k).values
        with torch.no_grad():
            for name, p in weights.items():
                mask = (p.abs() > threshold).to(p.dtype)
                p.mul_(mask)
                masks[name] = mask
    return Pruned(net=net, architecture=copy.deepcopy(architecture), masks=masks, mode="unstructured",
                  sparsity=sparsity)


def _weight(modules: nn.Sequential, index: int) -> torch.Tensor:
    return cast(torch.Tensor, modules[index].weight).detach()


def _chain(layers: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(layer, next weighted layer) pairs whose units can be removed."""
    weighted = [i for i, d in enumerate(layers) if d["type"] in _WEIGHTED]
    pairs = []
    for a, b in zip(weighted, weighted[1:]):
        if all(layers[j]["type"] in _PASS_THROUGH for j in range(a + 1, b)):
            pairs.append((a, b))
    return pairs


def _structured(net: nn.Module, architecture: dict[str, Any], sparsity: float) -> Pruned:
    arch = copy.deepcopy(architecture)
    layers = arch["layers"]
    modules = cast(nn.Sequential, net.layers)
    pairs = _chain(layers)
    if not pairs:
        raise ValidationFailed("the model has no hidden layer whose units can be removed",
                               details={"field": "options.mode"})
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    keeps: dict[int, torch.Tensor] = {}
    for a, b in pairs:
        w_out = _weight(modules, a)
        w_next = _weight(modules, b)
        units = w_out.shape[0]
        incoming = w_out.reshape(units, -1).norm(dim=1)
        if layers[a]["type"] == "conv2d" and layers[b]["type"] == "linear":
            spatial = w_next.shape[1] // units
            outgoing = w_next.reshape(w_next.shape[0], units, spatial).permute(1, 0, 2).reshape(units, -1).norm(dim=1)
        else:
            outgoing = w_next.transpose(0, 1).reshape(units, -1).norm(dim=1)
        score = incoming * outgoing
        keep_n = max(1, int(round(units * (1.0 - sparsity))))
        keeps[a] = torch.sort(torch.topk(score, keep_n).indices).values
    for a, b in pairs:
        keep = keeps[a]
        pa, pb = f"layers.{a}", f"layers.{b}"
        state[f"{pa}.weight"] = state[f"{pa}.weight"][keep]
        state[f"{pa}.bias"] = state[f"{pa}.bias"][keep]
        units = _weight(modules, a).shape[0]
        if layers[a]["type"] == "conv2d" and layers[b]["type"] == "linear":
            spatial = _weight(modules, b).shape[1] // units
            cols = (keep.unsqueeze(1) * spatial + torch.arange(spatial)).reshape(-1)
            state[f"{pb}.weight"] = state[f"{pb}.weight"][:, cols]
            layers[b]["in_features"] = int(len(cols))
        else:
            state[f"{pb}.weight"] = state[f"{pb}.weight"][:, keep]
            layers[b]["in_features" if layers[b]["type"] == "linear" else "in_channels"] = int(len(keep))
        layers[a]["out_features" if layers[a]["type"] == "linear" else "out_channels"] = int(len(keep))
    pruned = build_module(arch)
    pruned.load_state_dict(state, strict=True)
    return Pruned(net=pruned.eval(), architecture=arch, masks={}, mode="structured", sparsity=sparsity)


def encode_table(architecture: dict[str, Any], table: Table) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """(raw numeric ``[n, k]``, raw string columns ``[n, 1]``, encoded features) as the model expects."""
    _require_tabular(architecture)
    n = table.n_rows
    spec = architecture["inputs"]
    for name in list(spec["numeric"]) + [c["name"] for c in spec["categorical"]]:
        if name not in table:
            raise ValidationFailed(f"the dataset lacks the model's input column {name!r}",
                                   details={"field": "dataset", "column": name})
    parts = [np.asarray(table[c], dtype=np.float32).reshape(n, -1) for c in spec["numeric"]]
    numeric = np.concatenate(parts, axis=1) if parts else np.zeros((n, 0), dtype=np.float32)
    categorical: dict[str, np.ndarray] = {}
    onehots = []
    for c in spec["categorical"]:
        values = ["" if v is None else str(v) for v in table[c["name"]].tolist()]
        categorical[c["name"]] = np.array(values, dtype=object).reshape(-1, 1)
        index = {v: i for i, v in enumerate(c["categories"])}
        onehot = np.zeros((n, len(c["categories"])), dtype=np.float32)
        for row, v in enumerate(values):
            if v in index:
                onehot[row, index[v]] = 1.0
        onehots.append(onehot)
    features = np.ascontiguousarray(np.concatenate([numeric, *onehots], axis=1), dtype=np.float32)
    if features.shape[1] != int(architecture["n_inputs"]):
        raise ValidationFailed(
            f"the dataset gives {features.shape[1]} features per row; the model takes {architecture['n_inputs']}",
            details={"field": "dataset"},
        )
    return numeric, categorical, features


def _targets(net: nn.Module, architecture: dict[str, Any], table: Table, target: str) -> torch.Tensor:
    if target not in table:
        raise ValidationFailed(f"the dataset has no target column {target!r}", details={"field": "target"})
    y = table[target]
    if architecture["task"] == "classification":
        index = {c: i for i, c in enumerate(architecture["classes"])}
        unknown = [v for v in y.tolist() if v not in index]
        if unknown:
            raise ValidationFailed(f"the target holds the class {unknown[0]!r}, which the model does not know",
                                   details={"field": "target"})
        return torch.tensor([index[v] for v in y.tolist()], dtype=torch.int64)
    mean, std = float(cast(torch.Tensor, net.target_mean)), float(cast(torch.Tensor, net.target_std))
    scaled = (np.asarray(y, dtype=np.float32) - mean) / std
    return torch.from_numpy(scaled.astype(np.float32))


def fine_tune(
    pruned: Pruned, table: Table, *, target: str = "target", epochs: int = 5, learning_rate: float = 1e-3,
    batch_size: int = 64, seed: int = 0,
) -> Pruned:
    """Train the pruned net ``epochs`` more epochs on ``table`` (Adam); returns the tuned result."""
    if not isinstance(epochs, int) or isinstance(epochs, bool) or not 0 <= epochs <= 1000:
        raise ValidationFailed("fine_tune_epochs must be an integer in 0..1000", details={"field": "options.fine_tune_epochs"})
    if epochs == 0:
        return pruned
    net = cast(TabularNet, copy.deepcopy(pruned.net))
    arch = pruned.architecture
    _, _, features = encode_table(arch, table)
    x = torch.from_numpy(features)
    y = _targets(net, arch, table, target)
    loss_fn = nn.functional.cross_entropy if arch["task"] == "classification" else nn.functional.mse_loss
    params = dict(net.named_parameters())
    opt = torch.optim.Adam(net.parameters(), lr=learning_rate)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net.forward_scaled(x[idx]), y[idx])
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            if pruned.masks:
                with torch.no_grad():
                    for name, mask in pruned.masks.items():
                        params[name].mul_(mask)
    return Pruned(net=net.eval(), architecture=arch, masks=pruned.masks, mode=pruned.mode, sparsity=pruned.sparsity)


def export_pruned(pruned: Pruned, table: Table, out_dir: Path) -> Path:
    """Export the pruned net (ONNX checked against PyTorch on up to 256 rows); returns the ONNX path.

    ``out_dir`` also receives ``model.safetensors`` and ``architecture.json``.
    """
    from modelyard.engine.trainer.export import export_tabular

    numeric, categorical, features = encode_table(pruned.architecture, table)
    rows = slice(0, 256)
    exported = export_tabular(
        pruned.net, pruned.architecture, out_dir, numeric=numeric[rows],
        categorical={k: v[rows] for k, v in categorical.items()}, features=features[rows],
    )
    return exported.onnx_path
