"""A learned optimiser in the lineage store: meta-trained once, then a training choice of any search."""

from __future__ import annotations

from dataclasses import replace

import pytest
import yaml
from mlflow.tracking import MlflowClient

from nas.api import create_search
from nas.config import ConfigError, SearchConfig
from nas.lineage import KIND_LEARNED_OPTIMIZER, LineageError, LineageStore
from nas.meta_train import MetaTrainSettings, learned_optimizer_run
from tests.conftest import ROOT

TINY = MetaTrainSettings(source="digits", tasks=2, rows=128, iterations=6, unroll=5, horizon=10, batch=1, validation=1)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return tmp_path_factory.mktemp("meta")


@pytest.fixture(scope="module")
def learned(project):
    """The run id of a tiny meta-trained optimiser, in the module's store."""
    store = LineageStore(f"sqlite:///{project}/mlflow.db", "learned-optimizers", project)
    run_id, trained = learned_optimizer_run(store, TINY)
    assert trained
    return run_id


def test_meta_training_is_one_run_and_the_same_settings_find_it(project, learned):
    uri = f"sqlite:///{project}/mlflow.db"
    run = MlflowClient(uri).get_run(learned)
    assert run.info.status == "FINISHED" and run.data.tags["nas.kind"] == KIND_LEARNED_OPTIMIZER
    assert "meta_loss" in run.data.metrics and run.data.tags["nas.meta.iterations"] == "6"
    again, trained = learned_optimizer_run(LineageStore(uri, "learned-optimizers", project), TINY)
    assert (again, trained) == (learned, False)


def test_an_interrupted_meta_training_goes_on_in_its_run_and_ends_as_an_uninterrupted_one(project):
    uri = f"sqlite:///{project}/mlflow.db"
    settings = replace(TINY, iterations=25)  # checkpoints at 10 and 20

    def stop_at_15(iteration: int, loss: float) -> None:
        if iteration == 15:
            raise KeyboardInterrupt

    whole, _ = learned_optimizer_run(LineageStore(uri, "meta-whole", project), settings)
    interrupted = LineageStore(uri, "meta-interrupted", project)
    with pytest.raises(KeyboardInterrupt):
        learned_optimizer_run(interrupted, settings, on_iteration=stop_at_15)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("meta-interrupted").experiment_id])
    assert run.info.status == "KILLED"

    continued, trained = learned_optimizer_run(interrupted, settings)
    assert (continued, trained) == (run.info.run_id, True)  # the same run, not a second one
    finished = client.get_run(continued)
    assert finished.info.status == "FINISHED" and finished.data.tags["nas.resumed_at"] == "10"
    assert interrupted.learned_optimizer(continued) == LineageStore(uri, "meta-whole", project).learned_optimizer(whole)
    curves = [[(m.step, m.value) for m in client.get_metric_history(r, "meta_loss")] for r in (whole, continued)]
    assert curves[0] == curves[1] and [step for step, _ in curves[0]] == [9, 19, 24]


def test_a_space_file_trains_with_the_learned_optimizer_end_to_end(project, learned):
    uri = f"sqlite:///{project}/mlflow.db"
    raw = yaml.safe_load((ROOT / "spaces/mlp.yaml").read_text())
    raw["hparams"]["optimizer"] = [f"learned:{learned}"]
    space = project / "learned.yaml"
    space.write_text(yaml.safe_dump(raw))
    search = create_search("with-learned", data="digits", tracking_uri=uri, root=project, space=str(space),
                           trials=2, epochs=2, concurrency=1, max_seconds=None)
    trials = search.optimize().evaluations
    assert [e.candidate.hparams.optimizer for e in trials] == [f"learned:{learned}"] * 2
    # Trained, not merely run: ten classes, so chance is about 0.1.
    assert all(e.ok for e in trials) and max(e.val_acc for e in trials) > 0.5, [e.reason for e in trials]
    # The optimiser is part of what identifies a trial: Adam's same network is another trial.
    adam = trials[0].candidate.hparams.with_(optimizer="adam")
    assert trials[0].candidate.trial_key(search.job.setting) != \
        type(trials[0].candidate)(trials[0].candidate.arch, adam, trials[0].candidate.budget).trial_key(search.job.setting)


def test_the_learned_optimizer_resumes_under_hyperband_in_async_mode_and_a_rerun_trains_nothing(project, learned):
    uri = f"sqlite:///{project}/mlflow.db"

    def search():
        return create_search("learned-hyperband", data="digits", tracking_uri=uri, root=project,
                             space=str(ROOT / "spaces/mlp.yaml"), optimizer=f"learned:{learned}", trials=6,
                             scheduler="hyperband", min_epochs=1, epochs=3, asynchronous=True, concurrency=2,
                             max_seconds=None)

    first = search()
    trials = first.optimize().evaluations
    assert all(e.ok for e in trials), [e.reason for e in trials]
    # A promotion continues its rung's checkpoint, the learned optimiser's LSTM state included.
    assert any(e.resumed_at for e in trials)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("learned-hyperband").experiment_id
    runs = len(client.search_runs([experiment]))

    again = search()
    # The rerun tells its cache hits in the order the first run told its results, so it replays the search.
    assert [e.trial_key for e in again.optimize().evaluations] == [e.trial_key for e in trials]
    assert len(client.search_runs([experiment])) == runs  # every trial found in the store, none trained again


def test_an_unknown_learned_optimizer_fails_before_any_trial(project):
    uri = f"sqlite:///{project}/mlflow.db"
    with pytest.raises(LineageError, match="nas meta-train"):
        create_search("wrong-learned", data="digits", tracking_uri=uri, root=project, optimizer="learned:0123abc",
                      trials=1, epochs=1)
    with pytest.raises(ConfigError, match="learned:<run id>"):
        SearchConfig(optimizer="learned:not a run")
