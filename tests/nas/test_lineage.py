"""The lineage store against a real MLflow SQLite store in a temporary folder (no mocks)."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from nas.build import build
from nas.lineage import LineageError, LineageStore, resolve_tracking_uri
from nas.lineage.queries import LEADERBOARD_ORDER
from nas.space.architecture import Architecture, HParams, Node
from nas.trial import Budget, Candidate, Evaluation, TrialSetting, TrialStatus

DATA_FP = "data-fp-1"
SETTING = TrialSetting(DATA_FP)


def tiny_arch(units: int = 10) -> Architecture:
    return Architecture((Node.make("input"), Node.make("flatten", [0]), Node.make("head", [1], units=units)))


def candidate(units: int = 10, parents: tuple[str, ...] = (), generation: int = 0) -> Candidate:
    return Candidate(tiny_arch(units), HParams(lr=0.01), Budget(epochs=3), parents=parents,
                     generation=generation, info={"mutation": "widen"})


def evaluation(cand: Candidate, val_acc: float = 0.9, status: str = "ok") -> Evaluation:
    return Evaluation(cand, cand.trial_key(SETTING), status=status, val_acc=val_acc,
                      test_acc=val_acc - 0.01, train_loss=[1.0, 0.5, 0.25],
                      val_accs=[0.5, 0.7, val_acc], params=1234, flops=5678, seconds=1.5,
                      epochs_trained=3, reason=None if status == "ok" else "diverged: NaN loss")


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory) -> Path:
    """An empty MLflow database, created once: migrating a fresh one takes seconds."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}")
    return path


@pytest.fixture
def store(tmp_path: Path, migrated_db: Path) -> LineageStore:
    shutil.copy(migrated_db, tmp_path / "mlflow.db")
    lineage = LineageStore(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="test",
                           root=tmp_path)
    lineage.ensure()
    return lineage


@pytest.fixture
def search(store: LineageStore) -> str:
    return store.start_search({"strategy": "random", "trials": 4}, None, DATA_FP)


def run_trial(store: LineageStore, parent: str | None, cand: Candidate, val_acc: float = 0.9,
              status: str = "ok", weights: dict | None = None) -> tuple[str, Evaluation]:
    result = evaluation(cand, val_acc, status)
    run_id = store.claim_trial(cand, result.trial_key, parent_run_id=parent, strategy="random",
                               data_fingerprint=DATA_FP, tags={"prefect.task_run_id": "t-1"}).run_id
    store.finish_trial(run_id, result, weights)
    return run_id, result


def active_runs(store: LineageStore, trial_key: str) -> list:
    return MlflowClient(store.tracking_uri).search_runs(
        [store.experiment_id], filter_string=f"tags.`nas.trial_key` = '{trial_key}'")


# -- resolve_tracking_uri ---------------------------------------------------------------


def test_default_uri_is_an_absolute_sqlite_file_under_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = resolve_tracking_uri(root=tmp_path)
    assert uri == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    assert uri.startswith("sqlite:////") and (tmp_path / "mlflow").is_dir()


def test_env_var_overrides_the_default_and_an_argument_overrides_both(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert resolve_tracking_uri(root=tmp_path) == "http://tracking.example:5000"
    assert resolve_tracking_uri("http://other:5000", root=tmp_path) == "http://other:5000"


def test_relative_sqlite_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///stores/runs.db")
    assert resolve_tracking_uri(root=tmp_path) == f"sqlite:///{tmp_path / 'stores' / 'runs.db'}"
    absolute = f"sqlite:///{tmp_path / 'x.db'}"
    assert resolve_tracking_uri(absolute, root=Path("/elsewhere")) == absolute


def test_default_store_keeps_artifacts_beside_the_database(tmp_path, monkeypatch, migrated_db):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "mlflow").mkdir()
    shutil.copy(migrated_db, tmp_path / "mlflow" / "mlflow.db")
    lineage = LineageStore(root=tmp_path)
    experiment = MlflowClient(lineage.tracking_uri).get_experiment(lineage.ensure())
    assert experiment.name == "default"
    assert experiment.artifact_location == (tmp_path / "mlflow" / "artifacts").as_uri()
    assert lineage.ui_command()[-2:] == ["--default-artifact-root", experiment.artifact_location]


# -- searches and trials ----------------------------------------------------------------


