"""What an optimization changes, measured: file size, parameters, sparsity, latency, throughput.

:func:`model_facts` reads an ONNX file's initializers (weights of any dtype count as parameters;
a zero counts towards sparsity). :func:`measure_latency` times in-process ONNX Runtime calls at
given batch sizes; :func:`measure_many` times several models *interleaved* in one run so that the
machine's state (frequency, caches, neighbours) affects them alike and ratios are fair.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ModelFacts", "Latency", "model_facts", "session", "measure_latency", "measure_many", "DEFAULT_BATCHES"]

DEFAULT_BATCHES = (1, 32)


@dataclass(frozen=True)
class ModelFacts:
    """Size facts of one ONNX file; ``sparsity`` is the share of zero weights (0..1)."""

    file_bytes: int
    parameters: int
    nonzero_parameters: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero_parameters / self.parameters if self.parameters else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "file_bytes": self.file_bytes,
            "parameters": self.parameters,
            "nonzero_parameters": self.nonzero_parameters,
            "sparsity": round(self.sparsity, 6),
        }


@dataclass(frozen=True)
class Latency:
    """Timings of one model at one batch size (milliseconds per call; rows per second)."""

    batch: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float
    iterations: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "p50_ms": round(self.p50_ms, 4),
            "p99_ms": round(self.p99_ms, 4),
            "mean_ms": round(self.mean_ms, 4),
            "throughput": round(self.throughput, 2),
            "iterations": self.iterations,
        }


def model_facts(path: Path) -> ModelFacts:
    """Count the initializer elements (parameters) and the non-zero ones of an ONNX file.

    Quantization scales and zero points are counted too (they are few); constants that are
    shape helpers (int64) are not weights and are skipped.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    total = nonzero = 0
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.INT64:
            continue
        arr = numpy_helper.to_array(init)
        total += int(arr.size)
        nonzero += int(np.count_nonzero(arr))
    return ModelFacts(file_bytes=Path(path).stat().st_size, parameters=total, nonzero_parameters=nonzero)


def session(path: Path, *, threads: int = 1) -> Any:
    """A CPU ``InferenceSession`` tuned like the serving runtime (sequential, all graph opts)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def _batch(feed: Mapping[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    out = {}
    for name, arr in feed.items():
        n = arr.shape[0]
        reps = -(-size // n)
        out[name] = np.ascontiguousarray(np.concatenate([arr] * reps)[:size]) if reps > 1 else np.ascontiguousarray(arr[:size])
    return out


def _summarise(batch: int, times: list[float]) -> Latency:
    a = np.asarray(times, dtype=np.float64) * 1000.0
    mean = float(a.mean())
    return Latency(
        batch=batch, p50_ms=float(np.percentile(a, 50)), p99_ms=float(np.percentile(a, 99)), mean_ms=mean,
        throughput=batch / (mean / 1000.0) if mean > 0 else 0.0, iterations=len(times),
    )


def measure_many(
    paths: Mapping[str, Path],
    feed: Mapping[str, np.ndarray],
    *,
    batches: tuple[int, ...] = DEFAULT_BATCHES,
    iterations: int = 200,
    warmup: int = 10,
    threads: int = 1,
    budget_s: float | None = None,
) -> dict[str, list[Latency]]:
    """Time every model at every batch size, interleaving the models call by call.

    ``feed`` holds sample rows for each input (repeated to fill a batch). ``budget_s`` caps the
    wall time spent per batch size (fewer iterations for slow models; at least 5 each).
    Returns ``{key: [Latency per batch size]}``.
    """
    sessions = {k: session(p, threads=threads) for k, p in paths.items()}
    out: dict[str, list[Latency]] = {k: [] for k in paths}
    for size in batches:
        data = _batch(feed, size)
        for s in sessions.values():
            for _ in range(warmup):
                s.run(None, data)
        times: dict[str, list[float]] = {k: [] for k in sessions}
        start = time.perf_counter()
        for i in range(iterations):
            for key, s in sessions.items():
                t0 = time.perf_counter()
                s.run(None, data)
                times[key].append(time.perf_counter() - t0)
            if budget_s is not None and i >= 4 and time.perf_counter() - start > budget_s:
                break
        for key in sessions:
            out[key].append(_summarise(size, times[key]))
    return out


def measure_latency(
    path: Path, feed: Mapping[str, np.ndarray], *, batches: tuple[int, ...] = DEFAULT_BATCHES,
    iterations: int = 200, threads: int = 1, budget_s: float | None = None,
) -> list[Latency]:
    """Latency and throughput of one model at each batch size (see :func:`measure_many`)."""
    return measure_many({"model": path}, feed, batches=batches, iterations=iterations, threads=threads,
                        budget_s=budget_s)["model"]
