"""Runtime for format ``hf-embeddings``: sentence embeddings from an encoder, as
sentence-transformers computes them.

Pooling follows the folder's ``1_Pooling/config.json`` when it is a sentence-transformers folder
(mean, CLS or max), else mean pooling over the attention mask; vectors are always L2-normalised.
Texts longer than ``max_seq_length`` (``sentence_bert_config.json``, else the model's context)
are truncated, as sentence-transformers does. ``dimensions`` keeps the first ``d`` components
and normalises again (the OpenAI ``dimensions`` parameter for Matryoshka-style models).

OIP v2: BYTES input ``text`` ``[N]`` -> FP32 output ``embedding`` ``[N, D]``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.errors import InvalidArtifact, InvalidInput
from modelyard.runtimes.base import RuntimeOptions
from modelyard.runtimes.hf import (
    HFModelInfo,
    inspect_for_task,
    load_model,
    load_tokenizer,
    model_root,
    pick_device,
    text_array,
)
from modelyard.tensors import TensorSpec

__all__ = ["Embeddings", "EmbeddingsRuntime", "load", "check_texts"]

_BATCH = 32


@dataclass(frozen=True, slots=True)
class Embeddings:
    """Unit-length vectors ``[N, D]`` (float32) and the token count of each input."""

    vectors: np.ndarray
    token_counts: list[int]

    @property
    def total_tokens(self) -> int:
        return sum(self.token_counts)


def check_texts(texts: Any, param: str = "input") -> list[str]:
    """A non-empty list of non-empty strings, else ``InvalidInput`` naming ``param``."""
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
        raise InvalidInput(f"{param} must be a non-empty list of strings", details={"param": param})
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t:
            raise InvalidInput(
                f"{param}[{i}] must be a non-empty string", details={"param": f"{param}[{i}]"}
            )
    return list(texts)


def _pooling_mode(root: Path) -> str:
    path = root / "1_Pooling" / "config.json"
    if not path.is_file():
        return "mean"
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("pooling_mode_mean_tokens"):
        return "mean"
    if config.get("pooling_mode_cls_token"):
        return "cls"
    if config.get("pooling_mode_max_tokens"):
        return "max"
    raise InvalidArtifact("unsupported sentence-transformers pooling (use mean, cls or max)")


class EmbeddingsRuntime:
    """A loaded encoder; ``embed`` and ``predict`` are thread-safe."""

    inputs = [TensorSpec("text", "BYTES", (-1,))]

    def __init__(self, *, path: Path, info: HFModelInfo, options: RuntimeOptions) -> None:
        import torch

        self.info = info
        self.device, dtype = pick_device(options.device)
        self.tokenizer = load_tokenizer(path)
        self.model = load_model(path, "embeddings", device=self.device, dtype=dtype)
        self.pooling = _pooling_mode(path)
        self.max_seq_length = int(info.max_context or 512)
        self.dimensions = int(self.model.config.hidden_size)
        self.outputs = [TensorSpec("embedding", "FP32", (-1, self.dimensions))]
        self._weights_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        self._torch = torch

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text uses (after truncation to ``max_seq_length``, special tokens included)."""
        enc = self.tokenizer(
            list(texts), truncation=True, max_length=self.max_seq_length, add_special_tokens=True
        )
        return [len(ids) for ids in enc["input_ids"]]

    def encode(self, texts: Sequence[str], dimensions: int | None = None) -> Embeddings:
        """Embeddings and token counts for ``texts`` (``InvalidInput`` for empty input or a bad
        ``dimensions``)."""
        texts = check_texts(texts)
        if dimensions is not None and not (
            isinstance(dimensions, int) and 1 <= dimensions <= self.dimensions
        ):
            raise InvalidInput(
                f"dimensions must be between 1 and {self.dimensions}, got {dimensions!r}",
                details={"param": "dimensions"},
            )
        torch = self._torch
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        counts = [0] * len(texts)
        with torch.inference_mode():
            for start in range(0, len(order), _BATCH):
                idx = order[start : start + _BATCH]
                enc = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_seq_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**enc).last_hidden_state.float()
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                if self.pooling == "cls":
                    pooled = hidden[:, 0]
                elif self.pooling == "max":
                    pooled = hidden.masked_fill(mask == 0, -1e9).max(dim=1).values
                else:
                    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                vectors[idx] = pooled.cpu().numpy()
                for row, i in enumerate(idx):
                    counts[i] = int(enc["attention_mask"][row].sum().item())
        if dimensions is not None and dimensions < self.dimensions:
            vectors = vectors[:, :dimensions]
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return Embeddings(vectors=np.ascontiguousarray(vectors, dtype=np.float32), token_counts=counts)

    def embed(self, texts: Sequence[str], dimensions: int | None = None) -> np.ndarray:
        """Unit-length float32 vectors ``[len(texts), dimensions or D]``."""
        return self.encode(texts, dimensions).vectors

    def predict(
        self, inputs: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        return {"embedding": self.embed(text_array(inputs))}

    def memory_bytes(self) -> int:
        return int(self._weights_bytes * 1.2)

    def close(self) -> None:
        del self.model


def load(path: Path, options: RuntimeOptions, metadata: dict[str, Any]) -> EmbeddingsRuntime:
    root = model_root(Path(path))
    info = inspect_for_task(root, "embeddings", metadata)
    return EmbeddingsRuntime(path=root, info=info, options=options)
