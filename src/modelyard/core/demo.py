"""The demo model: a digits classifier trained on scikit-learn's bundled data, as ONNX.

``make run`` registers it as ``digits`` (stage production) on first start so there is something
to call. Input ``input`` FP32 [-1, 64] (an 8x8 image, pixel values 0-16); outputs ``label`` INT64
[-1] and ``probabilities`` FP32 [-1, 10].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from modelyard.core.registry import Registry, VersionInfo
from modelyard.errors import NotFound
from modelyard.store.artifacts import ArtifactStore

__all__ = ["build_digits_onnx", "ensure_demo_model", "DEMO_MODEL"]

DEMO_MODEL = "digits"


def build_digits_onnx(path: Path, *, hidden: tuple[int, ...] = (64,), seed: int = 0) -> float:
    """Train a small MLP on digits, write it as ONNX to ``path``; returns held-out accuracy."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=seed)
    clf = make_pipeline(
        StandardScaler(), MLPClassifier(hidden_layer_sizes=hidden, max_iter=400, random_state=seed)
    )
    clf.fit(x_train, y_train)
    accuracy = float(clf.score(x_test, y_test))
    onx = to_onnx(
        clf,
        x_train[:1],
        options={MLPClassifier: {"zipmap": False}},
        target_opset=17,
        final_types=None,
    )
    graph = onx.graph
    graph.input[0].name = _rename(onx, graph.input[0].name, "input")
    _rename(onx, graph.output[0].name, "label")
    _rename(onx, graph.output[1].name, "probabilities")
    path.write_bytes(onx.SerializeToString())
    return accuracy


def _rename(model: object, old: str, new: str) -> str:
    graph = model.graph  # type: ignore[attr-defined]
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for vi in list(graph.input) + list(graph.output):
        if vi.name == old:
            vi.name = new
    return new


def ensure_demo_model(registry: Registry, artifacts: ArtifactStore, tenant_id: str, workdir: Path) -> VersionInfo:
    """Register the digits demo as production unless the tenant already has a ``digits`` version."""
    try:
        return registry.resolve(tenant_id, DEMO_MODEL)
    except NotFound:  # no model, or a model whose versions were all deleted
        pass
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "digits.onnx"
    accuracy = build_digits_onnx(path)
    with open(path, "rb") as f:
        staged = artifacts.stage_stream(f, max_bytes=path.stat().st_size)
    path.unlink(missing_ok=True)
    return registry.register_version(
        tenant_id=tenant_id,
        model_name=DEMO_MODEL,
        staged=staged,
        description="Demo: an MLP trained on scikit-learn's 8x8 digits (input: 64 pixel values 0-16)",
        metrics={"accuracy": round(accuracy, 4)},
        lineage={"source": "demo", "dataset": "sklearn:digits", "trainer": "sklearn.neural_network.MLPClassifier"},
        stage="production",
    )
