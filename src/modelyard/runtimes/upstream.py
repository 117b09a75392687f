"""Format ``upstream``: an external OpenAI-compatible engine (vLLM, Ollama, TGI, another
ModelYard) registered as a model version.

The artifact is a small JSON document — never the upstream's API key, which the server keeps
apart (:mod:`modelyard.core.llm`)::

    {"kind": "openai-upstream", "base_url": "http://127.0.0.1:8000/v1",
     "upstream_model": "gpt2", "secret_ref": "…"}

Requests reach it through the OpenAI routes, which forward them; over OIP v2 it has no tensors
to offer, so :meth:`UpstreamRuntime.predict` refuses with a message saying where to go.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from modelyard.errors import InvalidArtifact, InvalidInput
from modelyard.runtimes.base import ArtifactInfo, RuntimeOptions

__all__ = ["UpstreamConfig", "UpstreamRuntime", "inspect", "load", "KIND"]

KIND = "openai-upstream"


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamConfig:
    """Where an upstream lives and which of its models to call; ``secret_ref`` names its key."""

    base_url: str
    upstream_model: str
    secret_ref: str | None = None

    @property
    def host(self) -> str:
        return (urlsplit(self.base_url).hostname or "").lower()

    def to_json(self) -> bytes:
        data = {"kind": KIND, "base_url": self.base_url, "upstream_model": self.upstream_model,
                "secret_ref": self.secret_ref}
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def parse(cls, data: Any) -> UpstreamConfig:
        """Check a decoded config (``InvalidArtifact`` when it is not one)."""
        if not isinstance(data, dict) or data.get("kind") != KIND:
            raise InvalidArtifact(f"an upstream artifact is a JSON object with kind {KIND!r}")
        base_url, model = data.get("base_url"), data.get("upstream_model")
        if not isinstance(base_url, str) or not isinstance(model, str) or not model:
            raise InvalidArtifact("an upstream artifact needs base_url and upstream_model strings")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidArtifact(f"base_url must be an http(s) URL, got {base_url!r}")
        if parts.username or parts.password:
            raise InvalidArtifact("base_url must not carry credentials; give api_key instead")
        if "api_key" in data:
            raise InvalidArtifact("an upstream artifact must not hold the API key")
        ref = data.get("secret_ref")
        return cls(base_url=base_url.rstrip("/"), upstream_model=model,
                   secret_ref=ref if isinstance(ref, str) else None)

    @classmethod
    def read(cls, path: Path) -> UpstreamConfig:
        try:
            raw = Path(path).read_bytes()
            if len(raw) > 64 * 1024:
                raise InvalidArtifact("an upstream artifact is a small JSON document (64 KiB at most)")
            return cls.parse(json.loads(raw))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidArtifact(f"the upstream artifact is not JSON: {exc}") from exc


class UpstreamRuntime:
    """The loaded form of an upstream version: its config (the forwarding lives in the core)."""

    inputs: list[Any] = []
    outputs: list[Any] = []

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config

    def predict(
        self, inputs: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        raise InvalidInput(
            "this version forwards to an OpenAI-compatible engine; call it through /v1 "
            "(chat/completions, completions or embeddings)"
        )

    def memory_bytes(self) -> int:
        return 0

    def close(self) -> None:
        return None


def inspect(path: Path, metadata: dict[str, Any]) -> ArtifactInfo:
    config = UpstreamConfig.read(path)
    return ArtifactInfo(inputs=[], outputs=[], extra={"base_url": config.base_url,
                                                      "upstream_model": config.upstream_model})


def load(path: Path, options: RuntimeOptions, metadata: dict[str, Any]) -> UpstreamRuntime:
    return UpstreamRuntime(UpstreamConfig.read(path))