def test_same_search_twice_reuses_the_parent_run(store, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("ops: [conv]\n")
    config = {"strategy": "evolution", "trials": 8, "evolution": {"population": 4}}
    first = store.start_search(config, space, DATA_FP, tags={"git.commit": "abc"})
    store.finish_search(first, {"best_val_acc": 0.9, "arch_id": "deadbeef"})
    again = store.start_search(config, space, DATA_FP)
    assert again == first
    run = MlflowClient(store.tracking_uri).get_run(first)
    assert run.info.status == "RUNNING"
    assert run.data.params["evolution.population"] == "4"
    assert run.data.tags["nas.kind"] == "search" and run.data.tags["nas.strategy"] == "evolution"
    assert run.data.tags["nas.best.arch_id"] == "deadbeef" and run.data.metrics["best_val_acc"] == 0.9
    assert {"space.yaml", "config.json"} <= set(store.run_summary(first)["artifacts"])
    assert store.start_search({**config, "trials": 9}, space, DATA_FP) != first


def test_trial_round_trip_with_tags_and_parent(store, search):
    cand = candidate(parents=("run-a", "run-b"), generation=2)
    run_id, result = run_trial(store, search, cand)
    found = store.find(result.trial_key)
    assert found is not None
    assert found.run_id == run_id
    assert found.trial_key == result.trial_key and found.val_acc == result.val_acc
    assert found.candidate.to_json() == cand.to_json()
    assert found.to_json() == {**result.to_json(), "run_id": run_id}

    run = MlflowClient(store.tracking_uri).get_run(run_id)
    tags = run.data.tags
    assert tags["nas.arch_id"] == cand.arch.arch_id
    assert tags["nas.trial_key"] == result.trial_key
    assert tags["nas.strategy"] == "random"
    assert tags["nas.parents"] == '["run-a", "run-b"]'
    assert tags["nas.generation"] == "2" and tags["nas.budget"] == "3"
    assert tags["nas.data_fp"] == DATA_FP and tags["nas.status"] == "ok"
    assert tags["nas.mutation"] == "widen" and tags["prefect.task_run_id"] == "t-1"
    assert tags["mlflow.parentRunId"] == search
    assert run.info.run_name == f"random-{cand.arch.arch_id[:8]}" and run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.01" and run.data.params["n_nodes"] == "3"
    assert run.data.metrics["val_acc"] == 0.9  # the final value, not the curve's
    history = MlflowClient(store.tracking_uri).get_metric_history(run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5), (2, 0.25)]
    summary = store.run_summary(run_id)
    assert summary["architecture"] == {"arch": cand.arch.to_json(), "hparams": cand.hparams.to_json()}
    assert store.parents(run_id) == ["run-a", "run-b"]


def claim(store: LineageStore, cand: Candidate, search: str):
    return store.claim_trial(cand, cand.trial_key(SETTING), parent_run_id=search, strategy="random",
                             data_fingerprint=DATA_FP, poll_seconds=0.05)


def test_a_dead_owners_claim_is_abandoned_explained_and_taken_over(store, search):
    cand = candidate()
    key = cand.trial_key(SETTING)
    killed = claim(store, cand, search).run_id
    assert store.find(key) is None  # running, not finished
    # Its process died (kill -9): no process of this machine has that pid.
    MlflowClient(store.tracking_uri).set_tag(killed, "nas.owner", f"{socket.gethostname()}:{2**22 + 7}")
    crashed = claim(store, cand, search).run_id
    gone = MlflowClient(store.tracking_uri).get_run(killed)
    assert gone.info.lifecycle_stage == "deleted" and gone.data.tags["nas.status"] == "abandoned"
    assert "is gone" in gone.data.tags["nas.reason"]
    store.fail_trial(crashed, "worker lost")  # an error, not a result: the next claim trains again
    assert store.find(key) is None
    final = claim(store, cand, search).run_id
    assert {r.info.run_id for r in active_runs(store, key)} == {crashed, final}  # the deleted one is gone
    store.finish_trial(final, evaluation(cand))
    assert store.find(key).run_id == final
    assert claim(store, cand, search).result.run_id == final
    purged = subprocess.run([sys.executable, "-m", "nas.cli", "gc", "--tracking-uri", store.tracking_uri],
                            capture_output=True, text=True, timeout=120)
    assert purged.returncode == 0, purged.stderr
    with pytest.raises(MlflowException):
        MlflowClient(store.tracking_uri).get_run(killed)  # gone for good


