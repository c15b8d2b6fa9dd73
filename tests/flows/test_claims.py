"""Rows of the loop issue's table, through the CLI: two processes on one store never train
one trial twice, a search whose trials all fail ends cleanly saying why, and CoDeepNEAT
reaches its budget through repeats."""

import json
import os
import shutil
import subprocess
import sys
from collections import Counter

import mlflow

from tests.conftest import ROOT


def search_command(tmp_path, digits_dir, experiment, *options):
    return [sys.executable, "-m", "nas.cli", "search", "--data-dir", str(digits_dir),
            "--space", str(ROOT / "spaces/small-cnn.yaml"), "--experiment", experiment,
            "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", *options]


def nas(env, tmp_path, command):
    """The CLI `command` against the tests' Prefect server."""
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def runs(tmp_path, experiment, deleted=False):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    view = mlflow.entities.ViewType.DELETED_ONLY if deleted else mlflow.entities.ViewType.ACTIVE_ONLY
    return client.search_runs([experiment_id], "tags.`nas.kind` = 'trial'", run_view_type=view)


def test_two_processes_on_one_store_train_each_trial_once(tmp_path, digits_dir):
    command = search_command(tmp_path, digits_dir, "two", "--trials", "6", "--epochs", "2", "--seed", "4",
                             "--concurrency", "2")
    # Each its own Prefect home: only the lineage store is shared, as between two machines' users.
    processes = [subprocess.Popen(command + ["--metrics-out", str(tmp_path / f"search{i}.json")], cwd=tmp_path,
                                  env={**os.environ, "PREFECT_HOME": str(tmp_path / f"prefect{i}")},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for i in range(2)]
    for process in processes:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
    trials = runs(tmp_path, "two")
    finished = [r for r in trials if r.info.status == "FINISHED"]
    keys = Counter(r.data.tags["nas.trial_key"] for r in finished)
    assert len(keys) == 6 and set(keys.values()) == {1}, keys
    # An attempt the environment failed (say, a locked database) is explained and was retried, not kept as a result.
    assert all(r.data.tags["nas.status"] == "error" for r in trials if r.info.status != "FINISHED")
    assert all(r.data.tags["nas.status"] == "abandoned" for r in runs(tmp_path, "two", deleted=True))
    summaries = [json.loads((tmp_path / f"search{i}.json").read_text()) for i in range(2)]
    assert [s["trials"] for s in summaries] == [6, 6] and summaries[0]["best_run_id"] == summaries[1]["best_run_id"]


def test_aging_evolution_whose_trials_all_fail_ends_with_a_reason(tmp_path, digits_dir, prefect_server):
    command = search_command(tmp_path, digits_dir, "doomed", "--strategy", "aging-evolution", "--population", "4",
                             "--trials", "12", "--epochs", "1", "--max-seconds", "0.0001", "--concurrency", "2")
    result = nas(prefect_server, tmp_path, command)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stopped after 4 of 12 trials" in result.stdout and "can be a parent" in result.stdout
    assert all(r.data.tags["nas.status"] == "error" for r in runs(tmp_path, "doomed"))


def test_codeepneat_repeats_are_counted_and_the_search_reaches_its_budget(tmp_path, digits_dir, prefect_server):
    # A small population repeats networks of earlier generations: those come back from the
    # store and must count as this generation's, or the search stalls short of its budget.
    command = search_command(tmp_path, digits_dir, "neat", "--strategy", "codeepneat", "--population", "4",
                             "--trials", "30", "--epochs", "1", "--seed", "1", "--concurrency", "2",
                             "--metrics-out", str(tmp_path / "neat.json"))
    result = nas(prefect_server, tmp_path, command)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "neat.json").read_text())["trials"] == 30
    assert len({r.data.tags["nas.trial_key"] for r in runs(tmp_path, "neat")}) < 30  # repeats did happen


def test_a_scheduler_after_random_search_on_one_experiment_reuses_its_runs(tmp_path, digits_dir, prefect_server):
    # Hyperband's full-budget bracket draws what random search drew with the same seed: the
    # stored runs come back as cache hits, each told as Hyperband's own candidate.
    common = ("--epochs", "3", "--seed", "6", "--concurrency", "2")
    first = nas(prefect_server, tmp_path, search_command(tmp_path, digits_dir, "E", "--trials", "6", *common))
    assert first.returncode == 0, first.stderr[-3000:]
    trained = len(runs(tmp_path, "E"))
    scheduled = nas(prefect_server, tmp_path, search_command(tmp_path, digits_dir, "E", "--scheduler", "hyperband",
                                                             "--trials", "12", "--metrics-out",
                                                             str(tmp_path / "hb.json"), *common))
    assert scheduled.returncode == 0, scheduled.stderr[-3000:]
    assert json.loads((tmp_path / "hb.json").read_text())["trials"] == 12
    assert len(runs(tmp_path, "E")) < trained + 12  # some of the twelve were random search's runs


def test_a_deleted_store_behind_a_warm_prefect_cache_is_trained_again(tmp_path, digits_dir, prefect_server):
    command = search_command(tmp_path, digits_dir, "gone", "--trials", "1", "--epochs", "1", "--seed", "2",
                             "--metrics-out", str(tmp_path / "search.json"))
    first = nas(prefect_server, tmp_path, command)
    assert first.returncode == 0, first.stderr[-3000:]
    (tmp_path / "mlflow.db").unlink()
    shutil.rmtree(tmp_path / "artifacts")
    again = nas(prefect_server, tmp_path, command)  # Prefect still remembers every trial, with runs that are gone
    assert again.returncode == 0, again.stderr[-3000:]
    trials = runs(tmp_path, "gone")
    assert [r.info.status for r in trials] == ["FINISHED"]
    assert json.loads((tmp_path / "search.json").read_text())["best_run_id"] in {r.info.run_id for r in trials}
