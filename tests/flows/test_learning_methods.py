"""`nas meta-train` and `nas search --strategy pathnet` from the CLI, on a real Prefect API."""

import json

import torch
import yaml
from mlflow.tracking import MlflowClient

from nas.cli import main
from tests.conftest import ROOT


def learned_optimizers(uri):
    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name("learned-optimizers").experiment_id])


def test_meta_train_then_search_with_the_learned_optimizer(tmp_path, digits_dir, prefect_api, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tiny = ["--data", "digits", "--tasks", "2", "--iterations", "4", "--unroll", "5", "--horizon", "10"]
    threads = torch.get_num_threads()
    assert main(["meta-train", *tiny, "--tracking-uri", uri]) == 0
    assert torch.get_num_threads() == threads  # the task ran on this thread: it must leave its thread count be
    (run,) = learned_optimizers(uri)
    run_id = run.info.run_id
    assert main(["meta-train", *tiny, "--tracking-uri", uri]) == 0
    assert len(learned_optimizers(uri)) == 1  # the same settings found their run
    assert main(["meta-train", *tiny, "--horizon", "12", "--tracking-uri", uri]) == 2  # not a multiple of unroll

    assert main(["search", "--data-dir", str(digits_dir), "--space", str(ROOT / "spaces/mlp.yaml"), "--trials", "1",
                 "--epochs", "1", "--optimizer", f"learned:{run_id}", "--tracking-uri", uri,
                 "--metrics-out", "search.json", "--plots-dir", "plots"]) == 0
    best = json.loads((tmp_path / "search.json").read_text())["best_run_id"]
    assert MlflowClient(uri).get_run(best).data.params["optimizer"] == f"learned:{run_id}"


def test_pathnet_from_the_cli(tmp_path, digits_dir, prefect_api, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = yaml.safe_load((ROOT / "spaces/pathnet.yaml").read_text())
    space["methods"]["pathnet"].update(layers=2, modules=3, max_active=2, width=4, population=4,
                                       steps_per_evaluation=2)
    (tmp_path / "fabric.yaml").write_text(yaml.safe_dump(space))
    command = ["search", "--strategy", "pathnet", "--data-dir", str(digits_dir), "--space", "fabric.yaml",
               "--trials", "4", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--metrics-out", "search.json",
               "--plots-dir", "plots"]
    assert main(command) == 0
    summary = json.loads((tmp_path / "search.json").read_text())
    assert summary["trials"] == 4 and summary["best_path"].startswith("L1:")
    assert main([*command[:-6], "--scheduler", "hyperband"]) == 2  # a tournament has no rungs
