"""The safe-loading policy: pickle sniffing, URL allow-list, relative paths."""

from __future__ import annotations

import io
import pickle
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from modelyard.core.policy import check_fetch_url, check_relative_path, refuse_unsafe, sniff_unsafe
from modelyard.errors import UnsafeContent


class _Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("never",))


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
def test_pickles_of_every_protocol_are_refused(protocol: int) -> None:
    assert sniff_unsafe(pickle.dumps(_Boom(), protocol=protocol)) is not None


def test_containers_of_pickles_are_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"a": 1}))
    path = tmp_path / "model.pt"
    path.write_bytes(buf.getvalue())
    with pytest.raises(UnsafeContent, match="data.pkl"):
        refuse_unsafe(path)
    obj = tmp_path / "objects.npz"
    np.savez(obj, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(UnsafeContent, match="Python objects"):
        refuse_unsafe(obj)
    assert sniff_unsafe(zlib.compress(pickle.dumps([1, 2], protocol=4))) is not None


def test_safe_files_pass(tmp_path: Path) -> None:
    npz = tmp_path / "ok.npz"
    np.savez(npz, x=np.zeros((2, 2), dtype=np.float32))
    refuse_unsafe(npz)
    csv = tmp_path / "ok.csv"
    csv.write_text("a,b\n1,2\n")
    refuse_unsafe(csv)
    assert sniff_unsafe(b"\x08\x07\x12\x07pytorch") is None  # an ONNX protobuf start


def test_url_allow_list() -> None:
    assert check_fetch_url("https://models.example.com/x", ["models.example.com"])
    for bad in ("https://evil.example.com/x", "file:///etc/passwd", "ftp://models.example.com/",
                "https://user:pw@models.example.com/", "http:///nohost"):
        with pytest.raises(UnsafeContent):
            check_fetch_url(bad, ["models.example.com"])


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "/etc/passwd", "a\\..\\b", "a\x00b", "C:x", ""])
def test_relative_path_refusals(bad: str) -> None:
    with pytest.raises(UnsafeContent):
        check_relative_path(bad)


def test_relative_path_ok() -> None:
    assert check_relative_path("dir/file.onnx") == "dir/file.onnx"
