"""Kill a real search process with SIGKILL mid-way, run the same command again: nothing
finished is retrained and no candidate gets a second MLflow run."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import mlflow
import pytest

from nas.servers import processes_with
from tests.conftest import ROOT

TRIALS = 6


def search_command(tmp_path, digits_dir, strategy):
    options = {"evolution": ["--population", "3"], "genetic-cnn": ["--population", "3"],
               "smash": ["--smash-steps", "30", "--smash-candidates", "20"]}
    return [sys.executable, "-m", "nas.cli", "search", "--strategy", strategy, *options.get(strategy, []),
            "--data-dir", str(digits_dir),
            "--space", str(ROOT / "spaces/cnn.yaml"), "--trials", str(TRIALS), "--epochs", "4",
            "--concurrency", "1", "--seed", "11", "--experiment", "resume",
            "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--metrics-out", str(tmp_path / "search.json")]


def finished_trials(uri):
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("resume")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id],
                              "tags.`nas.kind` = 'trial' and attributes.status = 'FINISHED'")


def kill_after(command, tmp_path, env, uri, finished: int) -> dict[str, int]:
    """Start the search, SIGKILL it and its children once `finished` trials have finished;
    the finished runs' start times by run id."""
    process = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while len(finished_trials(uri)) < finished and process.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert process.poll() is None, "the search ended before it could be killed; make it longer"
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    return {r.info.run_id: r.info.start_time for r in finished_trials(uri)}


@pytest.mark.parametrize("strategy", ["random", "evolution", "codeepneat", "metaqnn", "nas-rl", "smash",
                                      "genetic-cnn"])
def test_sigkill_then_rerun_resumes_without_retraining_or_duplicates(tmp_path, digits_dir, prefect_server, strategy):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**prefect_server, "PREFECT_HOME": str(tmp_path / "prefect")}  # the cache both runs share
    command = search_command(tmp_path, digits_dir, strategy)
    before = kill_after(command, tmp_path, env, uri, finished=2)
    assert 2 <= len(before) < TRIALS

    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("resume")
    trials = client.search_runs([experiment.experiment_id], "tags.`nas.kind` = 'trial'")
    keys = Counter(r.data.tags["nas.trial_key"] for r in trials)
    assert set(keys.values()) == {1}, keys  # one run per candidate
    # (evolution may propose one candidate twice, e.g. the identity mutation of one parent:
    # that is one trial, trained once)
    assert len(keys) == TRIALS if strategy == "random" else len(keys) <= TRIALS
    assert json.loads((tmp_path / "search.json").read_text())["trials"] == TRIALS
    after = {r.info.run_id: r.info.start_time for r in trials}
    assert all(after.get(run_id) == start for run_id, start in before.items())  # not retrained
    searches = client.search_runs([experiment.experiment_id], "tags.`nas.kind` = 'search'")
    assert len(searches) == 1


def kill_search_alone(command, tmp_path, env, *, after_trials: int, processes: int, within: float) -> None:
    """Start the search `command` with its own Prefect home (in `env`), kill -9 the search process
    alone once `after_trials` trials finished, and check that its `processes` (at least: the search,
    its Prefect server, any Dask workers) are all gone within `within` seconds."""
    home = env["PREFECT_HOME"]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def marked() -> list[int]:  # processes of this search: their environment holds its Prefect home
        return processes_with("PREFECT_HOME", home)

    try:
        deadline = time.time() + 240
        while (len(finished_trials(f"sqlite:///{tmp_path}/mlflow.db")) < after_trials and process.poll() is None
               and time.time() < deadline):
            time.sleep(0.2)
        assert process.poll() is None, "the search ended before it could be killed; make it longer"
        assert len(marked()) >= processes
        os.kill(process.pid, signal.SIGKILL)  # the search alone, as `kill -9 PID` does
        process.wait()
        deadline = time.time() + within
        while marked() and time.time() < deadline:
            time.sleep(0.2)
        assert marked() == []
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        for pid in marked():
            os.kill(pid, signal.SIGKILL)


def without_owner(home) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k != "NAS_OWNER_PID"}, "PREFECT_HOME": str(home)}


def test_a_search_killed_alone_leaves_no_server_behind(tmp_path, digits_dir):
    kill_search_alone(search_command(tmp_path, digits_dir, "random"), tmp_path, without_owner(tmp_path / "prefect"),
                      after_trials=1, processes=2, within=20)  # the search and its temporary Prefect server


def test_a_search_on_dask_workers_killed_alone_takes_its_workers_along_and_resumes(tmp_path, digits_dir):
    env, uri = without_owner(tmp_path / "prefect"), f"sqlite:///{tmp_path}/mlflow.db"
    command = [*search_command(tmp_path, digits_dir, "random"), "--workers", "2", "--concurrency", "2"]
    # the search, its Prefect server, two workers
    kill_search_alone(command, tmp_path, env, after_trials=2, processes=4, within=30)
    before = {r.info.run_id: r.info.start_time for r in finished_trials(uri)}

    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    finished = finished_trials(uri)
    assert Counter(r.data.tags["nas.trial_key"] for r in finished).most_common(1)[0][1] == 1
    assert len(finished) == TRIALS
    assert all({r.info.run_id: r.info.start_time for r in finished}.get(k) == v for k, v in before.items())


def test_pathnet_killed_mid_tournament_resumes_from_its_checkpoint(tmp_path, digits_dir, prefect_server):
    # Long enough to be killed between checkpoints (every 5 rounds); then the rerun replays
    # from the last one, finding the rounds after it by their keys.
    rounds = 300
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**prefect_server, "PREFECT_HOME": str(tmp_path / "prefect")}
    command = [sys.executable, "-m", "nas.cli", "search", "--strategy", "pathnet", "--data-dir", str(digits_dir),
               "--trials", str(rounds), "--experiment", "resume", "--tracking-uri", uri,
               "--metrics-out", str(tmp_path / "search.json"), "--plots-dir", str(tmp_path / "plots")]
    before = kill_after(command, tmp_path, env, uri, finished=8)
    assert 8 <= len(before) < rounds

    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = finished_trials(uri)
    rounds_seen = Counter(int(r.data.tags["nas.round"]) for r in trials)
    assert sorted(rounds_seen) == list(range(rounds)) and set(rounds_seen.values()) == {1}
    assert all({r.info.run_id: r.info.start_time for r in trials}.get(k) == v for k, v in before.items())
    assert json.loads((tmp_path / "search.json").read_text())["trials"] == rounds
