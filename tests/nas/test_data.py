"""Tests for nas.data: real files in tmp_path, real sklearn/mnist1d data, no mocks."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nas.data import (
    DataError,
    DataMeta,
    _fingerprint,
    load_split,
    parse_shape,
    prepare,
    read_meta,
    source_name,
)

SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------- helpers


def blobs(n_per_class: int = 20, n_features: int = 6, labels=(0, 1, 2), seed: int = 0):
    """Separable toy data: feature 0 grows with the class index, the rest is noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_per_class * len(labels), n_features))
    index = np.repeat(np.arange(len(labels)), n_per_class)
    x[:, 0] += 10 * index
    return x, [labels[i] for i in index]


def write_parquet(path: Path, columns: dict) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def numeric_parquet(path: Path, **kwargs) -> Path:
    x, y = blobs(**kwargs)
    columns = {f"f{i}": x[:, i] for i in range(x.shape[1])}
    return write_parquet(path, {**columns, "label": y})


def list_parquet(path: Path, label_name: str = "label", **kwargs) -> Path:
    x, y = blobs(**kwargs)
    return write_parquet(path, {"pixels": pa.array(x.tolist(), pa.list_(pa.float64())), label_name: y})


def prepare_error(source, tmp_path: Path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        prepare(str(source), tmp_path / "out", **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------- built-in sources


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[Path, DataMeta]:
    out = tmp_path_factory.mktemp("digits")
    return out, prepare("digits", out)


def test_digits_meta(digits):
    out, meta = digits
    assert meta.name == meta.source == "digits"
    assert meta.shape == (1, 8, 8)
    assert meta.classes == tuple(str(i) for i in range(10))
    assert sum(meta.counts.values()) == 1797
    assert meta.counts == {"train": 1149, "val": 288, "test": 360}  # 64/16/20
    assert len(meta.mean) == len(meta.std) == 1
    assert len(meta.fingerprint) == 16 and int(meta.fingerprint, 16) >= 0


def test_digits_files_and_splits(digits):
    out, meta = digits
    names = sorted(p.name for p in out.iterdir())
    assert names == ["meta.json", "test.parquet", "train.parquet", "val.parquet"]
    assert read_meta(out) == meta
    on_disk = json.loads((out / "meta.json").read_text())
    assert list(on_disk) == sorted(on_disk)
    assert DataMeta.from_json(on_disk) == meta

    all_y = []
    for split in SPLITS:
        x, y = load_split(out, split)
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert x.shape == (meta.counts[split], 1, 8, 8) and y.shape == (meta.counts[split],)
        all_y.append(y)
    overall = np.bincount(np.concatenate(all_y), minlength=10) / 1797
    for y in all_y:  # stratified: every split keeps the class mix
        assert np.abs(np.bincount(y, minlength=10) / len(y) - overall).max() < 0.02


def test_digits_standardised_with_train_stats(digits):
    out, meta = digits
    x_train, _ = load_split(out, "train")
    assert abs(float(x_train.mean())) < 1e-4 and abs(float(x_train.std()) - 1) < 1e-3
    # Train statistics of the raw pixels (scaled /16 into [0, 1]).
    assert 0 < meta.mean[0] < 1 and 0 < meta.std[0] < 1
    # Files round-trip losslessly: recomputing the fingerprint from disk matches.
    splits = {s: load_split(out, s) for s in SPLITS}
    assert _fingerprint(splits, meta.shape, meta.classes) == meta.fingerprint


def test_deterministic_fingerprint(digits, tmp_path):
    _, meta = digits
    again = prepare("digits", tmp_path / "again")
    assert again.fingerprint == meta.fingerprint
    assert (tmp_path / "again" / "train.parquet").read_bytes() == (digits[0] / "train.parquet").read_bytes()
    assert prepare("digits", tmp_path / "seed1", seed=1).fingerprint != meta.fingerprint


def test_the_adding_problem_is_a_built_in_sequence_data_set_of_any_length(tmp_path):
    meta = prepare("adding:16", tmp_path / "a")
    assert meta.shape == (2, 16) and sum(meta.counts.values()) == 4000 and meta.name == "adding-16"
    x, _ = load_split(tmp_path / "a", "train")
    assert x.shape == (meta.counts["train"], 2, 16)
    assert prepare("adding:16", tmp_path / "b").fingerprint == meta.fingerprint
    assert prepare("adding", tmp_path / "c").shape == (2, 100)
    with pytest.raises(DataError, match="length 2 or more"):
        prepare("adding:1", tmp_path / "d")
    with pytest.raises(DataError, match="adding:L"):
        prepare("adding:x", tmp_path / "e")


def test_an_mnist1d_variant_is_the_same_task_drawn_with_another_seed(tmp_path):
    variant = prepare("mnist1d:7", tmp_path / "v")
    published = prepare("mnist1d", tmp_path / "p")
    assert variant.shape == published.shape and variant.counts == published.counts
    assert variant.fingerprint != published.fingerprint and variant.name == "mnist1d-7"


def test_mnist1d_offline(tmp_path):
    def no_network(*args, **kwargs):
        raise AssertionError("mnist1d must be generated offline, but a socket was opened")

    state = np.random.get_state()
    with pytest.MonkeyPatch.context() as patch:  # guards the network; not a data mock
        patch.setattr(socket.socket, "connect", no_network)
        meta = prepare("mnist1d", tmp_path)
    assert meta.counts == {"train": 3200, "val": 800, "test": 1000}
    assert meta.shape == (1, 40)
    assert meta.classes == tuple(str(i) for i in range(10))
    x, y = load_split(tmp_path, "test")
    assert x.shape == (1000, 1, 40) and y.shape == (1000,)
    # mnist1d reseeds numpy's global generator; prepare must not leak that.
    assert np.array_equal(np.random.get_state()[1], state[1])


# --------------------------------------------------------------------------- user files


def test_parquet_numeric_columns(tmp_path):
    meta = prepare(str(numeric_parquet(tmp_path / "toy.parquet")), tmp_path / "out")
    assert meta.name == "toy" and meta.source == str((tmp_path / "toy.parquet").resolve())
    assert meta.shape == (6,) and len(meta.mean) == len(meta.std) == 6
    assert meta.classes == ("0", "1", "2") and sum(meta.counts.values()) == 60
    x, y = load_split(tmp_path / "out", "train")
    assert x.shape == (meta.counts["train"], 6)
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-5)  # per-feature standardisation
    np.testing.assert_allclose(x.std(axis=0), 1, atol=1e-4)


def test_a_current_folder_is_reused_and_a_changed_file_prepared_again(tmp_path):
    source = numeric_parquet(tmp_path / "toy.parquet")
    first = prepare(str(source), tmp_path / "out")
    written = (tmp_path / "out" / "train.parquet").stat().st_mtime_ns
    assert prepare(str(source), tmp_path / "out") == first  # same inputs: nothing read or written again
    assert (tmp_path / "out" / "train.parquet").stat().st_mtime_ns == written
    assert prepare(str(source), tmp_path / "out", seed=1).fingerprint != first.fingerprint  # another split
    table = pq.read_table(source)
    pq.write_table(table.set_column(0, table.column_names[0], pa.array([7.0] * table.num_rows)), source)
    assert prepare(str(source), tmp_path / "out").fingerprint != first.fingerprint  # the file changed


def test_parquet_list_column_with_shape(tmp_path):
    source = list_parquet(tmp_path / "seq.parquet", n_features=6)
    meta = prepare(str(source), tmp_path / "out", shape=(2, 3))
    assert meta.shape == (2, 3) and len(meta.mean) == 2  # per channel
    x, _ = load_split(tmp_path / "out", "val")
    assert x.shape == (meta.counts["val"], 2, 3)
    assert prepare(str(source), tmp_path / "flat").shape == (6,)


def test_npz(tmp_path):
    x, y = blobs(n_features=8)
    np.savez(tmp_path / "arr.npz", x=x.reshape(-1, 2, 4), y=np.array(y))
    meta = prepare(str(tmp_path / "arr.npz"), tmp_path / "out")
    assert meta.name == "arr" and meta.shape == (2, 4) and len(meta.mean) == 2
    assert load_split(tmp_path / "out", "test")[0].shape == (meta.counts["test"], 2, 4)
    assert prepare(str(tmp_path / "arr.npz"), tmp_path / "o2", shape=(8,)).shape == (8,)


@pytest.mark.parametrize("kind", ["parquet", "npz"])
def test_string_labels(tmp_path, kind):
    x, y = blobs(labels=("emu", "cat", "dog"))
    path = tmp_path / f"animals.{kind}"
    if kind == "npz":
        np.savez(path, x=x, y=np.array(y))
    else:
        list_parquet(path, labels=("emu", "cat", "dog"))
    meta = prepare(str(path), tmp_path / "out")
    assert meta.classes == ("cat", "dog", "emu")
    xs, ys = load_split(tmp_path / "out", "train")
    # Feature 0 grows with the original order emu < cat < dog; check labels follow the rows.
    means = {meta.classes[c]: xs[ys == c, 0].mean() for c in range(3)}
    assert means["emu"] < means["cat"] < means["dog"]


def test_int_labels_sort_by_value(tmp_path):
    x, y = blobs(labels=(10, 2, 7))
    np.savez(tmp_path / "ints.npz", x=x, y=np.array(y))
    assert prepare(str(tmp_path / "ints.npz"), tmp_path / "out").classes == ("2", "7", "10")


# --------------------------------------------------------------------------- small helpers


def test_parse_shape():
    assert parse_shape("1,8,8") == (1, 8, 8)
    assert parse_shape(" (1, 40) ") == (1, 40)
    assert parse_shape("40") == (40,)
    for junk in ["", "a,b", "1,,8", "1.5,2", "-1,3", "0,4", "1x8"]:
        with pytest.raises(DataError, match="(?i)shape"):
            parse_shape(junk)


@given(st.lists(st.integers(1, 10_000), min_size=1, max_size=5))
def test_parse_shape_round_trips(sizes):
    assert parse_shape(",".join(map(str, sizes))) == tuple(sizes)


def test_source_name():
    assert source_name("digits") == "digits"
    assert source_name("mnist1d") == "mnist1d"
    assert source_name("/some/where/cells.parquet") == "cells"
    assert source_name("arr.npz") == "arr"
    with pytest.raises(DataError, match=r"\.parquet"):
        source_name("table.csv")


# --------------------------------------------------------------------------- errors


def test_unsupported_source(tmp_path):
    message = prepare_error("table.csv", tmp_path)
    assert "table.csv" in message and "digits" in message and ".parquet" in message and ".npz" in message


def test_missing_file(tmp_path):
    message = prepare_error(tmp_path / "nope.parquet", tmp_path)
    assert str(tmp_path / "nope.parquet") in message and "--data accepts" in message


def test_missing_label_column(tmp_path):
    source = numeric_parquet(tmp_path / "toy.parquet")
    message = prepare_error(source, tmp_path, label_column="target")
    assert "'target'" in message and "f0" in message and "label" in message and "--label-column" in message


def test_non_numeric_column(tmp_path):
    x, y = blobs()
    source = write_parquet(tmp_path / "t.parquet", {"a": x[:, 0], "colour": ["red"] * len(y), "label": y})
    message = prepare_error(source, tmp_path)
    assert "'colour'" in message and "string" in message


@pytest.mark.parametrize("kind", ["parquet", "npz"])
def test_non_finite_values(tmp_path, kind):
    x, y = blobs()
    x[:3, 1] = np.nan
    x[5, 1] = np.inf
    if kind == "npz":
        np.savez(tmp_path / "bad.npz", x=x, y=np.array(y))
        where = "'x'"
    else:
        write_parquet(tmp_path / "bad.parquet", {"f0": x[:, 0], "f1": x[:, 1], "label": y})
        where = "'f1'"
    message = prepare_error(tmp_path / f"bad.{kind}", tmp_path)
    assert where in message and "4 non-finite" in message and "3 NaN" in message and "1 infinite" in message


def test_null_feature_reported_as_missing(tmp_path):
    source = write_parquet(tmp_path / "t.parquet", {"f": [1.0, None] * 10, "label": [0, 1] * 10})
    assert "'f'" in prepare_error(source, tmp_path)


def test_single_class(tmp_path):
    x, y = blobs(labels=("only",))
    np.savez(tmp_path / "one.npz", x=x, y=np.array(y))
    message = prepare_error(tmp_path / "one.npz", tmp_path)
    assert "'only'" in message and "at least two" in message


def test_class_too_small(tmp_path):
    x, y = blobs()
    x, y = np.vstack([x, x[:2]]), y + ["rare", "rare"]
    np.savez(tmp_path / "rare.npz", x=x, y=np.array([str(v) for v in y]))
    message = prepare_error(tmp_path / "rare.npz", tmp_path)
    assert "'rare'" in message and "only 2" in message and "at least 3" in message


def test_shape_mismatch(tmp_path):
    source = list_parquet(tmp_path / "seq.parquet", n_features=6)
    message = prepare_error(source, tmp_path, shape=(1, 8, 8))
    assert "64" in message and "6 features" in message


def test_parquet_without_features(tmp_path):
    source = write_parquet(tmp_path / "t.parquet", {"label": [0, 1] * 10})
    assert "numeric feature columns or exactly one list column" in prepare_error(source, tmp_path)


def test_parquet_list_plus_other_columns(tmp_path):
    source = write_parquet(tmp_path / "t.parquet", {"a": [[1.0]] * 20, "b": [1.0] * 20, "label": [0, 1] * 10})
    message = prepare_error(source, tmp_path)
    assert "'a'" in message and "exactly one list column" in message


def test_list_cells_of_different_lengths(tmp_path):
    cells = [[1.0, 2.0, 3.0]] * 19 + [[1.0, 2.0]]
    source = write_parquet(tmp_path / "t.parquet", {"seq": cells, "label": [0, 1] * 10})
    message = prepare_error(source, tmp_path)
    assert "'seq'" in message and "different lengths" in message and "row 19 has 2" in message


@pytest.mark.parametrize("suffix", [".parquet", ".npz"])
def test_corrupt_file(tmp_path, suffix):
    path = tmp_path / f"junk{suffix}"
    path.write_bytes(np.random.default_rng(0).bytes(512))
    message = prepare_error(path, tmp_path)
    assert str(path) in message and "corrupt" in message


def test_npz_missing_array(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((4, 2)), labels=np.zeros(4))
    message = prepare_error(tmp_path / "a.npz", tmp_path)
    assert "y" in message and "labels" in message and "np.savez" in message


def test_bad_fraction(tmp_path):
    assert "val_fraction" in prepare_error("digits", tmp_path, val_fraction=1.5)


def test_no_rows(tmp_path):
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 3)), y=np.zeros(0))
    assert "no rows" in prepare_error(tmp_path / "empty.npz", tmp_path)


