"""Turn a data source into standardised, stratified train/val/test splits on disk.

`prepare` reads one of the built-in data sets (``digits``, ``mnist1d[:SEED]``, ``adding[:L]``) or a user
file (``.parquet`` / ``.npz``), checks it, splits it, standardises it with train
statistics and writes ``train/val/test.parquet`` plus ``meta.json`` into a folder.
`read_meta` and `load_split` read that folder back.

Heavy dependencies (sklearn, mnist1d) are imported inside the functions that need
them so that importing this module stays cheap for the CLI.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import secrets
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nas.ids import digest

SPLITS: tuple[str, ...] = ("train", "val", "test")
BUILTINS: tuple[str, ...] = ("digits", "mnist1d", "adding")
ADDING_LENGTH = 100  # `adding` is `adding:100`; `adding:L` sets the sequence length
ADDING_ROWS = 4000
MNIST1D_SEED = 42  # the generator's own default: `mnist1d` is the published data set
META_FILE = "meta.json"
# What `prepare` writes into its folder, and all that is shared with a cluster's workers through the store.
PREPARED_FILES: tuple[str, ...] = (META_FILE, *(f"{split}.parquet" for split in SPLITS))

Splits = dict[str, tuple[np.ndarray, np.ndarray]]  # split name -> (x, y)

_ACCEPTED = (
    "--data accepts `digits`, `mnist1d` (or `mnist1d:SEED`, a variant drawn with another generator seed), "
    "`adding` (or `adding:L` for sequences of length L), a path to a `.parquet` file (one label column plus "
    "either numeric feature columns or exactly one list column of numbers) or a path to an "
    "`.npz` file (arrays `x` of shape (N, ...) and `y` of shape (N,))."
)
_REPREPARE = "Run `nas prepare --data <digits|mnist1d|adding|file>` to (re)create it."


class DataError(ValueError):
    """A problem with the user's data or a prepared data folder, explained for the user."""


