"""Runtime for format ``hf-text-classification``: a sequence classifier with named labels.

Scores are the softmax over the classes (a sigmoid per class when the config says
``problem_type: multi_label_classification``); ``label`` is the best class.

OIP v2: BYTES input ``text`` ``[N]`` -> BYTES ``label`` ``[N]``, FP32 ``score`` ``[N]`` and
FP32 ``scores`` ``[N, C]`` (classes in ``labels`` order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.runtimes.base import RuntimeOptions
from modelyard.runtimes.embeddings import check_texts
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

__all__ = ["Classification", "TextClassificationRuntime", "load"]

_BATCH = 32


@dataclass(frozen=True, slots=True)
class Classification:
    """The best ``label`` and its ``score``, and the score of every label."""

    label: str
    score: float
    scores: dict[str, float]


class TextClassificationRuntime:
    """A loaded sequence classifier; ``classify`` and ``predict`` are thread-safe."""

    inputs = [TensorSpec("text", "BYTES", (-1,))]

    def __init__(self, *, path: Path, info: HFModelInfo, options: RuntimeOptions) -> None:
        import torch

        self.info = info
        self.device, dtype = pick_device(options.device)
        self.tokenizer = load_tokenizer(path)
        self.model = load_model(path, "text-classification", device=self.device, dtype=dtype)
        config = self.model.config
        self.labels = [str(config.id2label[i]) for i in range(config.num_labels)]
        self.multi_label = config.problem_type == "multi_label_classification"
        self.max_length = int(info.max_context or 512)
        self.outputs = [
            TensorSpec("label", "BYTES", (-1,)),
            TensorSpec("score", "FP32", (-1,)),
            TensorSpec("scores", "FP32", (-1, len(self.labels))),
        ]
        self._weights_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        self._torch = torch

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities ``[N, C]`` (float32)."""
        texts = check_texts(texts)
        torch = self._torch
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), _BATCH):
                enc = self.tokenizer(
                    texts[start : start + _BATCH],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                logits = self.model(**enc).logits.float()
                probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, -1)
                out[start : start + len(enc["input_ids"])] = probs.cpu().numpy()
        return out

    def classify(self, texts: Sequence[str]) -> list[Classification]:
        """The best label and scores for each text."""
        probs = self.scores(texts)
        results = []
        for row in probs:
            best = int(np.argmax(row))
            results.append(
                Classification(
                    label=self.labels[best],
                    score=float(row[best]),
                    scores={label: float(p) for label, p in zip(self.labels, row)},
                )
            )
        return results

    def predict(
        self, inputs: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        probs = self.scores(text_array(inputs))
        best = probs.argmax(axis=1)
        result = {
            "label": np.array([self.labels[i].encode("utf-8") for i in best], dtype=object),
            "score": probs[np.arange(len(best)), best].astype(np.float32),
            "scores": probs,
        }
        names = output_names or list(result)
        return {n: result[n] for n in names if n in result}

    def memory_bytes(self) -> int:
        return int(self._weights_bytes * 1.2)

    def close(self) -> None:
        del self.model


def load(
    path: Path, options: RuntimeOptions, metadata: dict[str, Any]
) -> TextClassificationRuntime:
    root = model_root(Path(path))
    info = inspect_for_task(root, "text-classification", metadata)
    return TextClassificationRuntime(path=root, info=info, options=options)
