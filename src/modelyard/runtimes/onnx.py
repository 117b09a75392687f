"""ONNX Runtime: loads a validated ``.onnx`` file and runs it on the CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from modelyard.errors import InvalidArtifact, InvalidInput
from modelyard.runtimes.base import ArtifactInfo, RuntimeOptions
from modelyard.tensors import TensorSpec

__all__ = ["OnnxRuntime", "load", "inspect", "ONNX_TO_DATATYPE"]

ONNX_TO_DATATYPE: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def _spec(arg: Any) -> TensorSpec:
    datatype = ONNX_TO_DATATYPE.get(arg.type)
    if datatype is None:
        raise InvalidArtifact(f"tensor {arg.name!r} has unsupported type {arg.type}")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return TensorSpec(arg.name, datatype, shape)


class OnnxRuntime:
    """One ``InferenceSession``; ``predict`` is thread-safe (ONNX Runtime's ``run`` is)."""

    def __init__(self, path: Path, options: RuntimeOptions) -> None:
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, options.intra_op_threads)
        so.inter_op_num_threads = max(1, options.inter_op_threads)
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=so, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise InvalidArtifact(f"ONNX Runtime cannot load the model: {exc}") from exc
        self.inputs = [_spec(a) for a in self._session.get_inputs()]
        self.outputs = [_spec(a) for a in self._session.get_outputs()]
        self._size = path.stat().st_size

    def predict(
        self, inputs: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        names = output_names or [o.name for o in self.outputs]
        feed = {}
        for spec in self.inputs:
            value = inputs[spec.name]
            if spec.datatype == "BYTES":
                try:
                    value = np.array(
                        [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in value.ravel()],
                        dtype=object,
                    ).reshape(value.shape)
                except UnicodeDecodeError:  # ONNX strings are UTF-8; a caller's bytes may not be
                    raise InvalidInput(
                        f"input {spec.name!r}: ONNX string tensors take UTF-8 text; an element is not valid UTF-8"
                    ) from None
            feed[spec.name] = value
        try:
            results = self._session.run(names, feed)
        except Exception as exc:  # shape/value problems detected inside the graph
            raise InvalidInput(f"the model rejected the input: {exc}") from exc
        return dict(zip(names, results))

    def memory_bytes(self) -> int:
        # The weights dominate; ONNX Runtime keeps roughly one copy plus arenas.
        return 2 * self._size

    def close(self) -> None:
        del self._session


def load(path: Path, options: RuntimeOptions, metadata: dict[str, Any]) -> OnnxRuntime:
    return OnnxRuntime(path, options)


_ELEM_TO_DATATYPE = {
    1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64",
    8: "BYTES", 9: "BOOL", 10: "FP16", 11: "FP64", 12: "UINT32", 13: "UINT64",
}


def _graph_spec(value_info: Any) -> TensorSpec:
    ttype = value_info.type.tensor_type
    datatype = _ELEM_TO_DATATYPE.get(ttype.elem_type)
    if datatype is None:
        raise InvalidArtifact(f"tensor {value_info.name!r} has an unsupported element type")
    dims = tuple(
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in ttype.shape.dim
    )
    return TensorSpec(value_info.name, datatype, dims)


def inspect(path: Path, metadata: dict[str, Any]) -> ArtifactInfo:
    """Check the file with the ``onnx`` checker and read its signature from the graph.

    External data is refused unless it lies beside the model inside the version's own folder;
    uploads are single files, so any external reference is refused here.
    """
    import onnx
    from onnx.external_data_helper import uses_external_data

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise InvalidArtifact(f"not a valid ONNX file: {exc.__class__.__name__}") from exc
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            raise InvalidArtifact(
                "the ONNX file refers to external data; export it as a single file "
                "(torch.onnx.export(..., external_data=False))"
            )
    try:
        onnx.checker.check_model(model, full_check=False)
    except Exception as exc:
        raise InvalidArtifact(f"the ONNX checker refused the model: {exc}") from exc
    initializers = {t.name for t in model.graph.initializer}
    inputs = [_graph_spec(v) for v in model.graph.input if v.name not in initializers]
    outputs = [_graph_spec(v) for v in model.graph.output]
    if not inputs or not outputs:
        raise InvalidArtifact("the ONNX graph has no inputs or no outputs")
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    quantized = any(n.op_type in ("DynamicQuantizeLinear", "QLinearMatMul", "MatMulInteger", "QuantizeLinear") for n in model.graph.node)
    return ArtifactInfo(inputs, outputs, {"opsets": opsets, "quantized": quantized})
