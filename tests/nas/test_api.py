"""The Python API: a notebook user's search, with no CLI and no Prefect, on a real MLflow store."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from nas.api import create_search, load_search
from nas.strategies import RandomSearch
from nas.trial import Candidate


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
    frame = search.trials_dataframe()
    assert len(frame) == 3 and set(frame["status"]) <= {"ok", "failed"} and frame["val_acc"].max() == best.val_acc
    assert set(search.lineage()) == set(frame["run_id"])
    runs = MlflowClient(uri).search_runs([search.store.experiment_id])

    again = load_search("notebook", tracking_uri=uri, root=project)
    assert again.run_id == search.run_id  # the same search, found by its configuration
    assert [e.run_id for e in again.optimize().evaluations] == [e.run_id for e in outcome.evaluations]
    assert len(MlflowClient(uri).search_runs([search.store.experiment_id])) == len(runs)  # nothing trained


def test_a_users_own_strategy_class_runs_in_the_same_loop(project):
    search = create_search("own", data="digits", tracking_uri=f"sqlite:///{project}/mlflow.db", root=project,
                           strategy=SmallestFirst, trials=2, epochs=1, concurrency=2, max_seconds=None)
    outcome = search.optimize()
    assert len(outcome.evaluations) == 2
    assert search.store.run_summary(outcome.evaluations[0].run_id)["tags"]["nas.strategy"] == "smallest-first"
