"""Epoch checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a plain mapping of tensors and JSON-like values: model and optimizer state, the
RNG states (torch, numpy, Python ``random``) of every worker, the number of completed epochs, the
curves so far, the early-stopping state (best weights, best validation loss, epochs without
improvement), and a fingerprint of the spec and the data so a checkpoint is only resumed by the
run that wrote it. It is written to a temporary file in the same folder, fsynced and moved into
place with ``os.replace``: a crash leaves either the previous checkpoint or the new one.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelyard.engine.trainer.errors import TrainingFailed

__all__ = ["CHECKPOINT_NAME", "save_checkpoint", "load_checkpoint", "capture_rng", "restore_rng"]

CHECKPOINT_NAME = "checkpoint.pt"
_TMP_PREFIX = ".checkpoint-"


def capture_rng() -> dict[str, Any]:
    """The global RNG states of torch, numpy and ``random`` as tensors and numbers."""
    _, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
        "numpy_pos": int(pos),
        "numpy_has_gauss": int(has_gauss),
        "numpy_gauss": float(cached),
        "python_version": int(py_version),
        "python_state": torch.tensor(py_state, dtype=torch.int64),
        "python_gauss": None if py_gauss is None else float(py_gauss),
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the states captured by :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            int(state["numpy_pos"]),
            int(state["numpy_has_gauss"]),
            float(state["numpy_gauss"]),
        )
    )
    random.setstate(
        (int(state["python_version"]), tuple(int(v) for v in state["python_state"].tolist()), state["python_gauss"])
    )


def save_checkpoint(workdir: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``workdir/checkpoint.pt`` atomically (temp file, fsync, os.replace)."""
    workdir.mkdir(parents=True, exist_ok=True)
    final = workdir / CHECKPOINT_NAME
    fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".tmp", dir=workdir)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, final)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(workdir)
    return final


def load_checkpoint(workdir: Path) -> dict[str, Any] | None:
    """The checkpoint in ``workdir``, or ``None``; leftovers of interrupted writes are removed."""
    for leftover in workdir.glob(f"{_TMP_PREFIX}*.tmp"):
        leftover.unlink(missing_ok=True)
    path = workdir / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a corrupt file
        raise TrainingFailed(f"the checkpoint in the job folder is unreadable: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != 1:
        raise TrainingFailed("the checkpoint in the job folder has an unknown format")
    return state


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # some filesystems cannot fsync a folder
            os.fsync(fd)
    finally:
        os.close(fd)
