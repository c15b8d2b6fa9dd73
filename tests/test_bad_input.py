"""Bad input, as a user gives it to `nas search`: each case ends before any flow starts, with exit
code 2, at most three lines on stderr and no traceback, and leaves the store as it was.

The CLI runs in this process (the same `main` as the `nas` script), so forty cases cost seconds.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from nas.api import create_search
from nas.cli import main
from tests.conftest import ROOT

SPACE = str(ROOT / "spaces/small-cnn.yaml")
MLP = "ops: {flatten: {}, dense: {units: [16], activation: [relu], dropout: [0.0]}}\nlayout: {reduce: [flatten]}\n"


def _table(path, rows=60, features=4, **columns):
    rng = np.random.default_rng(0)
    data = {f"f{i}": rng.normal(size=rows) for i in range(features)}
    data["label"] = np.arange(rows) % 3
    data.update(columns)
    pq.write_table(pa.table(data), path)
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Files of every kind of mistake, and a store holding one earlier search that must stay intact."""
    root = tmp_path_factory.mktemp("bad-input")
    rows = 60
    files = {
        "ok": _table(root / "ok.parquet"),
        "nan": _table(root / "nan.parquet", f0=np.where(np.arange(rows) == 5, np.nan, 1.0)),
        "inf": _table(root / "inf.parquet", f1=np.where(np.arange(rows) == 7, np.inf, 1.0)),
        "text": _table(root / "text.parquet", f2=np.array(["a"] * rows)),
        "one_class": _table(root / "one-class.parquet", label=np.zeros(rows, dtype=int)),
        "huge": _table(root / "huge.parquet", f0=np.linspace(-1e300, 1e300, rows)),
        "null_labels": _table(root / "null-labels.parquet", label=pa.array([None] + [1, 2] * 29 + [1])),
        "tiny": _table(root / "tiny.parquet", rows=4, label=np.array([0, 1, 2, 3])),
    }
    pq.write_table(pa.table({"label": np.arange(rows) % 3}), root / "labels-only.parquet")
    files["labels_only"] = str(root / "labels-only.parquet")
    pq.write_table(pa.table({"f0": np.zeros(0), "label": np.zeros(0, dtype=int)}), root / "empty.parquet")
    files["empty"] = str(root / "empty.parquet")
    (root / "corrupt.parquet").write_bytes(b"PAR1 this is not parquet at all")
    files["corrupt"] = str(root / "corrupt.parquet")
    np.savez(root / "mismatch.npz", x=np.zeros((10, 4)), y=np.zeros(9))
    files["mismatch"] = str(root / "mismatch.npz")
    np.savez(root / "no-y.npz", x=np.zeros((10, 4)))
    files["no_y"] = str(root / "no-y.npz")
    (root / "table.csv").write_text("a,b\n1,2\n")
    files["csv"] = str(root / "table.csv")
    (root / "a-file").write_text("not a folder")
    spaces = {
        "ops_list": "ops: [conv, dense]\nlayout: {reduce: [flatten]}\n",
        "syntax": "ops: {dense: {units: [16, 32}\n",
        "unknown_op": "ops: {swirl: {}}\nlayout: {reduce: [flatten]}\n",
        "limit_text": f"limits: {{max_params: lots}}\n{MLP}",
        "units_text": "ops: {flatten: {}, dense: {units: many, activation: [relu], dropout: [0.0]}}\n"
                      "layout: {reduce: [flatten]}\n",
        "empty": "",
    }
    for name, text in spaces.items():
        (root / f"{name}.yaml").write_text(text)
    (root / "params-bad.yaml").write_text("search: [1, 2]\n")
    (root / "batch_zero.yaml").write_text(MLP + "hparams: {batch_size: [0, 32]}\n")
    pq.write_table(pa.table({"f0": np.arange(rows, dtype=float),
                             "label": np.random.default_rng(1).normal(size=rows)}), root / "regression.parquet")
    files["regression"] = str(root / "regression.parquet")
    old = root / "old" / "mlflow.db"  # a store of an older MLflow: its schema at another revision
    old.parent.mkdir()
    # Made in another process: MLflow keeps a store per URI for the process, checked once.
    subprocess.run([sys.executable, "-c", f"import mlflow; mlflow.MlflowClient('sqlite:///{old}').search_experiments()"],
                   check=True, capture_output=True, timeout=120)
    with sqlite3.connect(old) as db:
        db.execute("UPDATE alembic_version SET version_num = 'a0b1c2d3e4f5'")
    uri = f"sqlite:///{root}/mlflow.db"
    create_search("earlier", data=files["ok"], tracking_uri=uri, root=root, space=SPACE, trials=1,
                  epochs=1).optimize()
    return root, files, uri


def _runs(uri):
    client = MlflowClient(uri)
    experiments = client.search_experiments(view_type=ViewType.ALL)
    return sorted((r.info.run_id, r.info.status, r.info.lifecycle_stage)
                  for r in client.search_runs([e.experiment_id for e in experiments], run_view_type=ViewType.ALL))


