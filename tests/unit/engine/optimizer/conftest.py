"""A small platform-trained digits classifier (trained once per session, ~2 s) and its table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelyard.engine.dataframes import Table, load_builtin
from modelyard.engine.optimizer import Source


@pytest.fixture(scope="session")
def digits() -> Table:
    return load_builtin("digits")


@pytest.fixture(scope="session")
def digits_source(tmp_path_factory: pytest.TempPathFactory, digits: Table) -> Source:
    from modelyard.engine.trainer import TrainSpec, train

    work = tmp_path_factory.mktemp("digits-train")
    result = train(TrainSpec(target="target", hidden_sizes=(64, 32), epochs=8, seed=1), digits, workdir=work)
    return Source(onnx_path=result.onnx_path, architecture=json.loads(Path(result.architecture_path).read_text()),
                  weights_path=result.torch_weights_path)