def test_an_owner_that_finishes_while_another_host_takes_over_keeps_its_result(store, search):
    cand = candidate(28)
    owner = claim(store, cand, search).run_id

    class Owner(LineageStore):
        def _end_owned(self, run_id, status):
            # Through a server no lock keeps them apart: a claimant that saw the run RUNNING kills it now,
            # after the owner wrote everything, before it ends the run.
            assert not store._abandon(run_id, "no heartbeat for 60 s of watching")
            super()._end_owned(run_id, status)

    Owner(store.tracking_uri, store.experiment).finish_trial(owner, evaluation(cand))
    run = MlflowClient(store.tracking_uri).get_run(owner)
    assert (run.info.status, run.info.lifecycle_stage, run.data.tags["nas.status"]) == ("FINISHED", "active", "ok")
    assert store.find(cand.trial_key(SETTING)).run_id == owner


def test_a_take_over_killed_between_its_steps_is_finished_by_whoever_looks_next(store, search):
    """A claimant killed -9 after it ended a dead owner's run KILLED, before it deleted the run."""
    client = MlflowClient(store.tracking_uri)
    halfway, finished, orphan = (claim(store, candidate(units), search).run_id for units in (31, 32, 33))
    cand = candidate(32)
    store.finish_trial(finished, evaluation(cand))
    for run_id in (halfway, orphan):
        client.set_terminated(run_id, "KILLED")
    client.set_terminated(finished, "KILLED")  # through a server: ended after the owner's outcome landed
    assert claim(store, candidate(31), search).run_id != halfway  # taken over, and the take-over finished
    assert claim(store, cand, search).result.run_id == finished  # the result stands
    store.abandon_dead_trials(search)  # nobody asks for the orphan's trial again: the search's end finishes it
    for run_id in (halfway, orphan):
        run = client.get_run(run_id)
        assert (run.info.lifecycle_stage, run.data.tags["nas.status"]) == ("deleted", "abandoned")
        assert "is gone" in run.data.tags["nas.reason"]
    assert client.get_run(finished).info.status == "FINISHED"


def test_abandoning_a_run_removes_no_folder_whatever_its_record_names(store, search, tmp_path):
    cand = candidate(27)
    dead = claim(store, cand, search).run_id
    victim = tmp_path / "precious"
    (victim / "artifacts").mkdir(parents=True)
    with sqlite3.connect(tmp_path / "mlflow.db") as db:  # a record edited by hand
        db.execute("UPDATE runs SET artifact_uri = ? WHERE run_uuid = ?", (f"file://{victim}/artifacts", dead))
    MlflowClient(store.tracking_uri).set_tag(dead, "nas.owner", f"{socket.gethostname()}:{2**22 + 7}")
    assert claim(store, cand, search).run_id != dead  # taken over
    assert (victim / "artifacts").is_dir()


def test_a_search_abandons_the_trials_a_dead_attempt_left_running_and_nobody_asks_for_again(store, search):
    orphan, reused, live = (claim(store, candidate(units), search).run_id for units in (10, 12, 11))
    MlflowClient(store.tracking_uri).set_tag(orphan, "nas.owner", f"{socket.gethostname()}:{2**22 + 7}")
    # Its owner's pid now names a live process, this one, that started at another time.
    MlflowClient(store.tracking_uri).set_tag(reused, "nas.owner_started", "1")
    store.abandon_dead_trials(search)
    client = MlflowClient(store.tracking_uri)
    for dead in (orphan, reused):
        assert client.get_run(dead).info.lifecycle_stage == "deleted"
        assert client.get_run(dead).data.tags["nas.status"] == "abandoned"
    assert client.get_run(live).info.status == "RUNNING"  # its owner, this process, lives
    assert client.get_run(search).info.status == "RUNNING"  # not a trial


def test_a_second_claimant_waits_for_the_first_result_instead_of_training(store, search):
    cand = candidate(21)
    first = claim(store, cand, search)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(claim, store, cand, search)
        time.sleep(0.3)
        assert not waiting.done()  # a live claim: it waits
        store.finish_trial(first.run_id, evaluation(cand))
        assert waiting.result(timeout=10).result.run_id == first.run_id
    assert len(active_runs(store, cand.trial_key(SETTING))) == 1


