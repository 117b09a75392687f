"""Dataset files: read, validate and describe CSV, Parquet, NPZ and JSONL; built-in datasets.

A dataset becomes a :class:`Table`: named numpy columns that share a first dimension (the rows).
Tabular columns are one-dimensional (``int64``, ``float64`` with NaN for missing values, ``bool``,
or ``object`` arrays of ``str`` with ``None`` for missing values); NPZ arrays may carry more
dimensions per row (e.g. images ``(n, 8, 8)``).

Every problem with a file raises :class:`~modelyard.errors.ValidationFailed` whose message names
the column or line at fault; NPZ files holding pickled (object) arrays raise
:class:`~modelyard.errors.UnsafeContent`. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.errors import UnsafeContent, ValidationFailed

__all__ = [
    "FORMATS",
    "BUILTIN_DATASETS",
    "Table",
    "ColumnDescription",
    "DatasetDescription",
    "read_table",
    "describe_dataset",
    "describe_table",
    "load_builtin",
]

#: Accepted file formats (lower case).
FORMATS = ("csv", "parquet", "npz", "jsonl")
#: Names accepted by :func:`load_builtin`.
BUILTIN_DATASETS = ("digits", "iris", "wine", "breast_cancer", "diabetes")
_PREVIEW_ROWS = 5


@dataclass(frozen=True)
class Table:
    """Named numpy columns with the same number of rows.

    ``image_shape`` (channels, height, width), when set, says that the numeric feature columns
    taken in order form an image (e.g. digits: 64 pixel columns are a 1x8x8 image).
    """

    columns: Mapping[str, np.ndarray]
    image_shape: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if not self.columns:
            raise ValidationFailed("the dataset has no columns")
        lengths = {name: int(a.shape[0]) if a.ndim else -1 for name, a in self.columns.items()}
        if len(set(lengths.values())) != 1:
            first = next(iter(lengths))
            for name, n in lengths.items():
                if n != lengths[first]:
                    raise ValidationFailed(
                        f"column {name!r} has {n} rows but column {first!r} has {lengths[first]}",
                        details={"column": name},
                    )

    @property
    def column_names(self) -> list[str]:
        return list(self.columns)

    @property
    def n_rows(self) -> int:
        return int(next(iter(self.columns.values())).shape[0])

    def __len__(self) -> int:
        return self.n_rows

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __contains__(self, name: object) -> bool:
        return name in self.columns


@dataclass(frozen=True)
class ColumnDescription:
    """One column (or NPZ array): dtype name, per-row shape (``()`` for scalars), missing count."""

    name: str
    dtype: str
    shape: tuple[int, ...] = ()
    missing: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "missing": self.missing}


@dataclass(frozen=True)
class DatasetDescription:
    """What a dataset holds; ``preview`` is the first rows as JSON-able dicts (NaN -> ``None``)."""

    format: str
    n_rows: int
    columns: tuple[ColumnDescription, ...]
    preview: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @property
    def missing(self) -> dict[str, int]:
        return {c.name: c.missing for c in self.columns}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "n_rows": self.n_rows,
            "columns": [c.to_dict() for c in self.columns],
            "preview": list(self.preview),
        }


# ----------------------------------------------------------------------------------------------
# reading


def read_table(path: Path, fmt: str) -> Table:
    """Read a dataset file into a :class:`Table`; ``ValidationFailed`` for any malformed input."""
    fmt = fmt.lower().lstrip(".")
    path = Path(path)
    if fmt not in FORMATS:
        raise ValidationFailed(
            f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}",
            details={"field": "format"},
        )
    if not path.is_file():
        raise ValidationFailed(f"dataset file {path.name!r} does not exist")
    if path.stat().st_size == 0:
        raise ValidationFailed("the dataset file is empty")
    reader = {"csv": _read_csv, "parquet": _read_parquet, "npz": _read_npz, "jsonl": _read_jsonl}[fmt]
    table = reader(path)
    if table.n_rows == 0:
        raise ValidationFailed("the dataset has no rows")
    return table


def describe_dataset(path: Path, fmt: str) -> DatasetDescription:
    """Read and validate a dataset file and describe it (see :func:`describe_table`)."""
    fmt = fmt.lower().lstrip(".")
    return describe_table(read_table(path, fmt), fmt=fmt)


def describe_table(table: Table, *, fmt: str = "builtin") -> DatasetDescription:
    """Columns with dtypes, per-row shapes and missing counts, row count, and a 5-row preview."""
    cols = tuple(
        ColumnDescription(
            name=name,
            dtype=_dtype_name(a),
            shape=tuple(int(d) for d in a.shape[1:]),
            missing=_missing(a),
        )
        for name, a in table.columns.items()
    )
    n = min(_PREVIEW_ROWS, table.n_rows)
    preview = tuple(
        {name: _jsonable(a[i]) for name, a in table.columns.items()} for i in range(n)
    )
    return DatasetDescription(format=fmt, n_rows=table.n_rows, columns=cols, preview=preview)


def _dtype_name(a: np.ndarray) -> str:
    if a.dtype.kind == "O":
        return "string"
    return str(a.dtype)


def _missing(a: np.ndarray) -> int:
    if a.dtype.kind == "f":
        return int(np.isnan(a).sum())
    if a.dtype.kind == "O":
        return int(sum(1 for v in a.ravel() if v is None))
    return 0


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _from_arrow(arrow_table: Any) -> Table:
    import pyarrow as pa

    columns: dict[str, np.ndarray] = {}
    for name, chunked in zip(arrow_table.column_names, arrow_table.columns):
        name = str(name)
        if name in columns:
            raise ValidationFailed(f"column {name!r} appears twice", details={"column": name})
        t = chunked.type
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
            if chunked.null_count or pa.types.is_floating(t) or pa.types.is_decimal(t):
                arr = chunked.cast(pa.float64()).to_numpy(zero_copy_only=False)
                columns[name] = np.asarray(arr, dtype=np.float64)
            else:
                columns[name] = np.asarray(chunked.to_numpy(), dtype=np.int64)
        elif pa.types.is_boolean(t):
            if chunked.null_count:
                raise ValidationFailed(
                    f"boolean column {name!r} has missing values", details={"column": name}
                )
            columns[name] = np.asarray(chunked.to_numpy(zero_copy_only=False), dtype=bool)
        elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t):
            values = chunked.to_pylist()
            columns[name] = np.array(values, dtype=object) if values else np.empty(0, dtype=object)
        elif pa.types.is_dictionary(t):
            columns[name] = np.array([None if v is None else str(v) for v in chunked.to_pylist()], dtype=object)
        else:
            raise ValidationFailed(
                f"column {name!r} has type {t}, which is not supported "
                "(use numbers, booleans or strings)",
                details={"column": name},
            )
    if not columns:
        raise ValidationFailed("the dataset has no columns")
    return Table(columns=columns)


def _read_csv(path: Path) -> Table:
    import pyarrow as pa
    from pyarrow import csv as pacsv

    try:
        arrow_table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=False),
            parse_options=pacsv.ParseOptions(newlines_in_values=False),
            convert_options=pacsv.ConvertOptions(strings_can_be_null=True),
        )
    except pa.ArrowInvalid as exc:
        message = str(exc)
        if "Empty CSV file" in message:
            raise ValidationFailed("the CSV file is empty") from exc
        raise ValidationFailed(f"malformed CSV: {_arrow_message(message)}") from exc
    except (pa.ArrowException, UnicodeDecodeError) as exc:
        raise ValidationFailed(f"unreadable CSV: {_arrow_message(str(exc))}") from exc
    for name in arrow_table.column_names:
        if not str(name).strip():
            raise ValidationFailed("the CSV header has an empty column name")
    return _from_arrow(arrow_table)


def _arrow_message(message: str) -> str:
    # Arrow appends the raw row content; keep only the first line (the problem itself).
    return message.strip().splitlines()[0] if message.strip() else "unknown error"


def _read_parquet(path: Path) -> Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        arrow_table = pq.read_table(path, use_threads=False)
    except (pa.ArrowException, OSError) as exc:
        message = str(exc).replace(str(path), "the upload")
        raise ValidationFailed(f"malformed Parquet file: {_arrow_message(message)}") from exc
    return _from_arrow(arrow_table)


def _read_npz(path: Path) -> Table:
    columns: dict[str, np.ndarray] = {}
    try:
        with path.open("rb") as fh, np.load(fh, allow_pickle=False) as npz:
            for name in npz.files:
                try:
                    arr = npz[name]
                except ValueError as exc:
                    if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
                        raise UnsafeContent(
                            f"array {name!r} holds pickled objects, which are never loaded",
                            details={"column": name},
                        ) from exc
                    raise ValidationFailed(
                        f"array {name!r} is malformed: {exc}", details={"column": name}
                    ) from exc
                columns[name] = arr
    except (UnsafeContent, ValidationFailed):
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise ValidationFailed(f"malformed or truncated NPZ file: {exc}") from exc
    if not columns:
        raise ValidationFailed("the NPZ file holds no arrays")
    first_name = next(iter(columns))
    for name, arr in columns.items():
        if arr.ndim == 0:
            raise ValidationFailed(
                f"array {name!r} is a scalar; every array needs one row per sample",
                details={"column": name},
            )
        if arr.dtype.kind not in "biuf":
            if arr.dtype.kind in "US":
                columns[name] = np.array(
                    [str(v) if arr.dtype.kind == "U" else v.decode("utf-8", "replace") for v in arr.ravel()],
                    dtype=object,
                ).reshape(arr.shape)
                continue
            raise ValidationFailed(
                f"array {name!r} has dtype {arr.dtype}, which is not supported", details={"column": name}
            )
        if arr.shape[0] != columns[first_name].shape[0]:
            raise ValidationFailed(
                f"array {name!r} has {arr.shape[0]} rows but array {first_name!r} has "
                f"{columns[first_name].shape[0]}",
                details={"column": name},
            )
        if arr.dtype.kind == "f" and arr.dtype != np.float64 and arr.dtype != np.float32:
            columns[name] = arr.astype(np.float64)
    return Table(columns=columns)


def _read_jsonl(path: Path) -> Table:
    rows: list[dict[str, Any]] = []
    order: dict[str, None] = {}
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValidationFailed(
                    f"line {lineno} is not valid JSON (truncated file?): {exc}", details={"line": lineno}
                ) from exc
            if not isinstance(obj, dict):
                raise ValidationFailed(
                    f"line {lineno} is not a JSON object", details={"line": lineno}
                )
            for key, value in obj.items():
                if isinstance(value, (dict, list)):
                    raise ValidationFailed(
                        f"field {key!r} on line {lineno} is nested; only scalar values are supported",
                        details={"column": key, "line": lineno},
                    )
                order.setdefault(key, None)
            rows.append(obj)
    if not rows:
        raise ValidationFailed("the JSONL file has no records")
    columns = {name: _column_from_values(name, [r.get(name) for r in rows]) for name in order}
    return Table(columns=columns)


def _column_from_values(name: str, values: list[Any]) -> np.ndarray:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        if len(present) != len(values):
            raise ValidationFailed(f"boolean column {name!r} has missing values", details={"column": name})
        return np.array(values, dtype=bool)
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        if len(present) == len(values) and all(isinstance(v, int) for v in present):
            return np.array(values, dtype=np.int64)
        return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    if all(isinstance(v, str) for v in present):
        return np.array(values, dtype=object)
    kinds = sorted({type(v).__name__ for v in present})
    raise ValidationFailed(
        f"column {name!r} mixes value types ({', '.join(kinds)})", details={"column": name}
    )


# ----------------------------------------------------------------------------------------------
# built-in datasets


def load_builtin(name: str) -> Table:
    """One of scikit-learn's bundled datasets as a :class:`Table` with a ``target`` column.

    Feature columns keep scikit-learn's names; digits has 64 ``pixel_r_c`` columns and
    ``image_shape == (1, 8, 8)`` so the ``cnn`` recipe can see them as an image.
    """
    from sklearn import datasets as skd

    loaders = {
        "digits": skd.load_digits,
        "iris": skd.load_iris,
        "wine": skd.load_wine,
        "breast_cancer": skd.load_breast_cancer,
        "diabetes": skd.load_diabetes,
    }
    if name not in loaders:
        raise ValidationFailed(
            f"unknown built-in dataset {name!r}; expected one of {', '.join(BUILTIN_DATASETS)}",
            details={"field": "dataset"},
        )
    bunch = loaders[name]()
    data = np.asarray(bunch.data, dtype=np.float64)
    names = [str(n).replace(" ", "_") for n in getattr(bunch, "feature_names", [])]
    if len(names) != data.shape[1]:
        names = [f"feature_{i}" for i in range(data.shape[1])]
    columns: dict[str, np.ndarray] = {n: np.ascontiguousarray(data[:, i]) for i, n in enumerate(names)}
    target = np.asarray(bunch.target)
    columns["target"] = target.astype(np.int64) if target.dtype.kind in "iu" else target.astype(np.float64)
    image_shape = (1, 8, 8) if name == "digits" else None
    return Table(columns=columns, image_shape=image_shape)
