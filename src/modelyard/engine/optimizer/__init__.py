"""The optimizer: int8 quantization, pruning, fp16 — chained, measured and guarded.

No HTTP, no database. :func:`optimize` takes a :class:`Source` (an ONNX file and, for
platform-trained versions, the PyTorch source), a list of :class:`Step` (:func:`parse_steps`),
an evaluation table and a guard, and returns an :class:`OptimizeResult` whose report compares
both models measured in one run. :func:`compare_models` evaluates and measures several models.
"""

from modelyard.engine.optimizer.evaluate import Evaluation, evaluate_onnx, feed_from_table, metric_drop
from modelyard.engine.optimizer.fp16 import convert_fp16
from modelyard.engine.optimizer.measure import Latency, ModelFacts, measure_latency, measure_many, model_facts
from modelyard.engine.optimizer.pipeline import (
    METHODS,
    OptimizeResult,
    Source,
    Step,
    check_max_metric_drop,
    optimize,
    parse_steps,
)
from modelyard.engine.optimizer.prune import PRUNE_MODES, Pruned, export_pruned, fine_tune, prune_net
from modelyard.engine.optimizer.quantize import is_quantized, quantize_dynamic, quantize_static

__all__ = [
    "METHODS",
    "PRUNE_MODES",
    "Step",
    "Source",
    "OptimizeResult",
    "parse_steps",
    "optimize",
    "check_max_metric_drop",
    "Evaluation",
    "evaluate_onnx",
    "feed_from_table",
    "metric_drop",
    "ModelFacts",
    "Latency",
    "model_facts",
    "measure_latency",
    "measure_many",
    "quantize_dynamic",
    "quantize_static",
    "is_quantized",
    "convert_fp16",
    "Pruned",
    "prune_net",
    "fine_tune",
    "export_pruned",
]
