"""Hyperband, refinement and the whole pipeline through the real flows, Prefect API and MLflow store."""

import json
import os
from dataclasses import replace

import mlflow
import numpy as np

from flows.pipeline import run_pipeline
from flows.refine import run_refine
from flows.search import run_search
from nas.cli import main as nas
from nas.config import RefineConfig
from nas.data import load_split
from nas.lineage import LineageStore
from tests.conftest import ROOT
from tests.flows.test_search import config, trial_runs

TINY_REFINE = RefineConfig(top_k=2, trials=2, hparams={"lr": [2e-3, 5e-3], "epochs": [3]})


def test_hyperband_promotions_continue_their_checkpoints(tmp_path, digits_dir, prefect_api):
    cfg = config(tmp_path, digits_dir, scheduler="hyperband", trials=12, epochs=9, min_epochs=1,
                 experiment="hyperband")
    assert run_search(cfg)["trials"] == 12
    store = LineageStore(cfg.tracking_uri, cfg.experiment)
    runs = {e.run_id: e for e in store.history()}
    promoted = [e for e in runs.values() if e.candidate.resume_from]
    assert promoted
    for e in promoted:
        rung = runs[e.candidate.resume_from]
        assert e.resumed_at == rung.epochs_trained == rung.candidate.budget.epochs
        assert e.epochs_trained == e.candidate.budget.epochs > rung.epochs_trained
        assert e.val_accs[:rung.epochs_trained] == rung.val_accs  # the curve goes on where the rung stopped
        assert store.checkpoint(rung.run_id)["epoch"] == rung.epochs_trained
    tags = {r.info.run_id: r.data.tags for r in trial_runs(cfg)}
    assert all(tags[e.run_id]["nas.resume_from"] == e.candidate.resume_from for e in promoted)
    assert {t["nas.rung"] for t in tags.values()} >= {"0", "1"}


def test_successive_halving_over_bayes_is_bohb_like(tmp_path, digits_dir, prefect_api):
    cfg = config(tmp_path, digits_dir, strategy="bayes", scheduler="successive-halving", trials=10, epochs=4,
                 min_epochs=1, eta=2, experiment="bohb")
    assert run_search(cfg)["trials"] == 10
    history = LineageStore(cfg.tracking_uri, cfg.experiment).history()
    assert {e.candidate.budget.epochs for e in history} >= {1, 2}
    assert all(e.candidate.hparams.epochs == 4 for e in history)


def test_bayesian_refinement_rerun_at_another_concurrency_trains_nothing_new(tmp_path, digits_dir, prefect_api):
    space = str(ROOT / "spaces/small-cnn.yaml")
    cfg = config(tmp_path, digits_dir, trials=2, epochs=1, experiment="bayes-refine", space=space, concurrency=2)
    search = run_search(cfg)
    refine = RefineConfig(top_k=1, trials=6, method="bayes", hparams={"lr": {"log": [1e-3, 1e-2]}, "epochs": [1]},
                          ensemble=1)
    refined = run_refine(cfg, refine, search["parent_run_id"])
    trained = len(trial_runs(cfg))
    # Bayesian proposals depend on the results heard before each ask: the rerun asks in the first run's rounds.
    assert run_refine(replace(cfg, concurrency=1), refine, search["parent_run_id"]) == refined
    assert len(trial_runs(cfg)) == trained == 2 + 6


def test_batched_refinement_trains_a_round_as_one_task_and_records_each_setting(tmp_path, digits_dir,
                                                                                 prefect_api):
    space = tmp_path / "no-dropout.yaml"  # dropout trains alone (nas.batched)
    space.write_text((ROOT / "spaces/cnn.yaml").read_text().replace("dropout: [0.0, 0.1, 0.3]", "dropout: [0.0]"))
    cfg = config(tmp_path, digits_dir, trials=2, epochs=1, experiment="batched-refine", space=str(space))
    search = run_search(cfg)
    refine = RefineConfig(top_k=1, trials=2, hparams={"lr": [2e-3, 5e-3], "epochs": [2]}, batched=True, ensemble=1)
    refined = run_refine(cfg, refine, search["parent_run_id"])
    runs = [r for r in trial_runs(cfg) if r.data.tags["nas.strategy"] == "refine-grid"]
    assert refined["refine_trials"] == 2 and len(runs) == 2
    assert all(r.info.status == "FINISHED" for r in runs)
    assert len({r.data.tags["prefect.task_run_id"] for r in runs}) == 1  # one train-group task trained both
    assert sorted(r.data.params["lr"] for r in runs) == ["0.002", "0.005"]
    assert run_refine(cfg, refine, search["parent_run_id"]) == refined  # a rerun: cached, nothing new
    assert len(trial_runs(cfg)) == 2 + 2


