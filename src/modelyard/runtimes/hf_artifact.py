"""Hugging Face model versions stored as archives: the ``hf-*`` formats' ``inspect`` and ``load``.

A model version of format ``hf-text-generation``, ``hf-embeddings`` or ``hf-text-classification``
is stored as the uploaded ``.tar``, ``.tar.gz`` or ``.zip`` archive (content-addressed by the
archive's sha256). The serving side extracts it once into a cache folder keyed by that hash
(:class:`modelyard.core.llm.LanguageModels`) and loads the folder, so :func:`load` accepts a
folder; :func:`inspect` accepts either the archive (extracted safely into a temporary folder
that is always removed) or a folder.

The task comes from the version's metadata ``task`` (set at upload, where it is checked against
the format), else from the folder's ``config.json``.
"""

from __future__ import annotations

import importlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

from modelyard.errors import InvalidArtifact
from modelyard.runtimes.base import ArtifactInfo, Runtime, RuntimeOptions
from modelyard.runtimes.hf import HFModelInfo, inspect_model_folder, model_root
from modelyard.store.archives import extract_archive
from modelyard.tensors import TensorSpec

__all__ = ["inspect", "load", "inspect_archive", "describe", "TASK_MODULES", "MAX_FILES"]

#: the most members an uploaded model archive may hold
MAX_FILES = 10_000

#: task -> runtime module with ``load(path, options, metadata)``
TASK_MODULES = {
    "text-generation": "modelyard.runtimes.text_generation",
    "embeddings": "modelyard.runtimes.embeddings",
    "text-classification": "modelyard.runtimes.text_classification",
}


def _task(metadata: dict[str, Any]) -> str | None:
    task = metadata.get("task")
    if task is not None and task not in TASK_MODULES:
        raise InvalidArtifact(f"unknown task {task!r}; expected one of {', '.join(TASK_MODULES)}")
    return task


def describe(info: HFModelInfo) -> ArtifactInfo:
    """The signature a Hugging Face folder of ``info.task`` gets (OIP v2 view of it)."""
    text = [TensorSpec("text", "BYTES", (-1,))]
    if info.task == "text-generation":
        inputs = [*text, TensorSpec("max_tokens", "INT32", (1,)), TensorSpec("temperature", "FP32", (1,))]
        outputs = [TensorSpec("text_output", "BYTES", (-1,))]
    elif info.task == "embeddings":
        inputs, outputs = text, [TensorSpec("embedding", "FP32", (-1, info.hidden_size or -1))]
    else:
        inputs = text
        outputs = [
            TensorSpec("label", "BYTES", (-1,)),
            TensorSpec("score", "FP32", (-1,)),
            TensorSpec("scores", "FP32", (-1, len(info.labels) or -1)),
        ]
    return ArtifactInfo(inputs=inputs, outputs=outputs, extra=info.to_metadata())


def inspect_archive(path: Path, *, task: str | None, max_bytes: int) -> HFModelInfo:
    """Extract the archive at ``path`` into a temporary folder, inspect it, remove the folder."""
    tmp = Path(tempfile.mkdtemp(prefix=".hf-inspect-", dir=Path(path).parent))
    try:
        extract_archive(Path(path), tmp / "model", max_bytes=max_bytes, max_files=MAX_FILES)
        return inspect_model_folder(model_root(tmp / "model"), task=task)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def inspect(path: Path, metadata: dict[str, Any]) -> ArtifactInfo:
    """Validate a Hugging Face archive or folder (safe extraction, no pickle, no remote code)."""
    task = _task(metadata)
    path = Path(path)
    if path.is_dir():
        info = inspect_model_folder(model_root(path), task=task)
    else:
        limit = int(metadata.get("max_extracted_bytes", 64 * 1024**3))
        info = inspect_archive(path, task=task, max_bytes=limit)
    return describe(info)


def load(path: Path, options: RuntimeOptions, metadata: dict[str, Any]) -> Runtime:
    """Load the extracted folder ``path`` with the runtime of its task."""
    path = Path(path)
    if not path.is_dir():
        raise InvalidArtifact("a Hugging Face version is loaded from its extracted folder")
    task = _task(metadata) or inspect_model_folder(model_root(path)).task
    module = importlib.import_module(TASK_MODULES[task])
    runtime: Runtime = module.load(path, options, metadata)
    return runtime