def test_an_owner_finishing_while_a_claimant_looks_is_not_trained_again(store, search):
    cand = candidate(22)
    owner = claim(store, cand, search).run_id

    class Claimant(LineageStore):
        """The owner finishes right after the claimant's first look at the store (between two queries, once)."""

        looked = False

        def _search(self, *args, **kwargs):
            found = super()._search(*args, **kwargs)
            if not Claimant.looked:
                Claimant.looked = True
                store.finish_trial(owner, evaluation(cand))
            return found

    second = claim(Claimant(store.tracking_uri, store.experiment), cand, search)
    assert second.result is not None and second.result.run_id == owner
    assert len(active_runs(store, cand.trial_key(SETTING))) == 1


def test_failed_candidate_is_a_finished_run(store, search):
    run_id, result = run_trial(store, search, candidate(), val_acc=0.1, status=TrialStatus.FAILED)
    found = store.find(result.trial_key)
    assert found is not None and not found.ok and found.reason == "diverged: NaN loss"
    run = MlflowClient(store.tracking_uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["nas.status"] == "failed"
    assert store.leaderboard() == []


def test_weights_round_trip_bit_identical(store, search):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))
    model[2].weight = torch.nn.Parameter(model[2].weight.to(torch.float64))
    state = model.state_dict()
    run_id, _ = run_trial(store, search, candidate(), weights=state)
    loaded = store.weights(run_id)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) and loaded[k].dtype == state[k].dtype for k in state)


def test_weights_errors_name_the_run(store, search):
    run_id, _ = run_trial(store, search, candidate())
    with pytest.raises(LineageError, match=f"{run_id} has no weights"):
        store.weights(run_id)
    with pytest.raises(LineageError, match="no run 'nope'.*nas runs"):
        store.weights("nope")
    with pytest.raises(LineageError, match="nas runs"):
        store.run_summary("0123456789abcdef0123456789abcdef")


def test_history_is_oldest_first_and_leaderboard_best_first(store, search):
    accs = [0.5, 0.9, 0.7]
    run_ids = []
    for units, acc in zip((10, 11, 12), accs):
        run_ids.append(run_trial(store, search, candidate(units, parents=tuple(run_ids[-1:])), acc)[0])
        time.sleep(0.01)  # start times have millisecond resolution
    running = candidate(13)
    claim(store, running, search)

    history = store.history()
    assert [e.run_id for e in history] == run_ids
    assert [e.val_acc for e in history] == accs
    assert store.parents(run_ids[2]) == [run_ids[1]]
    assert store.parents(run_ids[0]) == []

    board = store.leaderboard()
    assert [row["run_id"] for row in board] == [run_ids[1], run_ids[2], run_ids[0]]
    assert board[0]["val_acc"] == 0.9 and board[0]["strategy"] == "random" and board[0]["status"] == "ok"
    assert board[0]["arch_id"] == tiny_arch(11).arch_id and board[0]["params"] == 1234
    assert len(store.leaderboard(limit=2)) == 2


def test_logged_model_loads_back_as_the_same_network(store, search):
    arch = Architecture((Node.make("input"), Node.make("flatten", [0]), Node.make("head", [1])))
    model = build(arch, (1, 4, 4), 3, seed=0).eval()
    example = np.random.default_rng(0).random((2, 1, 4, 4), dtype=np.float32)
    uri = store.log_model(search, model, example, source_run_id="the-trial")
    assert uri.startswith("models:/") and store.model_source(search) == "the-trial"

    loaded = store.load_model(uri)
    x = torch.from_numpy(example)
    assert loaded.arch == arch and torch.equal(loaded(x), model(x))
    assert MlflowClient(store.tracking_uri).get_run(search).info.status == "RUNNING"
    with pytest.raises(TypeError, match="nas.build"):
        store.log_model(search, torch.nn.Linear(16, 3), example)


def test_loading_a_model_runs_nothing_from_the_store(store, search, tmp_path):
    arch = Architecture((Node.make("input"), Node.make("flatten", [0]), Node.make("head", [1])))
    model = build(arch, (1, 4, 4), 3, seed=0).eval()
    example = np.random.default_rng(0).random((2, 1, 4, 4), dtype=np.float32)
    uri = store.log_model(search, model, example)
    stored = [path for path in (tmp_path / "artifacts").rglob("serving.py")]
    assert len(stored) == 1
    marker = tmp_path / "stored-code-ran"
    with stored[0].open("a") as code:  # a tampered store
        code.write(f"\nopen({str(marker)!r}, 'w').close()\n")
    loaded = store.load_model(uri)
    assert not marker.exists()
    assert torch.equal(loaded(torch.from_numpy(example)), model(torch.from_numpy(example)))
    import mlflow.pyfunc

    mlflow.set_tracking_uri(store.tracking_uri)
    try:
        mlflow.pyfunc.load_model(uri)  # MLflow's own loader runs the stored file: for stores one trusts
    finally:
        mlflow.set_tracking_uri(None)
    assert marker.exists()


