"""PathNet as a search of the lineage store: rounds as trials, checkpoints, resume, transfer."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_digits

from nas.build import build
from nas.config import ConfigError, DataConfig, SearchConfig
from nas.lineage import LineageStore
from nas.pathnet import Path
from nas.pathnet_search import STATE_FILE, path_architecture, pathnet_settings, run_pathnet, state_from_bytes
from nas.space import SearchSpace
from tests.conftest import ROOT

FABRIC = {"layers": 2, "modules": 4, "module": "conv", "width": 4, "max_active": 2,
          "population": 4, "steps_per_evaluation": 3, "batch_size": 16, "lr": 0.1}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Two tasks (digits 0-4, digits 5-9) and a space file with a tiny fabric."""
    root = tmp_path_factory.mktemp("pathnet")
    x, y = load_digits(return_X_y=True)
    x = x.reshape(-1, 1, 8, 8).astype("float32")
    np.savez(root / "low.npz", x=x[y < 5], y=y[y < 5])
    np.savez(root / "high.npz", x=x[y >= 5], y=y[y >= 5] - 5)
    raw = yaml.safe_load((ROOT / "spaces/conv1d.yaml").read_text())
    raw["methods"] = {"pathnet": FABRIC}
    (root / "fabric.yaml").write_text(yaml.safe_dump(raw))
    return root


def config(project, source: str, **changes) -> SearchConfig:
    return SearchConfig(**{"data": DataConfig(source=str(project / source), data_dir=str(project / "data" / source)),
                           "space": str(project / "fabric.yaml"), "strategy": "pathnet", "trials": 6,
                           "experiment": source, "tracking_uri": f"sqlite:///{project}/mlflow.db", **changes})


def test_every_round_is_a_trial_with_its_parent_and_a_rerun_trains_nothing(project):
    first = run_pathnet(config(project, "low.npz"), project)
    assert first["trials"] == 6 and first["best_val_acc"] > 0.2  # five classes: chance is 0.2
    store = LineageStore(first["tracking_uri"], "low.npz", project)
    rounds = store.trials_of(first["parent_run_id"])
    assert len(rounds) == 6 and {e.candidate.info["round"] for e in rounds} == set(range(6))
    by_run = {e.run_id: e for e in rounds}
    # A round's parent is the earlier round whose mutated child its winner is.
    for e in rounds:
        for parent in e.candidate.parents:
            assert by_run[parent].candidate.info["round"] < e.candidate.info["round"]
            assert by_run[parent].candidate.info["child"] == e.candidate.info["path"]
    # The sentence is the network the path computes: it builds, with the path's module count.
    best = by_run[first["best_run_id"]]
    path = Path.from_sentence(best.candidate.info["path"])
    assert best.candidate.arch == path_architecture(pathnet_settings(SearchSpace.load(project / "fabric.yaml"))[0],
                                                    path, (1, 8, 8))
    build(best.candidate.arch, (1, 8, 8), 5)
    assert sum(n.op == "conv" for n in best.candidate.arch.nodes) == sum(len(layer) for layer in path.layers)

    runs = len(MlflowClient(first["tracking_uri"]).search_runs([store.experiment_id]))
    again = run_pathnet(config(project, "low.npz"), project)
    assert again["parent_run_id"] == first["parent_run_id"] and again["best_run_id"] == first["best_run_id"]
    assert len(MlflowClient(first["tracking_uri"]).search_runs([store.experiment_id])) == runs


def test_more_rounds_continue_from_the_checkpoint_as_an_uninterrupted_search(project):
    # 6 rounds, then the same search with 10: it continues from the saved state, and ends
    # as 10 rounds straight through do.
    straight = run_pathnet(config(project, "low.npz", trials=10, experiment="straight"), project)
    first = run_pathnet(config(project, "low.npz", trials=6, experiment="resumed"), project)
    store = LineageStore(straight["tracking_uri"], "resumed", project)
    assert state_from_bytes(store.read_bytes(first["parent_run_id"], STATE_FILE))["tournament"]["round"] == 6
    resumed = run_pathnet(config(project, "low.npz", trials=10, experiment="resumed"), project)
    assert resumed["parent_run_id"] == first["parent_run_id"]
    assert (resumed["best_path"], resumed["best_val_acc"]) == (straight["best_path"], straight["best_val_acc"])
    assert len(store.trials_of(first["parent_run_id"])) == 10  # the first six rounds were not recorded twice


def test_task_b_reuses_the_frozen_path_of_task_a(project):
    first = run_pathnet(config(project, "low.npz"), project)
    second = run_pathnet(config(project, "high.npz", init_from="low.npz"), project)
    assert second["transfer_from"] == first["parent_run_id"] and second["frozen_modules"] >= 2
    store = LineageStore(second["tracking_uri"], "high.npz", project)
    rounds = store.trials_of(second["parent_run_id"])
    assert all(first["best_run_id"] in e.candidate.parents for e in rounds)
    # The frozen modules are bit-identical to task A's.
    a = state_from_bytes(store.read_bytes(first["parent_run_id"], STATE_FILE))["tournament"]["fabric"]
    b = state_from_bytes(store.read_bytes(second["parent_run_id"], STATE_FILE))["tournament"]["fabric"]
    frozen = [f"layers.{layer}.{m}." for layer, m in b["frozen"]]
    keys = [k for k in a["weights"] if any(k.startswith(f) for f in frozen)]
    assert keys and all(a["weights"][k].equal(b["weights"][k]) for k in keys)
    with pytest.raises(ConfigError, match="no PathNet search"):
        run_pathnet(config(project, "high.npz", init_from="nothing-here", experiment="x"), project)
