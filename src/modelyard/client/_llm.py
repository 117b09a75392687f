"""``client.llm``: language and embedding models from Python.

Push a Hugging Face model folder (or a ready ``.tar``/``.tar.gz``/``.zip`` of one), register an
OpenAI-compatible engine (vLLM, Ollama, TGI, another ModelYard) as an *upstream* version, and make
simple non-streaming calls. For streaming and the full OpenAI surface, point the official
``openai`` package at :attr:`LanguageModels.openai_base_url` with your ModelYard key::

    from openai import OpenAI
    oa = OpenAI(base_url=client.llm.openai_base_url, api_key=os.environ["MODELYARD_API_KEY"])
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

from modelyard.client._models import STAGES, ModelVersion, ProgressCallback, _chunks
from modelyard.client._transport import Transport
from modelyard.errors import BadRequest

__all__ = ["LanguageModels", "ARCHIVE_SUFFIXES", "TASKS"]

#: file names the server accepts as model archives
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")

#: what a Hugging Face model version can be served for
TASKS = ("text-generation", "embeddings", "text-classification")


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


class LanguageModels:
    """Hugging Face versions, upstream engines and OpenAI-style calls through one transport."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    @property
    def openai_base_url(self) -> str:
        """The base URL for the ``openai`` package: ``<server>/v1``."""
        return f"{self._t.url}/v1"

    # -- registering -----------------------------------------------------------------------
    def push_hf(
        self,
        path: str | os.PathLike[str],
        *,
        name: str,
        task: str | None = None,
        description: str = "",
        stage: str = "none",
        progress: ProgressCallback | None = None,
    ) -> ModelVersion:
        """Upload a Hugging Face model (a folder, packed here as .tar.gz, or an archive) as the
        next version of ``name``. ``task`` defaults to what ``config.json`` says. The server
        refuses pickle weights and remote code (``UnsafeContent``)."""
        source = Path(path)
        if task is not None and task not in TASKS:
            raise BadRequest(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        if stage not in STAGES:
            raise BadRequest(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
        if source.is_dir():
            with tempfile.TemporaryDirectory(prefix="modelyard-push-") as tmp:
                archive = Path(tmp) / f"{source.name or 'model'}.tar.gz"
                with tarfile.open(archive, "w:gz") as tar:
                    for item in sorted(source.rglob("*")):
                        if item.is_symlink():
                            raise BadRequest(f"{item} is a symbolic link; copy the file instead")
                        tar.add(item, arcname=str(item.relative_to(source)), recursive=False)
                return self._upload(archive, name, task, description, stage, progress)
        if not _is_archive(source):
            raise BadRequest(f"{source} is neither a folder nor a {', '.join(ARCHIVE_SUFFIXES)} archive")
        return self._upload(source, name, task, description, stage, progress)

    def _upload(
        self, file: Path, name: str, task: str | None, description: str, stage: str,
        progress: ProgressCallback | None,
    ) -> ModelVersion:
        total = file.stat().st_size
        params = {"format": "hf", "task": task, "description": description, "stage": stage}
        with file.open("rb") as fh:
            response = self._t.request(
                "POST", f"/api/v1/models/{quote(name, safe='')}/versions", params=params,
                content=_chunks(fh, total, progress),
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(total)},
            )
        return ModelVersion.from_json(self._t.json_body(response))

    def add_upstream(
        self,
        name: str,
        *,
        base_url: str,
        upstream_model: str,
        api_key: str | None = None,
        description: str = "",
        stage: str = "none",
    ) -> ModelVersion:
        """Register an OpenAI-compatible engine at ``base_url`` (e.g. ``http://127.0.0.1:8001/v1``)
        as the next version of ``name``. Its host must be on the server's allow-list; ``api_key``
        stays on the server and is never returned."""
        body = {"base_url": base_url, "upstream_model": upstream_model, "api_key": api_key,
                "description": description, "stage": stage}
        result = self._t.post(f"/api/v1/models/{quote(name, safe='')}/upstream",
                              json={k: v for k, v in body.items() if v is not None})
        return ModelVersion.from_json(result)

    # -- calling ---------------------------------------------------------------------------
    def models(self) -> list[str]:
        """The model ids ``/v1`` serves to this key (the built-in embedding model included)."""
        return [m["id"] for m in self._t.get("/v1/models")["data"]]

    def chat(self, model: str, messages: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
        """One chat completion (OpenAI's response as a dict); ``options`` are OpenAI's
        (``max_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``, ``n``)."""
        result: dict[str, Any] = self._t.post(
            "/v1/chat/completions", json={"model": model, "messages": messages, **options, "stream": False})
        return result

    def complete(self, model: str, prompt: str, **options: Any) -> dict[str, Any]:
        """One text completion (OpenAI's response as a dict)."""
        result: dict[str, Any] = self._t.post(
            "/v1/completions", json={"model": model, "prompt": prompt, **options, "stream": False})
        return result

    def embed(self, model: str, texts: str | list[str], *, dimensions: int | None = None) -> list[list[float]]:
        """Unit-length embedding vectors of ``texts``, in order."""
        body: dict[str, Any] = {"model": model, "input": texts, "encoding_format": "float"}
        if dimensions is not None:
            body["dimensions"] = dimensions
        data = self._t.post("/v1/embeddings", json=body)["data"]
        return [d["embedding"] for d in sorted(data, key=lambda d: d["index"])]
