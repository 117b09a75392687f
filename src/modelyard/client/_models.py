"""``client.models``: the model registry (``/api/v1/models``) from Python.

A *model* is a name inside your tenant; each push adds an immutable, numbered *version*. Stages
are ``none``, ``staging``, ``production`` and ``archived``; the latest ``production`` version is
what ``client.predict(name, ...)`` calls when no version is given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

from modelyard.client._transport import Transport
from modelyard.errors import BadRequest

__all__ = ["Models", "Model", "ModelVersion", "TensorInfo", "ProgressCallback", "STAGES"]

#: The stages a version can be in.
STAGES = ("none", "staging", "production", "archived")

#: ``progress(sent_bytes, total_bytes)``, called after each chunk of an upload is handed over.
ProgressCallback = Callable[[int, int], None]

_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """A named, typed, shaped input or output; ``-1`` marks a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TensorInfo:
        return cls(name=d["name"], datatype=d["datatype"], shape=tuple(int(x) for x in d["shape"]))


@dataclass(frozen=True, slots=True)
class Model:
    """A model: its name, description, tags and which versions are latest and in production."""

    name: str
    description: str
    tags: dict[str, Any]
    latest_version: int | None
    production_version: int | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Model:
        return cls(
            name=d["name"],
            description=d.get("description", ""),
            tags=dict(d.get("tags") or {}),
            latest_version=d.get("latest_version"),
            production_version=d.get("production_version"),
            created_at=_time(d["created_at"]),
            updated_at=_time(d["updated_at"]),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (times as ISO 8601), as the CLI's ``--json`` prints it."""
        out = asdict(self)
        out["created_at"] = self.created_at.isoformat()
        out["updated_at"] = self.updated_at.isoformat()
        return out


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One immutable version of a model: artifact hash and size, signature, stage, metadata."""

    model: str
    version: int
    format: str
    sha256: str
    size_bytes: int
    stage: str
    created_at: datetime
    inputs: tuple[TensorInfo, ...] = ()
    outputs: tuple[TensorInfo, ...] = ()
    description: str = ""
    tags: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelVersion:
        return cls(
            model=d["model"],
            version=int(d["version"]),
            format=d["format"],
            sha256=d["sha256"],
            size_bytes=int(d["size_bytes"]),
            stage=d["stage"],
            created_at=_time(d["created_at"]),
            inputs=tuple(TensorInfo.from_json(t) for t in d.get("inputs", [])),
            outputs=tuple(TensorInfo.from_json(t) for t in d.get("outputs", [])),
            description=d.get("description", ""),
            tags=dict(d.get("tags") or {}),
            metrics=dict(d.get("metrics") or {}),
            lineage=dict(d.get("lineage") or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (times as ISO 8601, shapes as lists)."""
        out = asdict(self)
        out["created_at"] = self.created_at.isoformat()
        out["inputs"] = [{**asdict(t), "shape": list(t.shape)} for t in self.inputs]
        out["outputs"] = [{**asdict(t), "shape": list(t.shape)} for t in self.outputs]
        return out


class Models:
    """The model registry of the caller's tenant. Get it as ``client.models``.

    Example::

        v = client.models.push("digits.onnx", name="digits", stage="production")
        for m in client.models.list():
            print(m.name, m.production_version)
        client.models.promote("digits", 2)
    """

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def list(self, *, page_size: int = 50) -> Iterator[Model]:
        """Every model of the tenant, by name; fetches page after page lazily."""
        for item in self._t.paginate("/api/v1/models", page_size=page_size):
            yield Model.from_json(item)

    def get(self, name: str) -> Model:
        """One model; ``ModelNotFound`` if it does not exist (or is not yours)."""
        return Model.from_json(self._t.get(_model_path(name)))

    def update(
        self, name: str, *, description: str | None = None, tags: dict[str, Any] | None = None
    ) -> Model:
        """Change a model's description and/or tags (``None`` leaves a field as it is)."""
        body = {k: v for k, v in {"description": description, "tags": tags}.items() if v is not None}
        return Model.from_json(self._t.patch(_model_path(name), json=body))

    def delete(self, name: str) -> None:
        """Delete a model and all its versions. Irreversible."""
        self._t.delete(_model_path(name))

    def push(
        self,
        path: str | os.PathLike[str],
        *,
        name: str,
        format: str = "onnx",
        description: str = "",
        stage: str = "none",
        tags: dict[str, Any] | None = None,
        progress: ProgressCallback | None = None,
    ) -> ModelVersion:
        """Upload the artifact at ``path`` as the next version of ``name`` (created if new).

        The file is streamed in 1 MiB chunks, never read whole into memory; ``progress(sent,
        total)`` is called after each chunk. ``stage="production"`` serves it at once (needs a
        role that may promote). The server validates the artifact (``InvalidArtifact`` if it is
        not a loadable ``format``) and refuses uploads over its size limit (``PayloadTooLarge``).
        """
        file = Path(path)
        if not file.is_file():
            raise BadRequest(f"{file} is not a file; pass the path of the artifact to upload")
        if stage not in STAGES:
            raise BadRequest(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
        total = file.stat().st_size
        params: dict[str, Any] = {"format": format, "description": description, "stage": stage}
        if tags:
            import json

            params["tags"] = json.dumps(tags)
        with file.open("rb") as fh:
            response = self._t.request(
                "POST",
                f"{_model_path(name)}/versions",
                params=params,
                content=_chunks(fh, total, progress),
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(total)},
            )
        return ModelVersion.from_json(self._t.json_body(response))

    def versions(self, name: str, *, page_size: int = 50) -> Iterator[ModelVersion]:
        """Every version of ``name``, newest first; pages lazily."""
        for item in self._t.paginate(f"{_model_path(name)}/versions", page_size=page_size):
            yield ModelVersion.from_json(item)

    def get_version(self, name: str, version: int) -> ModelVersion:
        """One version; ``VersionNotFound`` / ``ModelNotFound`` when absent."""
        return ModelVersion.from_json(self._t.get(_version_path(name, version)))

    def update_version(
        self,
        name: str,
        version: int,
        *,
        description: str | None = None,
        tags: dict[str, Any] | None = None,
        stage: str | None = None,
    ) -> ModelVersion:
        """Change a version's description, tags and/or stage (``None`` leaves it as it is)."""
        body = {
            k: v
            for k, v in {"description": description, "tags": tags, "stage": stage}.items()
            if v is not None
        }
        return ModelVersion.from_json(self._t.patch(_version_path(name, version), json=body))

    def promote(self, name: str, version: int, *, stage: str = "production") -> ModelVersion:
        """Move a version to ``stage`` (default ``production``: it becomes the served one)."""
        if stage not in STAGES:
            raise BadRequest(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
        return self.update_version(name, version, stage=stage)

    def delete_version(self, name: str, version: int) -> None:
        """Delete one version. Irreversible."""
        self._t.delete(_version_path(name, version))


def _model_path(name: str) -> str:
    return f"/api/v1/models/{quote(name, safe='')}"


def _version_path(name: str, version: int) -> str:
    return f"{_model_path(name)}/versions/{int(version)}"


def _chunks(fh: BinaryIO, total: int, progress: ProgressCallback | None) -> Iterator[bytes]:
    sent = 0
    while chunk := fh.read(_CHUNK):
        yield chunk
        sent += len(chunk)
        if progress is not None:
            progress(sent, total)


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)