@dataclass(frozen=True)
class DataMeta:
    name: str
    source: str
    shape: tuple[int, ...]
    classes: tuple[str, ...]
    counts: dict[str, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fingerprint: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "shape": list(self.shape),
            "classes": list(self.classes),
            "counts": {split: self.counts[split] for split in SPLITS},
            "mean": list(self.mean),
            "std": list(self.std),
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DataMeta:
        try:
            counts = {split: int(d["counts"][split]) for split in SPLITS}
            meta = cls(
                name=str(d["name"]),
                source=str(d["source"]),
                shape=tuple(int(v) for v in d["shape"]),
                classes=tuple(str(v) for v in d["classes"]),
                counts=counts,
                mean=tuple(float(v) for v in d["mean"]),
                std=tuple(float(v) for v in d["std"]),
                fingerprint=str(d["fingerprint"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"Data metadata is incomplete or malformed ({type(exc).__name__}: {exc}); it "
                f"needs name, source, shape, classes, counts (train/val/test), mean, std and "
                f"fingerprint. {_REPREPARE}"
            ) from exc
        channels = meta.shape[0] if meta.shape else 0
        if not channels or len(meta.mean) != channels or len(meta.std) != channels:
            raise DataError(
                f"Data metadata is inconsistent: shape {meta.shape} needs one mean/std value per "
                f"channel but has {len(meta.mean)}/{len(meta.std)}. {_REPREPARE}"
            )
        return meta


# --------------------------------------------------------------------------- public helpers


def parse_shape(text: str) -> tuple[int, ...]:
    """Parse "1,8,8" (spaces and surrounding parentheses allowed) into (1, 8, 8)."""
    body = text.strip().strip("()[]").strip()
    parts = [p.strip() for p in body.split(",")]
    if parts and parts[-1] == "" and len(parts) > 1:  # tolerate a trailing comma: "40,"
        parts.pop()
    if not body or not all(re.fullmatch(r"\d+", p) for p in parts):
        raise DataError(
            f"Cannot read the shape {text!r}: it must be comma-separated positive integers, "
            f"e.g. `--shape 1,8,8` for one-channel 8x8 images or `--shape 1,40` for a "
            f"one-channel sequence of 40."
        )
    shape = tuple(int(p) for p in parts)
    _check_shape_values(shape)
    return shape


def feature_columns(source: str, label_column: str) -> list[str] | None:
    """A Parquet table's feature column names, read from its footer alone; None for other sources."""
    if Path(source).suffix.lower() != ".parquet" or not Path(source).is_file():
        return None
    return [name for name in pq.read_schema(source).names if name != label_column]


def is_builtin(source: str) -> bool:
    """Whether `source` names a data set made here (digits, mnist1d[:SEED], adding[:L]), not a file."""
    return source in BUILTINS or re.fullmatch(r"(mnist1d|adding):\d+", source) is not None


def source_name(source: str) -> str:
    """Short name of a source: the built-in name, or the file's stem (for data/<name>)."""
    if is_builtin(source):
        return source.replace(":", "-")
    _file_kind(source)  # rejects unsupported forms early, before a folder is named after them
    return Path(source).stem


def prepare(
    source: str,
    out_dir: str | Path,
    *,
    label_column: str = "label",
    shape: tuple[int, ...] | None = None,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
) -> DataMeta:
    """Load `source`, validate, split, standardise, and write it to `out_dir`."""
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if shape is not None:
        shape = tuple(shape)
        _check_shape_values(shape)

    inputs = digest({"source": source, "content": source_fingerprint(source), "label_column": label_column,
                     "shape": shape, "seed": seed, "fractions": [val_fraction, test_fraction]})
    if (done := _prepared(Path(out_dir), inputs)) is not None:
        return done  # the folder holds these very inputs' splits: reading and splitting again changes nothing

    # Everything is loaded and checked in memory first, so a bad source never
    # touches an existing prepared folder.
    raw = _load_source(source, label_column)
    if not raw.labels:
        raise DataError(f"{source} holds no rows; a data set needs rows of at least two classes to split.")
    example_shape = _apply_shape(raw.x, shape or raw.shape)
    x = raw.x.reshape((len(raw.x), *example_shape))
    y, classes = _encode_labels(raw.labels)

    index = _split_indices(y, classes, raw.test_start, seed, val_fraction, test_fraction)
    mean, std = _channel_stats(x[index["train"]])
    splits = {
        split: (_standardise(x[rows], mean, std), y[rows].astype(np.int64)) for split, rows in index.items()
    }
    _check_standardised(x, mean, std, splits)

    meta = DataMeta(
        name=source_name(source),
        source=source if is_builtin(source) else str(Path(source).expanduser().resolve()),
        shape=example_shape,
        classes=classes,
        counts={split: len(splits[split][1]) for split in SPLITS},
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        fingerprint=_fingerprint(splits, example_shape, classes),
    )
    _write(Path(out_dir), splits, meta, inputs)
    return meta


def source_fingerprint(source: str) -> str:
    """What names a source's content: a built-in's name, a file's SHA-256 ("missing" if there is none)."""
    if is_builtin(source):
        return source
    path = Path(source)
    if not path.is_file():
        return "missing"  # preparing then says so, in this module's words
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()[:16]


def _prepared(out_dir: Path, inputs: str) -> DataMeta | None:
    """The meta of a complete folder that `prepare` wrote from `inputs`, else None."""
    try:
        raw = json.loads((out_dir / META_FILE).read_text())
        if raw.get("inputs") != inputs or not all((out_dir / f"{s}.parquet").is_file() for s in SPLITS):
            return None
        return DataMeta.from_json(raw)
    except (OSError, ValueError, AttributeError):  # no folder, or not one of ours: prepare it afresh
        return None


def read_meta(data_dir: str | Path) -> DataMeta:
    """Read `data_dir/meta.json`, raising DataError when it is missing or unreadable."""
    path = Path(data_dir) / META_FILE
    if not path.is_file():
        raise DataError(
            f"No prepared data in {Path(data_dir)}: {path} does not exist (prepare may not have "
            f"run, or was interrupted). {_REPREPARE}"
        )
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not readable JSON ({exc}); the folder is corrupt. {_REPREPARE}") from exc
    if not isinstance(d, dict):
        raise DataError(f"{path} does not hold a JSON object; the folder is corrupt. {_REPREPARE}")
    try:
        return DataMeta.from_json(d)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from exc


def load_split(data_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (x float32 of shape (N, *meta.shape), y int64 of shape (N,)) for one split."""
    if split not in SPLITS:
        raise DataError(f"Unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
    meta = read_meta(data_dir)
    path = Path(data_dir) / f"{split}.parquet"
    redo = f"Re-run `nas prepare --data {meta.source}` to recreate the folder."
    if not path.is_file():
        raise DataError(f"The {split} split is missing: {path} does not exist. {redo}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataError(f"Cannot read {path}; the file is corrupt ({exc}). {redo}") from exc

    if not {"x", "y"} <= set(table.column_names):
        raise DataError(f"{path} lacks the columns `x` and `y` (it has {table.column_names}). {redo}")
    n, width = table.num_rows, math.prod(meta.shape)
    if n != meta.counts[split]:
        raise DataError(
            f"{path} has {n} rows but meta.json says {meta.counts[split]}; the folder is "
            f"inconsistent. {redo}"
        )
    xcol = table.column("x").combine_chunks()
    if not pa.types.is_list(xcol.type) or xcol.null_count:
        raise DataError(f"{path}: column `x` must be a list of floats without nulls, got {xcol.type}. {redo}")
    values = xcol.flatten().to_numpy(zero_copy_only=False)
    if values.size != n * width:
        raise DataError(
            f"{path}: column `x` holds {values.size} values, expected {n} rows x {width} for shape "
            f"{meta.shape}. {redo}"
        )
    y = table.column("y").to_numpy().astype(np.int64)
    if n and (y.min() < 0 or y.max() >= len(meta.classes)):
        raise DataError(f"{path}: labels fall outside the {len(meta.classes)} classes in meta.json. {redo}")
    return values.astype(np.float32).reshape((n, *meta.shape)), y


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class _Raw:
    x: np.ndarray  # (N, F) float64, checked finite
    labels: list[Any]  # N plain Python values
    shape: tuple[int, ...]  # natural example shape, used when the user gives none
    test_start: int | None = None  # rows from here on are a predefined test split


def _load_source(source: str, label_column: str) -> _Raw:
    if source == "digits":
        return _load_digits()
    if source.startswith("mnist1d") and is_builtin(source):
        return _load_mnist1d(int(source.partition(":")[2] or MNIST1D_SEED))
    if source.startswith("adding") and is_builtin(source):
        return _load_adding(int(source.partition(":")[2] or ADDING_LENGTH))
    kind = _file_kind(source)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"Data file not found: {path.resolve()}. Check the path; {_ACCEPTED}")
    return _load_parquet(path, label_column) if kind == "parquet" else _load_npz(path)


def _file_kind(source: str) -> str:
    suffix = Path(source).suffix.lower()
    if suffix in (".parquet", ".npz"):
        return suffix[1:]
    raise DataError(f"Unsupported data source {source!r}. {_ACCEPTED}")


def _load_digits() -> _Raw:
    from sklearn.datasets import load_digits  # bundled with sklearn: no download

    bunch = load_digits()
    return _Raw(x=bunch.data / 16.0, labels=bunch.target.tolist(), shape=(1, 8, 8))


def generate_mnist1d(seed: int = MNIST1D_SEED) -> dict[str, np.ndarray]:
    """MNIST-1D's arrays (x, y, x_test, y_test) as published (seed 42), or a variant: the same
    templates, other draws of their shifts, scales, shears and noise. Generated here, never
    downloaded."""
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset reseeds the global `random` and `np.random` generators; restore
    # them so generating data has no side effects on the caller's randomness.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        args = get_dataset_args()
        args.seed = seed
        return make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _load_mnist1d(seed: int) -> _Raw:
    d = generate_mnist1d(seed)
    x = np.concatenate([d["x"], d["x_test"]]).astype(np.float64)
    labels = np.concatenate([d["y"], d["y_test"]]).tolist()
    return _Raw(x=x, labels=labels, shape=(1, x.shape[1]), test_start=len(d["y"]))


def _load_adding(length: int) -> _Raw:
    from nas.sequences import adding_problem  # generated here: nothing to download

    if length < 2:
        raise DataError(f"adding:{length}: the adding problem needs sequences of length 2 or more, e.g. adding:100.")
    x, y = adding_problem(ADDING_ROWS, length, seed=0)
    return _Raw(x=x.reshape(len(x), -1).astype(np.float64), labels=y.tolist(), shape=(2, length))


def _load_parquet(path: Path, label_column: str) -> _Raw:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataError(
            f"Cannot read {path.resolve()} as Parquet ({exc}). The file is corrupt or not a Parquet "
            f"file; re-export it, or pass an `.npz` file instead."
        ) from exc
    if label_column not in table.column_names:
        raise DataError(
            f"Label column {label_column!r} is not in {path.name}; its columns are "
            f"{', '.join(table.column_names) or '(none)'}. Name the right one with --label-column."
        )
    labels = _labels_from_arrow(table.column(label_column), f"label column {label_column!r}")
    features = [name for name in table.column_names if name != label_column]
    lists = [name for name in features if _is_list(table.schema.field(name).type)]

    if not features or (lists and len(features) > 1):
        found = (
            f"list columns {lists} alongside other columns {[f for f in features if f not in lists]}"
            if lists
            else "only the label column"
        )
        raise DataError(
            f"{path.name} has {found}. Besides the label column {label_column!r}, a Parquet file "
            f"needs either numeric feature columns or exactly one list column whose cells are "
            f"equal-length lists of numbers."
        )
    if lists:
        x = _x_from_list_column(table.column(lists[0]), lists[0])
    else:
        x = _x_from_numeric_columns(table, features)
    return _Raw(x=x, labels=labels, shape=(x.shape[1],))


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _is_number(t: pa.DataType) -> bool:
    checks = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_decimal)
    return any(check(t) for check in checks)


def _x_from_numeric_columns(table: pa.Table, names: Sequence[str]) -> np.ndarray:
    types = {name: table.schema.field(name).type for name in names}
    bad = [f"{name!r} ({t})" for name, t in types.items() if not _is_number(t)]
    if bad:
        raise DataError(
            f"Feature columns must be numeric, but {', '.join(bad)} "
            f"{'is' if len(bad) == 1 else 'are'} not. Convert or drop "
            f"{'that column' if len(bad) == 1 else 'those columns'}, or use --label-column if one "
            f"of them is the label."
        )
    # Casting first turns nulls into NaN, which the finite check then reports by column.
    columns = [pc.cast(table.column(name), pa.float64()).to_numpy() for name in names]
    for name, column in zip(names, columns):
        _check_finite(column, f"column {name!r}")
    return np.stack(columns, axis=1)


def _x_from_list_column(column: pa.ChunkedArray, name: str) -> np.ndarray:
    arr = column.combine_chunks()
    value_type = arr.type.value_type
    if not _is_number(value_type):
        raise DataError(
            f"List column {name!r} has type {arr.type}, but its cells must be lists of numbers. "
            f"Convert the values to numbers before preparing."
        )
    if arr.null_count:
        raise DataError(
            f"List column {name!r} has {arr.null_count} empty (null) cells; drop or fill those rows."
        )
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
    if len(lengths) and lengths.min() != lengths.max():
        common = Counter(lengths.tolist()).most_common(1)[0][0]
        odd = int(np.flatnonzero(lengths != common)[0])
        raise DataError(
            f"List column {name!r} has cells of different lengths (from {lengths.min()} to "
            f"{lengths.max()}; most have {common}, row {odd} has {lengths[odd]}). Every cell must "
            f"hold the same number of values; pad or drop the odd rows."
        )
    width = int(lengths[0]) if len(lengths) else 0
    values = pc.cast(arr.flatten(), pa.float64()).to_numpy(zero_copy_only=False)
    _check_finite(values, f"list column {name!r}")
    return values.reshape(len(arr), width)


def _labels_from_arrow(column: pa.ChunkedArray, where: str) -> list[Any]:
    if pa.types.is_nested(column.type):
        raise DataError(
            f"The {where} has type {column.type}; labels must be single values such as ints or strings."
        )
    return _check_labels(column.to_pylist(), where)


def _load_npz(path: Path) -> _Raw:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("x", "y") if k not in archive.files]
            if missing:
                raise DataError(
                    f"{path.name} lacks the array(s) {', '.join(missing)} (it has "
                    f"{', '.join(archive.files) or 'none'}). Save it with "
                    f"`np.savez(path, x=features, y=labels)`."
                )
            x, y = archive["x"], archive["y"]
    except DataError:
        raise
    except Exception as exc:  # numpy raises many types (BadZipFile, ValueError, OSError, EOFError...)
        raise DataError(
            f"Cannot read {path.resolve()} as an .npz archive ({type(exc).__name__}: {exc}). The file "
            f"is corrupt or not made by `np.savez`; re-create it with `np.savez(path, x=..., y=...)` "
            f"(object arrays are not accepted)."
        ) from exc

    if x.dtype.kind not in "biuf":
        raise DataError(f"Array 'x' in {path.name} has dtype {x.dtype}; it must be numeric.")
    if x.ndim < 2:
        raise DataError(
            f"Array 'x' in {path.name} has shape {x.shape}; it needs one row per example, shape "
            f"(N, ...). For one feature per example, save x.reshape(-1, 1)."
        )
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(
            f"Array 'y' in {path.name} has shape {y.shape}; it must be one label per row of 'x', "
            f"shape ({len(x)},)."
        )
    x = x.astype(np.float64)
    _check_finite(x, "array 'x'")
    labels = _check_labels(y.tolist(), "array 'y'")
    return _Raw(x=x.reshape(len(x), math.prod(x.shape[1:])), labels=labels, shape=x.shape[1:])


# --------------------------------------------------------------------------- checks


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise DataError(
            f"{name} must be between 0 and 1 (exclusive), got {value}; e.g. 0.2 keeps 20% of the rows."
        )


def _check_shape_values(shape: tuple[int, ...]) -> None:
    if not shape or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in shape):
        raise DataError(
            f"Shape {shape} is invalid: it needs at least one dimension and every size must be a "
            f"positive integer, e.g. (1, 8, 8)."
        )


def _check_finite(values: np.ndarray, where: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        nan = int(np.isnan(values).sum())
        raise DataError(
            f"The {where} contains {int(bad.sum())} non-finite values ({nan} NaN or missing, "
            f"{int(bad.sum()) - nan} infinite). Drop or impute those rows before preparing."
        )


def _check_standardised(x: np.ndarray, mean: np.ndarray, std: np.ndarray, splits: Splits) -> None:
    """Finite inputs can still overflow: squares of 1e300 are infinite, and a network would train on NaN."""
    if np.isfinite(mean).all() and np.isfinite(std).all() and all(np.isfinite(v[0]).all() for v in splits.values()):
        return
    raise DataError(
        f"The feature values reach {np.abs(x).max():.3g}, too large to standardise in floating point (their "
        f"squares overflow). Rescale those features (divide by a constant, or take a log) before preparing."
    )


def _check_labels(labels: list[Any], where: str) -> list[Any]:
    missing = sum(1 for v in labels if v is None or (isinstance(v, float) and math.isnan(v)))
    if missing:
        raise DataError(f"The {where} has {missing} missing (null or NaN) labels; drop or fill those rows.")
    return labels


def _apply_shape(x: np.ndarray, shape: tuple[int, ...]) -> tuple[int, ...]:
    width, needed = x.shape[1], math.prod(shape)
    if width != needed:
        raise DataError(
            f"Shape {','.join(map(str, shape))} holds {needed} values per example, but the data "
            f"has {width} features per example. Pass a --shape whose sizes multiply to {width}, "
            f"or leave it out to use ({width},)."
        )
    return tuple(int(v) for v in shape)


def _encode_labels(labels: list[Any]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Map labels to indices into the sorted unique values (sorted by value, so 2 < 10)."""
    try:
        values = sorted(set(labels))
    except TypeError:  # mixed types such as 1 and "a" do not compare
        values = sorted(set(labels), key=str)
    classes = tuple(str(v) for v in values)
    if len(set(classes)) != len(classes):
        clash = next(c for c, n in Counter(classes).items() if n > 1)
        raise DataError(
            f"Different label values print as the same class {clash!r} (e.g. 1 and '1'); make the "
            f"labels one type."
        )
    if len(classes) < 2:
        raise DataError(
            f"Found only {len(classes)} class ({', '.join(map(repr, classes))}); classification needs at "
            f"least two. Check that --label-column names the label and that the file holds every class."
        )
    lookup = {v: i for i, v in enumerate(values)}
    return np.fromiter((lookup[v] for v in labels), dtype=np.int64, count=len(labels)), classes


# --------------------------------------------------------------------------- splitting & scaling


def _split_indices(
    y: np.ndarray,
    classes: tuple[str, ...],
    test_start: int | None,
    seed: int,
    val_fraction: float,
    test_fraction: float,
) -> dict[str, np.ndarray]:
    rows = np.arange(len(y))
    if test_start is None:
        # Two stratified cuts (test, then val) need 3 rows of a class so each cut sees 2.
        _check_class_sizes(y, classes, 3, "train/val/test")
        rest, test = _stratified_cut(rows, y, test_fraction, seed)
    else:
        rest, test = rows[:test_start], rows[test_start:]
        _check_class_sizes(y[rest], classes, 2, "train/val")
    train, val = _stratified_cut(rest, y, val_fraction, seed)
    return {"train": train, "val": val, "test": test}


def _check_class_sizes(y: np.ndarray, classes: tuple[str, ...], minimum: int, cuts: str) -> None:
    counts = np.bincount(y, minlength=len(classes))
    small = int(np.argmin(counts))
    if counts[small] < minimum and len(classes) > len(y) / 2 and sum(map(_fractional, classes)) > len(classes) / 2:
        raise DataError(
            f"The labels take {len(classes)} distinct values in {len(y)} rows (such as {classes[0]!r} and "
            f"{classes[-1]!r}): that looks like a regression target, and this project classifies. Name a column "
            "of class labels with --label-column, or bin the target into classes first."
        )
    if counts[small] < minimum:
        raise DataError(
            f"Class {classes[small]!r} has only {counts[small]} row(s); a stratified {cuts} split "
            f"needs at least {minimum} rows of every class. Add rows of that class or drop it."
        )


def _fractional(label: str) -> bool:
    """Whether a class label reads as a number with a fractional part (a measurement, not a class)."""
    try:
        return not float(label).is_integer()
    except ValueError:
        return False


def _stratified_cut(
    rows: np.ndarray, y: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    try:
        keep, cut = train_test_split(rows, test_size=fraction, stratify=y[rows], random_state=seed)
    except ValueError as exc:  # e.g. fewer rows in a split than there are classes
        raise DataError(
            f"Cannot split {len(rows)} rows stratified with fraction {fraction} ({exc}). Use more "
            f"rows or fewer classes, or adjust the validation/test fractions."
        ) from exc
    return np.asarray(keep), np.asarray(cut)


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean/std over axis 0 of the example shape: per channel, or per feature for (F,)."""
    per_channel = x.reshape(len(x), x.shape[1], -1)
    with np.errstate(over="ignore", invalid="ignore"):  # huge values overflow: _check_standardised says so
        mean = per_channel.mean(axis=(0, 2))
        std = per_channel.std(axis=(0, 2))
    return mean, np.where(std > 0, std, 1.0)  # constant channels are centred, not divided by 0


def _standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    broadcast = (1, -1) + (1,) * (x.ndim - 2)
    return ((x - mean.reshape(broadcast)) / std.reshape(broadcast)).astype(np.float32)


def _fingerprint(splits: Splits, shape: tuple[int, ...], classes: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    # Split sizes go in the header too: otherwise moving a row between splits could leave the bytes unchanged.
    header = {"shape": list(shape), "classes": list(classes), "counts": [len(splits[s][1]) for s in SPLITS]}
    h.update(json.dumps(header, sort_keys=True).encode())
    for split in SPLITS:
        x, y = splits[split]
        # Explicit little-endian dtypes keep the hash identical across platforms.
        h.update(np.ascontiguousarray(x, dtype="<f4").tobytes())
        h.update(np.ascontiguousarray(y, dtype="<i8").tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- writing


def _write(out_dir: Path, splits: Splits, meta: DataMeta, inputs: str) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"Cannot create the output folder {out_dir} ({exc}); choose another output folder."
        ) from exc
    # meta.json marks a complete folder: drop the old one first and write the new one
    # last, so an interrupted prepare reads as "not prepared" rather than mixing runs.
    (out_dir / META_FILE).unlink(missing_ok=True)
    for split in SPLITS:
        table = _split_table(*splits[split])
        _atomic_write(out_dir / f"{split}.parquet", lambda tmp, t=table: pq.write_table(t, tmp))
    text = json.dumps({**meta.to_json(), "inputs": inputs}, indent=2, sort_keys=True) + "\n"
    _atomic_write(out_dir / META_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _split_table(x: np.ndarray, y: np.ndarray) -> pa.Table:
    flat = x.reshape(len(x), -1).astype(np.float32)
    offsets = pa.array(np.arange(0, flat.size + 1, flat.shape[1], dtype=np.int32))
    column = pa.ListArray.from_arrays(offsets, pa.array(flat.ravel(), type=pa.float32()))
    return pa.table({"x": column, "y": pa.array(y, type=pa.int64())})


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write via a temp file in the same folder, then rename over `path` in one step."""
    # A unique hidden name (not mkstemp, which would leave the file mode 0600).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
