"""Float16 conversion with ``onnxconverter-common`` (inputs and outputs stay FP32).

Weights and activations become FP16 inside the graph and ``Cast`` nodes at the edges keep the
model's signature unchanged (``keep_io_types=True``), so clients need no change. The file halves;
speed depends on the execution provider: GPUs and CPUs with native FP16 arithmetic gain, while a
plain x86 CPU mostly runs FP16 through conversions and may be slower (the report measures it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelyard.engine.optimizer.quantize import is_quantized
from modelyard.errors import ValidationFailed

__all__ = ["convert_fp16"]


def convert_fp16(src: Path, dst: Path, *, op_block_list: list[str] | None = None) -> Path:
    """Write the FP16 version of ``src`` to ``dst`` (FP32 inputs/outputs); returns ``dst``.

    ``op_block_list`` names op types that must stay FP32 (the converter's default list is used
    when ``None``). Refuses an int8-quantized model with ``ValidationFailed``.
    """
    import onnx
    from onnxconverter_common import float16

    if is_quantized(src):
        raise ValidationFailed("the model is quantized (int8); convert its float source to fp16 instead",
                               details={"field": "method"})
    model = onnx.load(str(src))
    kwargs: dict[str, Any] = {"keep_io_types": True}
    if op_block_list is not None:
        kwargs["op_block_list"] = list(op_block_list)
    converted = float16.convert_float_to_float16(model, **kwargs)
    onnx.save(converted, str(dst))
    return dst
