"""The user's path on files a user brings: `nas pipeline` (search, refine, train on train+val,
evaluate: the one look at the test split) on a Parquet file with default options (no --shape,
--space auto), 30 search trials, against baselines trained on the same prepared splits.

    python bench/user_files.py [--trials 30] [--only mnist1d-flat]

Targets (issue 9): MNIST-1D as a flat table (columns x0..x39) >= 98% test; the same with its 40
columns shuffled (position carries nothing, dense networks win) >= 72%; scikit-learn's breast
cancer table >= 98% (569 rows: cross-validated, 100 epochs, as every table under 1000 rows).
Baselines: an MLP and a 1-D CNN on MNIST-1D, logistic regression and an SVC on breast cancer.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import scratch_project  # noqa: E402


def write_tables(folder: Path) -> dict[str, Path]:
    from mnist1d.data import get_dataset_args, make_dataset
    from sklearn.datasets import load_breast_cancer

    signals = make_dataset(get_dataset_args())  # the generator's defaults, made offline
    x = np.concatenate([signals["x"], signals["x_test"]])
    y = np.concatenate([signals["y"], signals["y_test"]])
    shuffled = x[:, np.random.default_rng(0).permutation(x.shape[1])]
    cancer = load_breast_cancer()
    tables = {
        "mnist1d-flat": ({f"x{i}": x[:, i] for i in range(x.shape[1])}, y),
        "mnist1d-shuffled": ({f"x{i}": shuffled[:, i] for i in range(x.shape[1])}, y),
        "breast-cancer": ({name: cancer.data[:, i] for i, name in enumerate(cancer.feature_names)}, cancer.target),
    }
    paths = {}
    for name, (columns, labels) in tables.items():
        paths[name] = folder / f"{name}.parquet"
        pq.write_table(pa.table({**columns, "label": labels}), paths[name])
    return paths


def pipeline(path: Path, trials: int) -> dict[str, dict]:
    """metrics/{search,refine,final}.json of `nas pipeline` on the file, with the defaults otherwise."""
    subprocess.run([sys.executable, "-m", "nas.cli", "pipeline", "--data", str(path), "--trials", str(trials)],
                   check=True, stdout=subprocess.DEVNULL)
    return {name: json.loads(Path(f"metrics/{name}.json").read_text()) for name in ("search", "refine", "final")}


def baselines(name: str, data_dir: Path) -> dict[str, float]:
    """Each baseline fits train+val and scores the test split of the search's own prepared data."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import SVC

    from nas.data import load_split

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (load_split(data_dir, s) for s in ("train", "val", "test"))
    x_fit, y_fit = np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val])
    if name == "breast-cancer":
        models = {"logistic regression": LogisticRegression(max_iter=5000), "SVC": SVC()}
    else:
        models = {"MLP (256, 256)": MLPClassifier((256, 256), max_iter=300, early_stopping=True, random_state=0)}
    scores = {label: float(model.fit(x_fit, y_fit).score(x_test, y_test)) for label, model in models.items()}
    if name != "breast-cancer":
        scores["1-D CNN"] = cnn_baseline(data_dir)
    return scores


def cnn_baseline(data_dir: Path) -> float:
    """Three conv blocks over the 40 features seen as a signal, trained by the project's own trainer."""
    from nas.space import Architecture, HParams, Node
    from nas.train import fit, load_data
    from nas.trial import Budget

    conv = dict(kernel_h=1, kernel_w=5, stride=1, batch_norm=True, activation="relu")
    nodes = [Node.make("input"), Node.make("signal", [0]), Node.make("conv", [1], channels=32, **conv),
             Node.make("conv", [2], channels=64, **conv), Node.make("pool", [3], kind="max", size=2),
             Node.make("conv", [4], channels=64, **conv), Node.make("flatten", [5]),
             Node.make("dense", [6], units=128, activation="relu", dropout=0.2), Node.make("head", [7])]
    hparams = HParams(optimizer="adamw", lr=3e-3, weight_decay=1e-4, batch_size=64, epochs=30)
    return float(fit(Architecture(tuple(nodes)), hparams, load_data(data_dir, "cpu"), Budget(30)).test_acc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--only", action="append", help="run this table only (repeatable)")
    args = parser.parse_args()
    folder = scratch_project("user-files")
    targets = {"mnist1d-flat": 0.98, "mnist1d-shuffled": 0.72, "breast-cancer": 0.98}
    for name, path in write_tables(folder).items():
        if args.only and name not in args.only:
            continue
        found = pipeline(path, args.trials)
        test = found["final"]["test_acc"]
        scores = baselines(name, folder / "data" / name)
        print(f"{name}: nas pipeline test {test:.4f} (target >= {targets[name]}); search's best val "
              f"{found['search']['best_val_acc']:.4f}, refined val {found['refine']['winner_val_acc']:.4f}; baselines "
              + ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
              + f"; ratio to the best baseline {test / max(scores.values()):.3f}")


if __name__ == "__main__":
    main()