def test_pipeline_registers_a_model_that_reproduces_its_test_accuracy(tmp_path, digits_dir, prefect_api,
                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config(tmp_path, digits_dir, trials=4, epochs=2, experiment="pipeline")
    result = run_pipeline(cfg, TINY_REFINE, model_name="digits-net")
    refined, final = result["refine"], result["final"]
    assert refined["refine_trials"] == 4 and refined["search_run_id"] == result["search"]["parent_run_id"]

    client = mlflow.MlflowClient(cfg.tracking_uri)
    trials = {r.info.run_id: r for r in trial_runs(cfg)}
    refinements = [r for r in trials.values() if r.data.tags["nas.strategy"] == "refine-grid"]
    assert len(refinements) == 4
    for run in refinements:  # children of the architecture's search run, judged on validation alone
        parent = trials[run.data.tags["mlflow.parentRunId"]]
        assert parent.data.tags["nas.strategy"] == "random"
        assert json.loads(run.data.tags["nas.parents"]) == [parent.info.run_id]
        assert run.data.tags["nas.arch_id"] == parent.data.tags["nas.arch_id"]
        assert "test_acc" not in run.data.metrics
    final_run = client.get_run(final["final_run_id"])
    assert final_run.data.tags["nas.kind"] == "final" and final_run.info.run_id not in trials
    assert final_run.data.metrics["test_acc"] == final["test_acc"]  # measured once, by evaluate
    seeds = [client.get_run(r) for r in refined["final_run_ids"]]  # the winner's recipe, three seeds
    assert len(seeds) == TINY_REFINE.ensemble == 3 and seeds[0].info.run_id == final_run.info.run_id
    assert all(r.data.tags["nas.kind"] == "final" and r.data.tags["nas.arch_id"] == refined["arch_id"] for r in seeds)
    assert len({r.data.tags["nas.trial_key"] for r in seeds}) == 3

    version = client.get_model_version("digits-net", final["model_version"])
    assert version.tags["nas.arch_id"] == refined["arch_id"] and version.tags["nas.source_run"] == final_run.info.run_id
    assert client.get_model_version_by_alias("digits-net", "champion").version == version.version
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.tracking_uri)
    model = mlflow.pyfunc.load_model("models:/digits-net@champion")  # as a user would, no pickle allowed
    assert os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"
    x, y = load_split(digits_dir, "test")
    assert np.mean(model.predict(x).argmax(1) == y) == final["test_acc"] > 0.5  # the recorded accuracy, reproduced
    # The registered model averages the seeds' own logged models.
    members = [mlflow.pyfunc.load_model(r.data.tags["nas.model_uri"]).predict(x) for r in seeds]
    assert np.allclose(model.predict(x), np.mean(members, axis=0), atol=1e-6)

    again = run_pipeline(cfg, TINY_REFINE, model_name="digits-net")  # everything cached: one version, same numbers
    assert again["final"] == final
    assert len(client.search_model_versions("name = 'digits-net'")) == 1
    one = run_pipeline(cfg, replace(TINY_REFINE, ensemble=1), model_name="digits-net")  # the first seed alone
    assert one["refine"]["model_uri"] == seeds[0].data.tags["nas.model_uri"] and one["final"]["model_version"] == "2"

    assert nas(["report", "pipeline", "--tracking-uri", cfg.tracking_uri, "--out-dir", str(tmp_path / "r")]) == 0
    pngs = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert pngs == ["pareto-pipeline.png", "trajectory-pipeline.png"]
    logged = {a.path for a in client.list_artifacts(result["search"]["parent_run_id"])}
    assert set(pngs) <= logged


def test_a_user_error_inside_a_flow_reads_as_one_line_without_tracebacks(tmp_path, digits_dir, prefect_api,
                                                                        monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)  # every trial fails its time limit, so refinement has nothing to refine
    code = nas(["pipeline", "--data-dir", str(digits_dir), "--space", str(ROOT / "spaces/small-cnn.yaml"),
                "--trials", "2", "--epochs", "1", "--max-seconds", "0.0001", "--experiment", "no-winner",
                "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    err = capfd.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("nas pipeline: search run ")
