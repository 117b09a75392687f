"""Dataset files: reading, description, and every malformed-file path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modelyard.engine.dataframes import describe_dataset, load_builtin, read_table
from modelyard.errors import UnsafeContent, ValidationFailed


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_csv_description_types_missing_and_preview(tmp_path: Path) -> None:
    p = write(tmp_path, "d.csv", "a,b,c\n1,2.5,x\n2,,y\n3,4.0,\n4,1.0,x\n5,2.0,y\n6,3.0,x\n")
    d = describe_dataset(p, "csv")
    assert d.n_rows == 6
    cols = {c.name: c for c in d.columns}
    assert cols["a"].dtype == "int64" and cols["b"].dtype == "float64" and cols["c"].dtype == "string"
    assert d.missing == {"a": 0, "b": 1, "c": 1}
    assert len(d.preview) == 5
    assert d.preview[1] == {"a": 2, "b": None, "c": "y"}
    json.dumps(d.to_dict())  # JSON-able


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        ("a,b\n", "no rows"),
        ("a,b\n1,2\n3\n", "CSV"),  # ragged row
        ("a,b\n1,2\n3,4,5\n", "CSV"),
    ],
)
def test_bad_csv(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ValidationFailed, match=needle):
        describe_dataset(write(tmp_path, "d.csv", text), "csv")


def test_parquet_roundtrip_and_garbage(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"x": [1.0, None, 3.0], "name": ["a", "b", None], "n": [1, 2, 3]}), p)
    d = describe_dataset(p, "parquet")
    assert d.n_rows == 3 and d.missing == {"x": 1, "name": 1, "n": 0}
    assert read_table(p, "parquet")["n"].dtype == np.int64
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(p.read_bytes()[:40])  # truncated
    with pytest.raises(ValidationFailed, match="Parquet"):
        describe_dataset(bad, "parquet")


def test_npz_arrays_shapes_and_errors(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    x = np.random.default_rng(0).random((7, 8, 8)).astype(np.float32)
    x[0, 0, 0] = np.nan
    np.savez(p, x=x, y=np.arange(7))
    d = describe_dataset(p, "npz")
    cols = {c.name: c for c in d.columns}
    assert d.n_rows == 7 and cols["x"].shape == (8, 8) and cols["x"].missing == 1
    assert len(d.preview[0]["x"]) == 8

    mismatch = tmp_path / "m.npz"
    np.savez(mismatch, x=np.zeros((5, 2)), y=np.zeros(4))
    with pytest.raises(ValidationFailed, match="'y' has 4 rows") as info:
        read_table(mismatch, "npz")
    assert info.value.details["column"] == "y"

    pickled = tmp_path / "p.npz"
    np.savez(pickled, x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(UnsafeContent):
        read_table(pickled, "npz")

    truncated = tmp_path / "t.npz"
    truncated.write_bytes(p.read_bytes()[:100])
    with pytest.raises(ValidationFailed, match="NPZ"):
        read_table(truncated, "npz")


def test_jsonl_reading_and_errors(tmp_path: Path) -> None:
    p = write(tmp_path, "d.jsonl", '{"text": "hi", "n": 1}\n{"text": "yo", "n": 2.5}\n\n{"text": "x"}\n')
    t = read_table(p, "jsonl")
    assert t.n_rows == 3 and t["n"].dtype == np.float64 and np.isnan(t["n"][2])
    with pytest.raises(ValidationFailed, match="line 2"):
        read_table(write(tmp_path, "t.jsonl", '{"a": 1}\n{"a": '), "jsonl")  # truncated
    with pytest.raises(ValidationFailed, match="mixes"):
        read_table(write(tmp_path, "m.jsonl", '{"a": 1}\n{"a": "x"}\n'), "jsonl")
    with pytest.raises(ValidationFailed, match="nested"):
        read_table(write(tmp_path, "n.jsonl", '{"a": [1, 2]}\n'), "jsonl")
    with pytest.raises(ValidationFailed, match="not a JSON object"):
        read_table(write(tmp_path, "l.jsonl", "[1, 2]\n"), "jsonl")


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed, match="format") as info:
        read_table(tmp_path / "x.xls", "xls")
    assert info.value.details == {"field": "format"}
    with pytest.raises(ValidationFailed, match="does not exist"):
        read_table(tmp_path / "nope.csv", "csv")


@pytest.mark.parametrize(("name", "n_rows", "n_cols"), [("digits", 1797, 65), ("iris", 150, 5), ("wine", 178, 14),
                                                        ("breast_cancer", 569, 31), ("diabetes", 442, 11)])
def test_builtins(name: str, n_rows: int, n_cols: int) -> None:
    t = load_builtin(name)
    assert t.n_rows == n_rows and len(t.column_names) == n_cols and t.column_names[-1] == "target"
    if name == "digits":
        assert t.image_shape == (1, 8, 8) and t["target"].dtype == np.int64
    with pytest.raises(ValidationFailed):
        load_builtin("mnist")