def test_failed_prepare_keeps_existing_folder(digits, tmp_path):
    out, meta = digits
    with pytest.raises(DataError):
        prepare(str(tmp_path / "missing.npz"), out)
    assert read_meta(out) == meta
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left behind


# --------------------------------------------------------------------------- reading back


def test_read_meta_missing(tmp_path):
    with pytest.raises(DataError, match="nas prepare --data"):
        read_meta(tmp_path)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"name": "x"}'])
def test_read_meta_corrupt(tmp_path, text):
    (tmp_path / "meta.json").write_text(text)
    with pytest.raises(DataError, match="nas prepare --data") as info:
        read_meta(tmp_path)
    assert "meta.json" in str(info.value)


def test_load_split_problems(tmp_path):
    prepare(str(numeric_parquet(tmp_path / "toy.parquet")), tmp_path / "out")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="Unknown split"):
        load_split(out, "holdout")
    (out / "val.parquet").write_bytes(b"garbage")
    with pytest.raises(DataError, match="val.parquet.*corrupt"):
        load_split(out, "val")
    (out / "test.parquet").unlink()
    with pytest.raises(DataError, match="test split is missing"):
        load_split(out, "test")
    (out / "train.parquet").replace(out / "val.parquet")  # right format, wrong row count
    with pytest.raises(DataError, match="rows but meta.json says"):
        load_split(out, "val")
