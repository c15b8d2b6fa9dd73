"""The predictor with the lineage store: fitted from the CLI on real trials, and a search warm-started
from another experiment's runs (in-process trials, real MLflow store, tiny training)."""

import mlflow
import pytest

from nas.api import WARM_START_FILE, create_search
from nas.cli import main
from nas.lineage import KIND_PREDICTOR, PREDICTOR_FILE, LineageStore
from nas.predictor import Predictor
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One project whose store holds an earlier experiment: a random search of 12 tiny trials on digits."""
    project = tmp_path_factory.mktemp("project")
    uri = f"sqlite:///{project}/mlflow.db"
    earlier = create_search("earlier", data="digits", tracking_uri=uri, root=project, trials=12, epochs=1,
                            space=str(ROOT / "spaces/small-cnn.yaml"), concurrency=2, max_seconds=None)
    earlier.optimize()
    return project, uri, sum(e.ok for e in earlier.evaluations)


def guided(project, uri):
    return create_search("guided", data="digits", tracking_uri=uri, root=project, trials=4, epochs=1,
                         space=str(ROOT / "spaces/small-cnn.yaml"), strategy="predictor", concurrency=2,
                         max_seconds=None, warm_start_predictor=True)


def test_a_warm_started_predictor_search_starts_informed_and_replays(store):
    project, uri, finished = store
    first = guided(project, uri)
    assert first.warm_started == finished >= 10
    first.optimize()
    assert all(e.candidate.info["proposal"] == "model" for e in first.evaluations)  # no random start needed
    assert first.store.read_bytes(first.run_id, WARM_START_FILE) is not None

    again = guided(project, uri)  # the store now holds the first run's trials too: they are not learned
    assert again.run_id == first.run_id and again.warm_started == finished
    again.optimize()
    assert [e.trial_key for e in again.evaluations] == [e.trial_key for e in first.evaluations]


def test_predictor_fit_logs_the_model_with_its_held_out_tau(store, monkeypatch, capsys):
    project, uri, finished = store
    monkeypatch.chdir(project)
    assert main(["predictor", "fit", "--experiment", "earlier", "--tracking-uri", uri]) == 0
    assert f"fitted on {finished} trials" in capsys.readouterr().out
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("earlier").experiment_id
    run, = client.search_runs([experiment], f"tags.`nas.kind` = '{KIND_PREDICTOR}'")
    assert -1 <= run.data.metrics["kendall_tau"] <= 1 and run.data.metrics["pairs"] == finished
    model = Predictor.from_bytes(LineageStore(uri, "earlier").read_bytes(run.info.run_id, PREDICTOR_FILE))
    assert model.members == 5
    assert main(["predictor", "fit", "--experiment", "nothing-here", "--tracking-uri", uri]) == 2
