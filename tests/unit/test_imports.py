"""Importing the package, the SDK and the CLI pulls in nothing heavy and nothing server-side."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "onnxruntime", "fastapi", "sqlalchemy", "transformers", "uvicorn", "onnx", "sklearn")

_PROBE = f"""
import json, sys
import modelyard
import modelyard.client
import modelyard.cli.main
from modelyard import Client
print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
"""


def test_sdk_and_cli_import_without_server_or_heavy_modules() -> None:
    result = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_sdk_public_surface_is_complete() -> None:
    """Every public class of the SDK's private modules is exported from ``modelyard.client``."""
    import inspect

    import modelyard
    import modelyard.client as sdk
    from modelyard.client import _client, _inference, _models, _transport

    for name in sdk.__all__:
        assert getattr(sdk, name) is not None
    defined = {
        name
        for module in (_client, _inference, _models, _transport)
        for name, obj in vars(module).items()
        if inspect.isclass(obj) and obj.__module__ == module.__name__ and not name.startswith("_")
        and name != "Inference"  # an implementation detail behind Client.predict
    }
    assert defined <= set(sdk.__all__), defined - set(sdk.__all__)
    assert modelyard.Client is sdk.Client
