"""Export a trained module: ONNX (checked against PyTorch with ONNX Runtime), safetensors, JSON.

Tabular models (one ``.onnx`` file, opset 17, legacy exporter, dynamic batch axis):

* input ``input`` FP32 ``[-1, n_numeric]``: the raw numeric features in the order of
  ``architecture["inputs"]["numeric"]`` (multi-dimensional arrays flattened row-major); NaN marks
  a missing value. Absent when the model has no numeric feature.
* one input per string (categorical) feature, named like the column, BYTES ``[-1, 1]``; it is
  one-hot encoded inside the graph (``ai.onnx.ml.LabelEncoder``); unknown strings encode as all
  zeros.
* output ``probabilities`` FP32 ``[-1, n_classes]`` (classes in ``architecture["classes"]``
  order) for classification, ``prediction`` FP32 ``[-1]`` for regression.

Standardisation, missing-value imputation and the target scaling are inside the graph.

Text classifiers: one ``.onnx`` file taking ``input_ids`` and ``attention_mask`` INT64
``[-1, -1]`` and giving ``probabilities``, plus the tokenizer saved as a transformers folder
(``tokenizer/``) next to it.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from modelyard.engine.trainer.errors import TrainingFailed
from modelyard.engine.trainer.recipes import InferenceModule
from modelyard.tensors import TensorSpec

__all__ = ["Exported", "export_tabular", "export_text", "save_torch", "OPSET"]

OPSET = 17
_FEATURES = "_features"


@dataclass(frozen=True)
class Exported:
    onnx_path: Path
    weights_path: Path
    architecture_path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_abs_diff: float
    tokenizer_path: Path | None = None


def _atomic_target(final: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}-", suffix=".tmp", dir=final.parent)
    os.close(fd)
    return Path(tmp)


def _finish(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)


def save_torch(net: nn.Module, architecture: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """``model.safetensors`` and ``architecture.json`` in ``out_dir`` (both atomic)."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / "model.safetensors"
    arch_path = out_dir / "architecture.json"
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    tmp = _atomic_target(weights)
    save_file(state, str(tmp), metadata={"format": str(architecture.get("format"))})
    _finish(tmp, weights)
    tmp = _atomic_target(arch_path)
    tmp.write_text(json.dumps(architecture, indent=2, sort_keys=True))
    _finish(tmp, arch_path)
    return weights, arch_path


def _torch_export(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, input_names: list[str],
                  output_name: str, dynamic: dict[str, dict[int, str]]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(path), input_names=input_names, output_names=[output_name],
            dynamic_axes=dynamic, opset_version=OPSET, dynamo=False, do_constant_folding=True,
        )


