"""The search flow end to end: real Prefect API, real MLflow store, real (tiny) training."""

import json
import subprocess
import sys
import time
from dataclasses import replace

import mlflow
import pytest

from flows.search import run_search
from nas.config import DataConfig, SearchConfig
from nas.lineage import LineageStore
from tests.conftest import ROOT

DESIGN_TAGS = ["nas.arch_id", "nas.trial_key", "nas.strategy", "nas.parents", "nas.generation",
               "nas.budget", "nas.data_fp", "nas.status", "prefect.flow_run_id", "prefect.task_run_id"]


def config(tmp_path, digits_dir, **changes):
    tmp_path.mkdir(parents=True, exist_ok=True)
    base = dict(data=DataConfig(source="digits", data_dir=str(digits_dir)), space=str(ROOT / "spaces/cnn.yaml"),
                trials=4, epochs=2, concurrency=2, seed=3, experiment="flow-test",
                tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    return SearchConfig(**{**base, **changes})


def trial_runs(cfg):
    client = mlflow.MlflowClient(cfg.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.experiment)
    return client.search_runs([experiment.experiment_id], "tags.`nas.kind` = 'trial'")


def test_search_records_every_trial_and_a_repeat_retrains_nothing(tmp_path, digits_dir, prefect_api):
    cfg = config(tmp_path, digits_dir)
    started = time.perf_counter()
    first = run_search(cfg)
    first_seconds = time.perf_counter() - started
    assert first["trials"] == 4 and first["best_val_acc"] > 0.3
    runs = trial_runs(cfg)
    assert len(runs) == 4
    for run in runs:
        assert set(DESIGN_TAGS) <= set(run.data.tags), set(DESIGN_TAGS) - set(run.data.tags)
        assert run.data.tags["mlflow.parentRunId"] == first["parent_run_id"]
        assert run.data.tags["nas.strategy"] == "random"
        assert len(mlflow.MlflowClient(cfg.tracking_uri).get_metric_history(run.info.run_id, "val_acc")) >= 2
    artifacts = {a.path for a in mlflow.MlflowClient(cfg.tracking_uri).list_artifacts(runs[0].info.run_id)}
    assert {"architecture.json", "weights.safetensors"} <= artifacts

    started = time.perf_counter()
    again = run_search(cfg)
    assert time.perf_counter() - started < first_seconds
    assert {r.info.run_id for r in trial_runs(cfg)} == {r.info.run_id for r in runs}
    assert again["best_run_id"] == first["best_run_id"]
    assert again["parent_run_id"] == first["parent_run_id"]
    # the best network is a loadable MLflow model on the search's run
    search_run = mlflow.MlflowClient(cfg.tracking_uri).get_run(first["parent_run_id"])
    assert search_run.data.tags["nas.model_of"] == first["best_run_id"]
    mlflow.set_tracking_uri(cfg.tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(search_run.data.tags["nas.model_uri"]).unwrap_python_model().model
    finally:
        mlflow.set_tracking_uri(None)
    assert sum(p.numel() for p in model.parameters()) == first["best_params"]


def test_report_test_after_the_same_search_without_it_measures_the_stored_trials(tmp_path, digits_dir,
                                                                                 prefect_api):
    cfg = config(tmp_path, digits_dir, trials=2, epochs=1, experiment="test-later")
    run_search(cfg)
    trained = {r.info.run_id for r in trial_runs(cfg)}
    assert all("test_acc" not in r.data.metrics for r in trial_runs(cfg))
    measured = run_search(replace(cfg, report_test=True))
    assert {r.info.run_id for r in trial_runs(cfg)} == trained  # measured, not trained again
    assert all(0 < r.data.metrics["test_acc"] <= 1 for r in trial_runs(cfg))
    assert measured["best_test_acc"] == mlflow.MlflowClient(cfg.tracking_uri).get_run(
        measured["best_run_id"]).data.metrics["test_acc"]


def test_failed_candidates_do_not_stop_the_search(tmp_path, digits_dir, prefect_api):
    # A parameter limit this low fails every network bigger than a linear classifier or so.
    cfg = config(tmp_path, digits_dir, trials=6, epochs=1, max_params=3000, experiment="failures")
    summary = run_search(cfg)
    assert summary["trials"] == 6
    statuses = [r.data.tags["nas.status"] for r in trial_runs(cfg)]
    assert statuses.count("failed") == summary["failed"] > 0
    failed = [r for r in trial_runs(cfg) if r.data.tags["nas.status"] == "failed"]
    assert all("max_params" in r.data.tags["nas.reason"] or "parameters" in r.data.tags["nas.reason"]
               for r in failed)


def test_same_seed_same_search(tmp_path, digits_dir, prefect_api):
    a = run_search(config(tmp_path / "a", digits_dir, trials=2, epochs=1))
    b = run_search(config(tmp_path / "b", digits_dir, trials=2, epochs=1))
    assert (a["best_arch_id"], a["best_val_acc"], a["best_params"]) == \
           (b["best_arch_id"], b["best_val_acc"], b["best_params"])
    store = LineageStore(f"sqlite:///{tmp_path}/a/mlflow.db", "flow-test")
    assert len(store.history()) == 2


@pytest.mark.parametrize("strategy", ["grid", "codeepneat", "bayes"])
def test_other_strategies_run_through_the_flow(tmp_path, digits_dir, prefect_api, strategy):
    trials = 8 if strategy == "bayes" else 4  # bayes: random until five results are told, then the model's
    cfg = config(tmp_path, digits_dir, strategy=strategy, trials=trials, epochs=1, experiment=strategy,
                 space=str(ROOT / ("spaces/mlp.yaml" if strategy == "grid" else "spaces/cnn.yaml")))
    assert run_search(cfg)["trials"] == trials
    if strategy == "bayes":
        proposals = [r.data.tags["nas.proposal"] for r in trial_runs(cfg)]
        assert proposals.count("random") == 6 and proposals.count("model") == 2  # batches of two
    if strategy == "codeepneat":  # assembled networks name the genomes they came from
        for run in trial_runs(cfg):
            assert {"nas.blueprint", "nas.modules", "nas.species"} <= set(run.data.tags)


@pytest.mark.parametrize("strategy, asynchronous", [("evolution", False), ("aging-evolution", False),
                                                    ("evolution", True)])
def test_evolution_records_parents_mutations_and_inherits_weights(tmp_path, digits_dir, prefect_api, strategy,
                                                                    asynchronous):
    cfg = config(tmp_path, digits_dir, strategy=strategy, trials=8, epochs=2, population=4,
                 space=str(ROOT / "spaces/cnn.yaml"), experiment=strategy, asynchronous=asynchronous)
    assert run_search(cfg)["trials"] == 8
    runs = {r.info.run_id: r for r in trial_runs(cfg)}
    children = [r for r in runs.values() if r.data.tags.get("nas.mutation")]
    # 4 children were trained; two identical ones (say, the identity mutation of one parent
    # twice) are one trial with one run, so there may be fewer runs than children.
    assert 3 <= len(children) <= 4 and len(runs) == 4 + len(children)
    for child in children:
        parents = json.loads(child.data.tags["nas.parents"])
        assert len(parents) == 1 and parents[0] in runs  # the parent is a run of this search
        assert int(child.data.tags["nas.generation"]) == int(runs[parents[0]].data.tags["nas.generation"]) + 1
    inheriting = [c for c in children if c.data.tags.get("nas.inherit_from")]
    assert all(int(c.data.tags.get("nas.inherited_tensors", 0)) > 0 for c in inheriting)


def test_evolution_warm_starts_from_another_experiments_best_runs(tmp_path, digits_dir, prefect_api):
    seeds = config(tmp_path, digits_dir, trials=4, epochs=1, experiment="seeds")
    run_search(seeds)
    seed_runs = {r.info.run_id for r in trial_runs(seeds)}
    cfg = config(tmp_path, digits_dir, strategy="evolution", trials=3, epochs=1, population=3, experiment="warm",
                 from_experiment="seeds", top_k=3)
    run_search(cfg)
    runs = trial_runs(cfg)
    assert all("nas.mutation" in r.data.tags for r in runs)  # no initial individuals: all are children
    parents = {json.loads(r.data.tags["nas.parents"])[0] for r in runs}
    assert parents <= seed_runs | {r.info.run_id for r in runs} and parents & seed_runs
    with pytest.raises(ValueError, match="no finished runs"):
        run_search(config(tmp_path, digits_dir, strategy="evolution", from_experiment="nope"))


def test_lineage_command_draws_and_logs_the_family_tree(tmp_path, digits_dir, prefect_api):
    cfg = config(tmp_path, digits_dir, strategy="evolution", trials=5, epochs=1, population=3, experiment="tree")
    summary = run_search(cfg)
    out = tmp_path / "tree.png"
    result = subprocess.run([sys.executable, "-m", "nas.cli", "lineage", "tree", "--out", str(out),
                             "--tracking-uri", cfg.tracking_uri], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes().startswith(b"\x89PNG")
    logged = {a.path for a in mlflow.MlflowClient(cfg.tracking_uri).list_artifacts(summary["parent_run_id"])}
    assert "tree.png" in logged
