"""The Python API: a notebook user's search, with no CLI and no Prefect, on a real MLflow store."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from nas.api import create_search, load_search
from nas.lineage.layout import TOLD_FILE
from nas.strategies import RandomSearch
from nas.trial import Candidate
from tests.conftest import ROOT


class SmallestFirst(RandomSearch):
    """A user's own strategy: random samples, the one with the fewest nodes first."""

    name = "smallest-first"

    def _propose(self, n: int) -> list[Candidate]:
        return sorted(super()._propose(n), key=lambda c: len(c.arch.nodes))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return tmp_path_factory.mktemp("api")


def test_create_optimize_read_and_reload_without_retraining(project):
    uri = f"sqlite:///{project}/mlflow.db"
    search = create_search("notebook", data="digits", tracking_uri=uri, root=project, trials=3, epochs=1,
                           concurrency=2, max_seconds=None)
    outcome = search.optimize()
    assert len(outcome.evaluations) == 3 and outcome.stop_reason == "the trial budget of 3 is spent"
    best = search.best_trial
    assert best is not None and best.val_acc == max(e.val_acc for e in outcome.evaluations if e.ok)
    # digits has enough rows for a hold-out val split; the test split is left to `nas evaluate`
    assert search.job.setting.folds == 1 and best.test_acc is None and "best_test_acc" not in search.summary()
    frame = search.trials_dataframe()
    assert len(frame) == 3 and set(frame["status"]) <= {"ok", "failed"} and frame["val_acc"].max() == best.val_acc
    assert set(search.lineage()) == set(frame["run_id"])
    runs = MlflowClient(uri).search_runs([search.store.experiment_id])
    (used,) = MlflowClient(uri).get_run(best.run_id).inputs.dataset_inputs  # the UI's Dataset column
    assert (used.dataset.name, used.dataset.digest) == ("digits", search.meta.fingerprint)
    assert "mlflow_tensorspec" in used.dataset.schema and used.tags[0].value == "training"

    again = load_search("notebook", tracking_uri=uri, root=project)
    assert again.run_id == search.run_id  # the same search, found by its configuration
    assert [e.run_id for e in again.optimize().evaluations] == [e.run_id for e in outcome.evaluations]
    assert len(MlflowClient(uri).search_runs([search.store.experiment_id])) == len(runs)  # nothing trained
    # Neither another --concurrency nor the store named by default changes which search it is.
    other = create_search("notebook", data="digits", root=project, trials=3, epochs=1, concurrency=1,
                          max_seconds=None, tracking_uri=uri)
    assert other.run_id == search.run_id
    assert load_search("notebook", tracking_uri=uri, root=project).run_id == search.run_id
    # One more trial makes another search: the three it finds under the first are its results too.
    longer = create_search("notebook", data="digits", root=project, trials=4, epochs=1, concurrency=2,
                           max_seconds=None, tracking_uri=uri)
    told = [e.run_id for e in longer.optimize().evaluations]
    assert longer.run_id != search.run_id and told[:3] == [e.run_id for e in outcome.evaluations]
    assert sorted(e.run_id for e in longer.trials()) == sorted(told)


def test_an_asynchronous_rerun_tells_its_cache_hits_in_the_order_the_first_run_told_its_results(project):
    """That order steers a search that breeds from results; cache hits are back at once, in
    the order asked, so a rerun that told them so would breed other children and train them."""
    uri = f"sqlite:///{project}/mlflow.db"

    def search():
        return create_search("async", data="digits", tracking_uri=uri, root=project, strategy="aging-evolution",
                             population=3, space=str(ROOT / "spaces/small-cnn.yaml"), trials=7, epochs=1,
                             concurrency=2, asynchronous=True, max_seconds=None)

    first = search()
    told = [e.run_id for e in first.optimize().evaluations]
    runs = MlflowClient(uri).search_runs([first.store.experiment_id])
    assert [e.run_id for e in search().optimize().evaluations] == told
    assert len(MlflowClient(uri).search_runs([first.store.experiment_id])) == len(runs)  # nothing trained

def test_a_users_own_strategy_class_runs_in_the_same_loop(project):
    search = create_search("own", data="digits", tracking_uri=f"sqlite:///{project}/mlflow.db", root=project,
                           strategy=SmallestFirst, trials=2, epochs=1, concurrency=2, max_seconds=None)
    outcome = search.optimize()
    assert len(outcome.evaluations) == 2
    assert search.store.run_summary(outcome.evaluations[0].run_id)["tags"]["nas.strategy"] == "smallest-first"


def test_report_test_measures_every_trial_on_the_test_split(project):
    search = create_search("reported", data="digits", tracking_uri=f"sqlite:///{project}/mlflow.db", root=project,
                           trials=1, epochs=1, max_seconds=None, report_test=True)
    search.optimize()
    assert search.best_trial.test_acc is not None
    assert search.store.run_summary(search.run_id)["metrics"]["best_test_acc"] == search.best_trial.test_acc