def _session(path: Path) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def _graft_categoricals(path: Path, n_numeric: int, categorical: list[tuple[str, list[str]]]) -> None:
    """Replace the float input ``_features`` by numeric + string inputs one-hot encoded in-graph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    old = [i for i in graph.input if i.name == _FEATURES]
    for i in old:
        graph.input.remove(i)
    inputs = []
    nodes = []
    parts = []
    if n_numeric:
        inputs.append(helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", n_numeric]))
        parts.append("input")
    for j, (name, cats) in enumerate(categorical):
        inputs.append(helper.make_tensor_value_info(name, TensorProto.STRING, ["batch", 1]))
        index, rng, eq, onehot = (f"_cat{j}_index", f"_cat{j}_range", f"_cat{j}_eq", f"_cat{j}_onehot")
        nodes.append(helper.make_node(
            "LabelEncoder", [name], [index], domain="ai.onnx.ml",
            keys_strings=[str(c) for c in cats], values_int64s=list(range(len(cats))), default_int64=-1,
        ))
        graph.initializer.append(numpy_helper.from_array(np.arange(len(cats), dtype=np.int64), rng))
        nodes.append(helper.make_node("Equal", [index, rng], [eq]))
        nodes.append(helper.make_node("Cast", [eq], [onehot], to=TensorProto.FLOAT))
        parts.append(onehot)
    nodes.append(helper.make_node("Concat", parts, [_FEATURES], axis=1))
    body = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + body)
    rest = list(graph.input)
    del graph.input[:]
    graph.input.extend(inputs + rest)
    if not any(o.domain == "ai.onnx.ml" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 2))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def export_tabular(
    net: nn.Module,
    architecture: dict[str, Any],
    out_dir: Path,
    *,
    numeric: np.ndarray,
    categorical: dict[str, np.ndarray],
    features: np.ndarray,
    tolerance: float = 1e-4,
) -> Exported:
    """Export a tabular net; check ONNX Runtime against PyTorch on the sample rows.

    ``numeric`` (raw numeric features), ``categorical`` (string columns ``[n, 1]``) and
    ``features`` (the encoded matrix the torch module takes) describe the same sample rows.
    Raises :class:`TrainingFailed` when the outputs differ by more than ``tolerance`` (relative
    to the output scale for regression).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    net = net.eval().cpu()
    module = InferenceModule(net).eval()
    task = architecture["task"]
    out_name = "probabilities" if task == "classification" else "prediction"
    cats = [(c["name"], list(c["categories"])) for c in architecture["inputs"]["categorical"]]
    n_numeric = int(numeric.shape[1])
    in_name = _FEATURES if cats else "input"
    final = out_dir / "model.onnx"
    tmp = _atomic_target(final)
    dummy = torch.zeros(2, int(architecture["n_inputs"]))
    try:
        _torch_export(module, (dummy,), tmp, [in_name], out_name, {in_name: {0: "batch"}, out_name: {0: "batch"}})
        if cats:
            _graft_categoricals(tmp, n_numeric, cats)
        session = _session(tmp)
        feed: dict[str, np.ndarray] = {}
        if not cats:
            feed["input"] = np.ascontiguousarray(numeric, dtype=np.float32)
        else:
            if n_numeric:
                feed["input"] = np.ascontiguousarray(numeric, dtype=np.float32)
            feed.update(categorical)
        got = session.run([out_name], feed)[0]
        with torch.no_grad():
            want = module(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))).numpy()
        diff = float(np.max(np.abs(got - want))) if want.size else 0.0
        scale = 1.0 if task == "classification" else max(1.0, float(np.max(np.abs(want))) if want.size else 1.0)
        if not np.isfinite(diff) or diff > tolerance * scale:
            raise TrainingFailed(
                f"the exported ONNX model disagrees with the PyTorch model (max abs diff {diff:.3g})"
            )
        _finish(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    weights, arch_path = save_torch(net, architecture, out_dir)
    inputs: list[TensorSpec] = []
    if n_numeric:
        inputs.append(TensorSpec("input", "FP32", (-1, n_numeric)))
    inputs.extend(TensorSpec(name, "BYTES", (-1, 1)) for name, _ in cats)
    shape = (-1, int(architecture["n_outputs"])) if task == "classification" else (-1,)
    return Exported(
        onnx_path=final, weights_path=weights, architecture_path=arch_path,
        inputs=tuple(inputs), outputs=(TensorSpec(out_name, "FP32", shape),), max_abs_diff=diff,
    )


def export_text(
    net: nn.Module,
    architecture: dict[str, Any],
    out_dir: Path,
    *,
    tokenizer: Any,
    sample_texts: list[str],
    tolerance: float = 1e-3,
) -> Exported:
    """Export a text classifier to ONNX (+ tokenizer folder); check it on ``sample_texts``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    net = net.eval().cpu()
    module = InferenceModule(net).eval()
    enc = tokenizer(sample_texts, padding=True, truncation=True, max_length=int(architecture["max_length"]),
                    return_tensors="pt")
    ids, mask = enc["input_ids"].to(torch.int64), enc["attention_mask"].to(torch.int64)
    final = out_dir / "model.onnx"
    tmp = _atomic_target(final)
    dyn = {0: "batch", 1: "sequence"}
    try:
        _torch_export(module, (ids, mask), tmp, ["input_ids", "attention_mask"], "probabilities",
                      {"input_ids": dyn, "attention_mask": dyn, "probabilities": {0: "batch"}})
        got = _session(tmp).run(["probabilities"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        with torch.no_grad():
            want = module(ids, mask).numpy()
        diff = float(np.max(np.abs(got - want)))
        if not np.isfinite(diff) or diff > tolerance:
            raise TrainingFailed(
                f"the exported ONNX model disagrees with the PyTorch model (max abs diff {diff:.3g})"
            )
        _finish(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    tok_dir = out_dir / "tokenizer"
    tokenizer.save_pretrained(str(tok_dir))
    weights, arch_path = save_torch(net, architecture, out_dir)
    return Exported(
        onnx_path=final, weights_path=weights, architecture_path=arch_path,
        inputs=(TensorSpec("input_ids", "INT64", (-1, -1)), TensorSpec("attention_mask", "INT64", (-1, -1))),
        outputs=(TensorSpec("probabilities", "FP32", (-1, int(architecture["n_outputs"]))),),
        max_abs_diff=diff, tokenizer_path=tok_dir,
    )