def test_shared_data_is_the_prepared_files_and_nothing_else_in_their_folder(store, digits_dir, tmp_path):
    from nas.data import PREPARED_FILES, read_meta

    folder = tmp_path / "digits"
    shutil.copytree(digits_dir, folder)
    (folder / "notes-with-a-token.txt").write_text("not for the store")
    meta = read_meta(folder)
    run_id = store.share_data(meta, folder)
    shared = {info.path.rpartition("/")[2] for info in MlflowClient(store.tracking_uri).list_artifacts(run_id, "data")}
    assert shared == set(PREPARED_FILES)
    fetched = store.fetch_data(meta.fingerprint, tmp_path / "cache")
    assert sorted(path.name for path in fetched.iterdir()) == sorted(PREPARED_FILES)
    assert read_meta(fetched).fingerprint == meta.fingerprint


def test_unreachable_server_is_a_lineage_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    start = time.monotonic()
    with pytest.raises(LineageError, match=r"http://127\.0\.0\.1:9.*MLFLOW_TRACKING_URI"):
        LineageStore("http://127.0.0.1:9", root=tmp_path).ensure()
    assert time.monotonic() - start < 10


def test_many_threads_each_with_its_own_store_on_a_fresh_database(tmp_path):
    # More concurrent writers than MLflow's connection pool holds (15), and no ensure() first:
    # first-time migrations and nested sessions in MLflow's writes must not collide.
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"

    def trial(units: int) -> str:
        lineage = LineageStore(uri, experiment="threads", root=tmp_path)
        return run_trial(lineage, None, candidate(units))[0]

    with ThreadPoolExecutor(max_workers=32) as pool:
        run_ids = list(pool.map(trial, range(1, 97)))
    lineage = LineageStore(uri, experiment="threads", root=tmp_path)
    assert sorted(e.run_id for e in lineage.history()) == sorted(run_ids)


def test_reading_never_creates_an_experiment(store, search):
    other = LineageStore(store.tracking_uri, "typo")
    assert other.history() == [] and other.leaderboard() == [] and other.latest_search() is None
    assert other.run_summary(search)["run_id"] == search  # run ids are global
    assert MlflowClient(store.tracking_uri).get_experiment_by_name("typo") is None


def test_the_indexed_leaderboard_orders_runs_exactly_as_mlflow_does(store):
    """Ties on val_acc go to the lower val_loss, runs without one (or with NaN) last, then the
    earlier run; failed trials, unfinished runs and other kinds are left out."""
    from mlflow.entities import Metric

    client, experiment = MlflowClient(store.tracking_uri), store.ensure()
    for i in range(40):
        tags = {"nas.kind": "trial" if i % 9 else "search", "nas.status": "failed" if i % 7 == 0 else "ok"}
        run = client.create_run(experiment, tags=tags, start_time=1000 + i).info.run_id
        metrics = [Metric("val_acc", [0.5, 0.7, 0.9][i % 3], 0, 0)]
        if i % 4:
            metrics.append(Metric("val_loss", float("nan") if i % 5 == 0 else (i * 7 % 11) / 10, 0, 0))
        client.log_batch(run, metrics=metrics)
        if i % 6:
            client.set_terminated(run)
    as_mlflow_sorts = store._search(
        "tags.`nas.kind` = 'trial' and tags.`nas.status` = 'ok' and attributes.status = 'FINISHED'",
        order_by=list(LEADERBOARD_ORDER))
    indexed = store.sorted_run_ids({"nas.kind": "trial", "nas.status": "ok"}, ("val_acc", "val_loss"), 100)
    assert indexed == [r.info.run_id for r in as_mlflow_sorts] and len(indexed) > 10
    assert [r["run_id"] for r in store.leaderboard(5)] == indexed[:5]


# -- one owner per trial, on every backend ---------------------------------------------------


# Two claimants' (delays between deciding and writing, clock skews in seconds) per case.
CLAIM_CASES = {
    "together": ((0.0, 0.0), (0, 0)),
    "skewed": ((0.0, 0.6), (-300, 300)),  # the later writer decided first and stamps its runs five minutes earlier
    "slow-write": ((4.0, 0.0), (300, -300)),  # a write slower than the settle time (3 s)
}