def test_a_search_that_fails_mid_loop_ends_failed_and_keeps_what_it_told(project):
    search = create_search("midway", data="digits", tracking_uri=f"sqlite:///{project}/mlflow.db", root=project,
                           space=str(ROOT / "spaces/small-cnn.yaml"), trials=4, epochs=1, concurrency=1)

    def reporting(evaluation):
        if len(search.evaluations) == 2:
            raise RuntimeError("the progress display broke")

    with pytest.raises(RuntimeError, match="display broke"):
        search.optimize(on_result=reporting)
    run = MlflowClient(search.tracking_uri).get_run(search.run_id)
    assert run.info.status == "FAILED"
    assert "display broke" in run.data.tags["nas.best.stop_reason"]
    told = json.loads(search.store.read_bytes(search.run_id, TOLD_FILE))
    assert told == [e.run_id for e in search.evaluations] and len(told) == 2
    assert set(told) <= {e.run_id for e in search.store.trials_of(search.run_id)}


def test_metaqnn_logs_its_q_table_to_the_search_run_as_it_learns(project):
    import json

    search = create_search("metaqnn", data="digits", tracking_uri=f"sqlite:///{project}/mlflow.db", root=project,
                           strategy="metaqnn", trials=2, epochs=1, max_seconds=None)
    search.optimize()
    path = MlflowClient(search.tracking_uri).download_artifacts(search.run_id, "strategy-report.json")
    report = json.loads(Path(path).read_text())
    assert report["networks"] == 2 and report["trials"] == 2  # the search's trials set the schedule
    assert report["q"] and all(row["q"] != 0.5 for row in report["q"][:1])  # learned from the results


def test_nas_rl_logs_each_controller_version_and_notes_it_on_every_child(project):
    search = create_search("nas-rl", data="digits", tracking_uri=f"sqlite:///{project}/mlflow.db", root=project,
                           strategy="nas-rl", trials=3, epochs=1, concurrency=2, max_seconds=None)
    search.optimize()
    client = MlflowClient(search.tracking_uri)
    assert {f.path for f in client.list_artifacts(search.run_id, "controller")} == {
        "controller/v0000.safetensors", "controller/v0001.safetensors"}  # the first, and one update after 2 results
    children = [client.get_run(e.run_id).data.tags for e in search.evaluations]
    assert sorted(t["nas.controller_version"] for t in children) == ["0", "0", "1"]
    assert all(float(t["nas.log_prob"]) < 0 for t in children)


@pytest.mark.parametrize("strategy", ["nas-rl", "metaqnn"])
def test_rl_writes_recurrent_cells_for_the_adding_problem_and_each_run_shows_its_tree(project, strategy):
    search = create_search(f"cells-{strategy}", data="adding:12", space=str(ROOT / "spaces/rnn-cell.yaml"),
                           tracking_uri=f"sqlite:///{project}/mlflow.db", root=project, strategy=strategy,
                           trials=2, epochs=1, concurrency=2, max_seconds=None)
    search.optimize()
    client = MlflowClient(search.tracking_uri)
    assert search.meta.shape == (2, 12) and all(e.ok for e in search.evaluations)
    for evaluation in search.evaluations:
        assert any(node.op == "cell" for node in evaluation.candidate.arch.nodes)
        png = Path(client.download_artifacts(evaluation.run_id, "cell.png", str(project)))
        assert png.read_bytes().startswith(b"\x89PNG")


KILLED_SEARCH = """
import sys
from nas.api import create_search
create_search("killed", data="digits", tracking_uri=sys.argv[1], root=sys.argv[2], strategy="aging-evolution",
              space=sys.argv[3], population=4, trials=12, epochs=3, concurrency=2, max_seconds=None).optimize()
"""


def trial_runs(db: Path) -> set[str]:
    """The ids of every trial run in a search's SQLite store, read straight from the file (read-only:
    connecting otherwise creates an empty file, which the search would then migrate in place)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as connection:
            return {row[0] for row in connection.execute(
                "SELECT run_uuid FROM tags WHERE key = 'nas.kind' AND value = 'trial'")}
    except sqlite3.OperationalError:  # no store, or no tables, yet
        return set()


def test_kill_9_at_ten_random_moments_then_every_trial_has_one_finished_run(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    command = [sys.executable, "-c", KILLED_SEARCH, uri, str(tmp_path), str(ROOT / "spaces/small-cnn.yaml")]
    rng = random.Random(9)
    for attempt in range(10):
        before = trial_runs(tmp_path / "mlflow.db")
        process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Every other kill waits for this process to start a trial, so some kills land inside one however slow the
        # machine; the others fall anywhere, start-up included.
        while attempt % 2 and process.poll() is None and trial_runs(tmp_path / "mlflow.db") <= before:
            time.sleep(0.05)
        try:
            process.wait(timeout=rng.uniform(0, 0.5) if attempt % 2 else rng.uniform(0.5, 8))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
    finished = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]

    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("killed").experiment_id
    trials = client.search_runs([experiment_id], "tags.`nas.kind` = 'trial'")
    keys = Counter(r.data.tags["nas.trial_key"] for r in trials if r.info.status == "FINISHED")
    assert len(keys) == 12 and set(keys.values()) == {1}, keys  # every trial once, none trained twice
    assert all(r.info.status == "FINISHED" for r in trials)  # no attempt left running
    deleted = client.search_runs([experiment_id], "tags.`nas.kind` = 'trial'", run_view_type=ViewType.DELETED_ONLY)
    assert deleted, "no kill landed during a trial"
    assert all(r.data.tags["nas.status"] == "abandoned" and "is gone" in r.data.tags["nas.reason"] for r in deleted)
    assert len(client.search_runs([experiment_id], "tags.`nas.kind` = 'search'")) == 1