CASES = {
    # the data
    "missing file": (["--data", "{root}/nope.parquet"], "nope.parquet"),
    "unsupported format": (["--data", "{csv}"], "Unsupported data source"),
    "no label column": (["--data", "{ok}", "--label-column", "target"], "'target' is not in"),
    "NaN feature": (["--data", "{nan}"], "non-finite"),
    "infinite feature": (["--data", "{inf}"], "infinite"),
    "text feature": (["--data", "{text}"], "must be numeric"),
    "one class": (["--data", "{one_class}"], "class"),
    "zero rows": (["--data", "{empty}"], "no rows"),
    "corrupt Parquet": (["--data", "{corrupt}"], "corrupt"),
    "npz arrays of different lengths": (["--data", "{mismatch}"], "one label per row"),
    "npz without y": (["--data", "{no_y}"], "lacks the array(s) y"),
    "values that overflow when standardised": (["--data", "{huge}"], "too large to standardise"),
    "no feature columns": (["--data", "{labels_only}"], "only the label column"),
    "missing labels": (["--data", "{null_labels}"], "missing (null or NaN) labels"),
    "too few rows to split": (["--data", "{tiny}"], "split"),
    "a shape that does not fit": (["--data", "{ok}", "--shape", "3,8,8"], "multiply to 4"),
    "a shape that is not a shape": (["--data", "{ok}", "--shape", "a,b"], "Cannot read the shape"),
    # the space
    "missing space file": (["--space", "{root}/nope.yaml"], "does not exist"),
    "space YAML syntax": (["--space", "{root}/syntax.yaml"], "syntax.yaml"),
    "ops given as a list": (["--space", "{root}/ops_list.yaml"], "ops"),
    "unknown op": (["--space", "{root}/unknown_op.yaml"], "unknown op 'swirl'"),
    "a limit that is not a number": (["--space", "{root}/limit_text.yaml"], "max_params"),
    "a domain that is not a list": (["--space", "{root}/units_text.yaml"], "units"),
    "an empty space file": (["--space", "{root}/empty.yaml"], "empty.yaml"),
    "networks too big for any limit": (["--max-params", "10"], "no valid architecture"),
    # the options
    "zero trials": (["--trials", "0"], "trials=0"),
    "trials not a number": (["--trials", "many"], "invalid int value: 'many'"),
    "zero seconds per trial": (["--max-seconds", "0"], "max_seconds=0"),
    "NaN seconds per trial": (["--max-seconds", "nan"], "max_seconds=nan"),
    "zero top-k": (["--top-k", "0"], "top_k=0"),
    "a population of one": (["--strategy", "evolution", "--population", "1"], "population=1"),
    "eta of one": (["--scheduler", "hyperband", "--eta", "1"], "eta=1"),
    "zero folds": (["--cv", "0"], "cv=0"),
    "negative seed": (["--seed", "-1"], "seed=-1"),
    "unknown strategy": (["--strategy", "nope"], "nope"),
    "unknown device": (["--device", "tpu"], "invalid choice: 'tpu'"),
    "population for a strategy without one": (["--population", "4"], "population-based"),
    "first rung longer than the last": (["--scheduler", "hyperband", "--epochs", "2", "--min-epochs", "3"],
                                          "--min-epochs 3 exceeds"),
    "warm start from an unknown experiment": (["--from-experiment", "nope"], "'nope' has no finished runs"),
    "transfer from an unknown run": (["--init-from", "nope"], "--init-from nope names neither"),
    "a controller learning rate of two": (["--strategy", "nas-rl", "--controller-lr", "2"], "controller_lr=2"),
    "malformed params file": (["--params", "{root}/params-bad.yaml"], "params-bad.yaml"),
    "a params file that does not exist": (["--params", "{root}/params-mien.yaml"], "params-mien.yaml: no such file"),
    "a batch size of zero in the space": (["--space", "{root}/batch_zero.yaml"], "hparams.batch_size allows 0"),
    "a learned optimizer that names no run": (["--optimizer", "learned:abc123"], "names no run"),
    "a negative split seed": (["--split-seed", "-1"], "split_seed=-1"),
    "a regression target": (["--data", "{regression}"], "regression target"),
    # where trials run
    "a cluster that is not an address": (["--cluster", "my-cluster"], "tcp://127.0.0.1:8786"),
    "a cluster and local workers at once": (["--cluster", "tcp://127.0.0.1:1", "--workers", "2"], "both say"),
    "zero local workers": (["--workers", "0"], "dask_workers=0"),
    "no scheduler at the cluster address": (["--cluster", "tcp://127.0.0.1:1"], "no Dask scheduler answers"),
    "PathNet on Dask workers": (["--strategy", "pathnet", "--workers", "2"], "cannot train on Dask workers"),
    # the store
    "a store where no folder can be made": (["--tracking-uri", "sqlite:///{root}/a-file/mlflow.db"], "a-file"),
    "a store of an older MLflow": (["--tracking-uri", "sqlite:///{root}/old/mlflow.db"], "-m mlflow db upgrade"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_ends_before_any_flow_with_one_short_paragraph(case, world, monkeypatch, capfd):
    root, files, uri = world
    args, says = CASES[case]
    args = [a.format(root=root, **files) for a in args]
    defaults = ["--data", files["ok"], "--space", SPACE, "--tracking-uri", uri, "--experiment", "earlier",
                "--data-dir", str(root / "data" / case.replace(" ", "-")), "--trials", "1", "--epochs", "1"]
    before = _runs(uri)
    monkeypatch.chdir(root)
    params = ["--params", args.pop(args.index("--params") + 1)] if "--params" in args else []
    args = [a for a in args if a != "--params"]
    try:
        code = main([*params, "search", *defaults, *args])  # later options win over the defaults
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capfd.readouterr().err
    assert code == 2, err
    assert says in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3, err
    assert _runs(uri) == before  # no run created, none touched


def test_every_command_on_a_store_of_an_older_mlflow_says_how_to_upgrade_it(world, capfd):
    root, _, _ = world
    for command in (["runs"], ["report", "earlier"], ["lineage", "earlier"], ["search", "--data", "digits", "--trials", "1"]):
        code = main([*command, "--tracking-uri", f"sqlite:///{root}/old/mlflow.db"])
        err = capfd.readouterr().err
        assert code == 2 and "-m mlflow db upgrade" in err and "Traceback" not in err, (command, err)
