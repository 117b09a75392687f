"""The contract every runtime satisfies, and the lazy registry of runtimes by artifact format.

A runtime loads one artifact format from a local path and runs inference on numpy arrays. It is
synchronous and thread-safe for concurrent ``predict`` calls; the engine calls it off the event
loop. Heavy libraries (onnxruntime, torch, transformers) are imported only when a runtime of that
format is first loaded.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from modelyard.errors import InvalidArtifact
from modelyard.tensors import TensorSpec

__all__ = [
    "Runtime", "RuntimeOptions", "ArtifactInfo", "load_runtime", "inspect_artifact", "RUNTIME_MODULES",
    "computes_in_caller",
]


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """How a runtime should use the machine: threads per inference call, device."""

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    device: str = "cpu"


@dataclass(frozen=True, slots=True)
class ArtifactInfo:
    """What validating an artifact learned: its signature and format-specific facts."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    extra: dict[str, Any]


@runtime_checkable
class Runtime(Protocol):
    """A loaded model version ready to answer ``predict``."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def predict(
        self, inputs: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run one (possibly batched) inference; returns the requested outputs by name."""
        ...

    def memory_bytes(self) -> int:
        """An estimate of the memory this loaded version holds."""
        ...

    def close(self) -> None:
        """Free what the runtime holds; it is not used afterwards."""
        ...


#: artifact format -> module under ``modelyard.runtimes`` exposing ``load(path, options, metadata)``.
RUNTIME_MODULES: dict[str, str] = {
    "onnx": "modelyard.runtimes.onnx",
    "hf-text-generation": "modelyard.runtimes.hf_artifact",
    "hf-embeddings": "modelyard.runtimes.hf_artifact",
    "hf-text-classification": "modelyard.runtimes.hf_artifact",
    "upstream": "modelyard.runtimes.upstream",
}


def computes_in_caller(runtime: Any) -> bool:
    """Whether ``runtime.predict`` computes in the calling thread. A runtime whose ``predict``
    hands the work to another thread or process and waits for it says so with a true class
    attribute ``waits_elsewhere``; such a ``predict`` is never called on the event loop (it
    would block the loop on a wait, whatever its recent batches took)."""
    return not getattr(runtime, "waits_elsewhere", False)


def _module(fmt: str) -> Any:
    try:
        module_name = RUNTIME_MODULES[fmt]
    except KeyError:
        raise InvalidArtifact(
            f"unknown format {fmt!r}; expected one of {', '.join(sorted(RUNTIME_MODULES))}"
        ) from None
    return importlib.import_module(module_name)


def inspect_artifact(fmt: str, path: Path, metadata: dict[str, Any] | None = None) -> ArtifactInfo:
    """Validate an artifact of ``fmt`` without serving it; ``InvalidArtifact`` when it is bad.

    Each runtime module exposes ``inspect(path, metadata) -> ArtifactInfo``.
    """
    info: ArtifactInfo = _module(fmt).inspect(path, metadata or {})
    return info


def load_runtime(
    fmt: str, path: Path, options: RuntimeOptions, metadata: dict[str, Any] | None = None
) -> Runtime:
    """Load the artifact at ``path`` with the runtime registered for ``fmt``."""
    runtime: Runtime = _module(fmt).load(path, options, metadata or {})
    return runtime