def test_claimants_without_a_file_lock_start_one_search_and_train_one_trial(tmp_path, migrated_db):
    shutil.copy(migrated_db, tmp_path / "mlflow.db")
    processes = [subprocess.Popen([sys.executable, "-m", "tests.nas.claimant", str(tmp_path / "mlflow.db"),
                                   str(tmp_path), str(index)], cwd=Path(__file__).parents[2], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for index in range(2)]
    try:
        for case in range(len(CLAIM_CASES)):
            while len(list(tmp_path.glob(f"ready.{case}.*"))) < len(processes):
                assert all(process.poll() is None for process in processes)
                time.sleep(0.05)
            (tmp_path / f"go.{case}").touch()
        said = []
        for process in processes:
            out, err = process.communicate(timeout=300)
            assert process.returncode == 0, err[-3000:]
            said.append([json.loads(line) for line in out.strip().splitlines()[-len(CLAIM_CASES):]])
    finally:
        for process in processes:
            process.kill()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for case, name in enumerate(CLAIM_CASES):
        first, second = said[0][case], said[1][case]
        assert first["search"] == second["search"], name
        assert sorted([first["trained"], second["trained"]]) == [False, True], name
        experiment = client.get_experiment_by_name(f"claims{case}").experiment_id
        assert len(client.search_runs([experiment], "tags.`nas.kind` = 'search'")) == 1, name
        trials = client.search_runs([experiment], "tags.`nas.kind` = 'trial'")
        assert [run.info.status for run in trials] == ["FINISHED"], name


def test_a_live_owner_on_this_host_is_never_taken_over_whatever_its_heartbeat(store, search):
    cand = candidate(23)
    owner = claim(store, cand, search).run_id
    # Stopped with Ctrl-Z, or its laptop asleep: no heartbeat for 90 s, yet its process lives.
    MlflowClient(store.tracking_uri).set_tag(owner, "nas.heartbeat", f"{time.time() - 90:.0f}")
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(claim, store, cand, search)
        time.sleep(0.5)
        assert not waiting.done()
        store.finish_trial(owner, evaluation(cand))
        assert waiting.result(timeout=10).result.run_id == owner
    run = MlflowClient(store.tracking_uri).get_run(owner)
    assert run.info.status == "FINISHED" and run.info.lifecycle_stage == "active"
    assert store.find(cand.trial_key(SETTING)).run_id == owner


def test_another_hosts_owner_is_judged_by_how_long_its_heartbeat_stays_still_not_by_clocks(store, search,
                                                                                          monkeypatch):
    from nas.lineage import runs

    monkeypatch.setattr(runs, "CLAIM_LEASE_SECONDS", 1.0)
    cand = candidate(24)
    owner = claim(store, cand, search).run_id
    client = MlflowClient(store.tracking_uri)
    # Its clock runs an hour behind this one's: by timestamps it would look dead at once.
    client.set_tag(owner, "nas.owner", "elsewhere:4242")
    beats = threading.Event()

    def beat():
        for second in range(8):
            client.set_tag(owner, "nas.heartbeat", f"{time.time() - 3600 + second:.0f}")
            time.sleep(0.25)
        beats.set()

    threading.Thread(target=beat, daemon=True).start()
    taken = claim(store, cand, search)
    assert beats.is_set()  # not before the beats stopped, and then a lease of watching
    assert taken.run_id is not None and taken.run_id != owner
    gone = client.get_run(owner)
    assert gone.data.tags["nas.status"] == "abandoned" and "of watching" in gone.data.tags["nas.reason"]


def test_finishing_and_abandoning_exclude_each_other(store, search, caplog):
    cand, late = candidate(25), candidate(26)
    finished = claim(store, cand, search).run_id
    store.finish_trial(finished, evaluation(cand))
    assert not store._abandon(finished, "looked dead a moment ago")  # it finished meanwhile: a result stays
    run = MlflowClient(store.tracking_uri).get_run(finished)
    assert run.info.status == "FINISHED" and run.info.lifecycle_stage == "active"
    taken = claim(store, late, search).run_id
    assert store._abandon(taken, "no heartbeat")
    store.finish_trial(taken, evaluation(late))  # the owner wakes up after the takeover: its result is dropped
    assert MlflowClient(store.tracking_uri).get_run(taken).info.status == "KILLED"
    assert store.find(late.trial_key(SETTING)) is None and "taken over" in caplog.text
