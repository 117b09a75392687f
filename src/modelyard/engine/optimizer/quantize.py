"""Int8 quantization with ONNX Runtime's quantization tool.

* :func:`quantize_dynamic`: int8 weights, activations quantized on the fly per call
  (``MatMulInteger``/``DynamicQuantizeLinear``). Needs no data.
* :func:`quantize_static`: int8 weights and activations whose ranges are calibrated on sample
  rows (``CalibrationDataReader``), per-channel weight scales where the op supports it.

Both refuse a model that is already quantized (:func:`is_quantized`) with ``ValidationFailed``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.errors import ValidationFailed

__all__ = ["QUANTIZED_OPS", "is_quantized", "quantize_dynamic", "quantize_static", "FeedReader"]

#: Op types whose presence means a graph is already quantized.
QUANTIZED_OPS = frozenset({
    "DynamicQuantizeLinear", "QLinearMatMul", "MatMulInteger", "QuantizeLinear", "DequantizeLinear",
    "QLinearConv", "ConvInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
})


def is_quantized(path: Path) -> bool:
    """Whether the ONNX graph already holds quantization ops."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(n.op_type in QUANTIZED_OPS for n in model.graph.node)


def _refuse_quantized(path: Path) -> None:
    if is_quantized(path):
        raise ValidationFailed(
            "the model is already quantized (int8); quantize its float source version instead",
            details={"field": "method"},
        )


def _quiet() -> None:
    # The tool logs a "consider pre-processing" warning through the root logger on every call.
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))


def quantize_dynamic(
    src: Path, dst: Path, *, per_channel: bool = False, reduce_range: bool = False, keep_first_layer: bool = False
) -> Path:
    """Write the dynamically int8-quantized ``src`` to ``dst``; returns ``dst``.

    ``keep_first_layer`` leaves the first matrix product in fp32: dynamic quantization gives the
    activations one scale per tensor, and raw standardised features with a few extreme columns
    (near-constant pixels, say) lose most of their resolution in the first layer.
    """
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    _refuse_quantized(src)
    _quiet()
    exclude = _first_matmul(src) if keep_first_layer else []
    ort_quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                         reduce_range=reduce_range, nodes_to_exclude=exclude)
    return dst


def _first_matmul(path: Path) -> list[str]:
    """The name of the graph's first MatMul/Gemm node (in topological order), if any."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and node.name:
            # ONNX Runtime's quantizer first splits a Gemm into ``<name>_MatMul`` + ``<name>_Add``.
            return [node.name, f"{node.name}_MatMul"] if node.op_type == "Gemm" else [node.name]
    return []


class FeedReader:
    """A ``CalibrationDataReader`` over sample rows: one row-batch of every input per call
    (a last partial batch is left out)."""

    def __init__(self, feed: Mapping[str, np.ndarray], *, batch: int = 1) -> None:
        self._feed = dict(feed)
        self._n = next(iter(self._feed.values())).shape[0] if self._feed else 0
        self._batch = max(1, batch)
        self._it: Iterator[dict[str, np.ndarray]] = self._rows()

    def _rows(self) -> Iterator[dict[str, np.ndarray]]:
        # Equal-sized batches only: the histogram calibrators stack per-batch outputs.
        batch = min(self._batch, self._n)
        stop = self._n - self._n % batch if batch else 0
        for start in range(0, stop, batch):
            yield {k: v[start : start + batch] for k, v in self._feed.items()}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._rows()


def quantize_static(
    src: Path, dst: Path, *, calibration: Mapping[str, np.ndarray], samples: int = 256,
    per_channel: bool = True, method: str = "minmax", fmt: str = "qdq",
) -> Path:
    """Write ``src`` quantized with calibrated activation ranges to ``dst``; returns ``dst``.

    ``calibration`` holds input arrays (rows first); the first ``samples`` rows are used.
    ``method``: ``minmax`` | ``entropy`` | ``percentile``; ``fmt``: ``qdq`` | ``qoperator``.
    Inputs that are not float (e.g. strings) are not quantized.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    _refuse_quantized(src)
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    formats = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
    if method not in methods:
        raise ValidationFailed(f"unknown calibration method {method!r}; expected one of {', '.join(methods)}",
                               details={"field": "options.calibration_method"})
    if fmt not in formats:
        raise ValidationFailed(f"unknown quantization format {fmt!r}; expected one of {', '.join(formats)}",
                               details={"field": "options.format"})
    if not calibration or next(iter(calibration.values())).shape[0] == 0:
        raise ValidationFailed("static quantization needs calibration rows", details={"field": "calibration_dataset"})
    feed = {k: v[:samples] for k, v in calibration.items()}
    _quiet()
    extra: dict[str, Any] = {"ActivationSymmetric": False, "WeightSymmetric": True}
    ort_quantize_static(
        str(src), str(dst), FeedReader(feed, batch=16), quant_format=formats[fmt], per_channel=per_channel,
        activation_type=QuantType.QUInt8 if fmt == "qoperator" else QuantType.QInt8,
        weight_type=QuantType.QInt8, calibrate_method=methods[method], extra_options=extra,
    )
    return dst
