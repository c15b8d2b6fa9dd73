"""Cross-validated trials: K-fold scoring for small data, on a real digits subset and a real MLflow store."""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from nas.config import SearchConfig
from nas.data import read_meta
from nas.lineage import LineageStore
from nas.runner import (CV_FOLDS, CV_MAX_ROWS, EPOCHS, SMALL_DATA_EPOCHS, TrialJob, run_trial, trial_setting,
                        with_epochs)
from nas.space import Architecture, HParams, Node, SearchSpace
from nas.train import TrainData, load_data, train
from nas.trial import Budget, Candidate, Evaluation, TrialSetting, TrialStatus, ranked
from tests.conftest import ROOT

FOLDS = 3


@pytest.fixture(scope="module")
def small(digits_dir: Path) -> TrainData:
    """320 rows of train+val: the size where a hold-out val split ranks networks by luck."""
    data = load_data(digits_dir, "cpu")
    return dataclasses.replace(data, x_train=data.x_train[:240], y_train=data.y_train[:240],
                               x_val=data.x_val[:80], y_val=data.y_val[:80])


def candidate(epochs: int = 2) -> Candidate:
    arch = Architecture((Node.make("input"), Node.make("flatten", [0]),
                         Node.make("dense", [1], units=32, activation="relu", dropout=0.0), Node.make("head", [2])))
    return Candidate(arch, HParams(optimizer="adam", lr=3e-3, batch_size=32, epochs=3), Budget(epochs))


def test_a_cv_trial_trains_k_folds_and_is_scored_by_their_means(small: TrainData) -> None:
    heard: list[tuple[int, dict[str, float]]] = []
    outcome = train(candidate(), small, folds=FOLDS, on_metrics=lambda step, metrics: heard.append((step, metrics)))
    ev = outcome.evaluation
    assert ev.status == TrialStatus.OK and len(ev.fold_val_accs) == len(ev.fold_val_losses) == FOLDS
    assert ev.val_acc == statistics.fmean(ev.fold_val_accs) and ev.val_loss == statistics.fmean(ev.fold_val_losses)
    assert len(ev.train_loss) == len(ev.val_accs) == ev.epochs_trained == 2
    assert ev.val_accs[-1] == pytest.approx(ev.val_acc)  # the mean curve ends at the mean score
    assert heard == [(k, {"fold_val_acc": ev.fold_val_accs[k], "fold_val_loss": ev.fold_val_losses[k]})
                     for k in range(FOLDS)]
    assert ev.test_acc is not None and 0.0 <= ev.test_acc <= 1.0
    # the refit on train+val stands for the trial; no checkpoint, though the schedule (3 epochs) is unfinished
    assert outcome.model is not None and outcome.weights.keys() == outcome.model.state_dict().keys()
    assert outcome.checkpoint is None


def test_a_cv_trial_is_deterministic_for_a_seed(small: TrainData) -> None:
    first, second = (train(candidate(), small, seed=4, folds=FOLDS, measure_test=False) for _ in range(2))
    a, b = first.evaluation, second.evaluation
    assert (a.fold_val_accs, a.fold_val_losses, a.train_loss, a.test_acc) == (b.fold_val_accs, b.fold_val_losses,
                                                                           b.train_loss, None)
    assert all(torch.equal(first.weights[k], second.weights[k]) for k in first.weights)
    assert train(candidate(), small, seed=5, folds=FOLDS).evaluation.fold_val_losses != a.fold_val_losses


def test_folds_are_part_of_the_trial_key_and_hold_out_keys_are_unchanged(small: TrainData) -> None:
    cand = candidate()
    hold_out = TrialSetting("fp", 0, "cpu")
    assert dataclasses.replace(hold_out, folds=1) == hold_out
    keys = {cand.trial_key(dataclasses.replace(hold_out, folds=k)) for k in (1, 3, 5)}
    assert len(keys) == 3
    assert cand.trial_seed(dataclasses.replace(hold_out, folds=3)) == cand.trial_seed(hold_out)
    assert train(cand, small, folds=FOLDS).evaluation.trial_key != train(cand, small).evaluation.trial_key


def test_a_failing_fold_fails_the_trial_and_says_which(small: TrainData) -> None:
    x = small.x_train.clone()
    x[::5] = float("nan")
    ev = train(candidate(), dataclasses.replace(small, x_train=x), folds=FOLDS).evaluation
    assert ev.status == TrialStatus.FAILED and ev.reason.startswith(f"fold 1 of {FOLDS}: loss became NaN")


def test_folds_resolve_from_the_config_and_the_row_count(digits_dir: Path) -> None:
    meta = read_meta(digits_dir)
    space = SearchSpace.load(ROOT / "spaces/small-cnn.yaml").bind(meta.shape, len(meta.classes))
    small_meta = dataclasses.replace(meta, counts={"train": 300, "val": 100, "test": 100})
    assert meta.counts["train"] + meta.counts["val"] >= CV_MAX_ROWS

    def folds(m, cv: int | None) -> int:
        return trial_setting(SearchConfig(cv=cv, device="cpu"), m, space).folds

    assert (folds(meta, None), folds(small_meta, None)) == (1, CV_FOLDS)
    assert (folds(small_meta, 1), folds(meta, 3)) == (1, 3)
    # without --epochs, a small table trains longer; given epochs are kept
    assert (with_epochs(SearchConfig(), meta).epochs, with_epochs(SearchConfig(), small_meta).epochs) == (
        EPOCHS, SMALL_DATA_EPOCHS)
    assert with_epochs(SearchConfig(epochs=3), small_meta).epochs == 3


# -- in the lineage store ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(uri)
    return uri


def cv_job(small: TrainData, tracking_uri: str, experiment: str) -> TrialJob:
    LineageStore(tracking_uri, experiment).ensure()
    return TrialJob(TrialSetting(small.fingerprint, 0, "cpu", folds=FOLDS), experiment, tracking_uri, None, "test",
                    measure_test=False)


def test_a_cv_trial_logs_each_fold_as_it_ends_and_the_means(small: TrainData, tracking_uri: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    client = MlflowClient(tracking_uri)
    seen: list[tuple[str, list[int]]] = []
    log_step = LineageStore.log_step

    def spying(self: LineageStore, run_id: str, step: int, metrics: dict[str, float]) -> None:
        log_step(self, run_id, step, metrics)
        seen.append((client.get_run(run_id).info.status,
                     [m.step for m in client.get_metric_history(run_id, "fold_val_acc")]))

    monkeypatch.setattr(LineageStore, "log_step", spying)
    job = cv_job(small, tracking_uri, "cv")
    ev = run_trial(candidate(), small, job)
    assert seen == [("RUNNING", list(range(k + 1))) for k in range(FOLDS)]
    run = client.get_run(ev.run_id)
    assert run.data.metrics["val_acc"] == ev.val_acc and run.data.metrics["val_loss"] == ev.val_loss
    assert "test_acc" not in run.data.metrics
    for name, values in (("fold_val_acc", ev.fold_val_accs), ("fold_val_loss", ev.fold_val_losses)):
        assert [(m.step, m.value) for m in client.get_metric_history(ev.run_id, name)] == list(enumerate(values))
    assert [m.step for m in client.get_metric_history(ev.run_id, "train_loss")] == [0, 1]  # the mean curve
    store = LineageStore(tracking_uri, "cv")
    assert store.weights(ev.run_id).keys() and store.find(ev.trial_key).fold_val_accs == ev.fold_val_accs


def test_a_promoted_cv_trial_trains_from_scratch(small: TrainData, tracking_uri: str) -> None:
    job = cv_job(small, tracking_uri, "cv-promoted")
    rung = run_trial(candidate(epochs=1), small, job)
    promoted = run_trial(dataclasses.replace(candidate(epochs=2), resume_from=rung.run_id), small, job)
    assert promoted.status == TrialStatus.OK and promoted.resumed_at == 0
    straight = train(candidate(epochs=2), small, folds=FOLDS).evaluation
    assert promoted.fold_val_accs == straight.fold_val_accs


# -- ties on validation accuracy -------------------------------------------------------------


def scored(val_acc: float, val_loss: float | None, key: str = "k") -> Evaluation:
    return Evaluation(candidate(), key, val_acc=val_acc, val_loss=val_loss, train_loss=[1.0], val_accs=[val_acc])


def test_ties_on_accuracy_go_to_the_lower_validation_loss() -> None:
    lucky, confident, unknown = scored(1.0, 0.3), scored(1.0, 0.05), scored(1.0, None)
    assert max([lucky, confident, unknown], key=lambda e: e.rank_key) is confident
    assert max([unknown, lucky], key=lambda e: e.rank_key) is lucky
    assert max([scored(0.9, 0.01), lucky], key=lambda e: e.rank_key) is lucky  # accuracy first
    assert scored(1.0, 0.1, "x").rank_key > dataclasses.replace(scored(1.0, 0.01), status=TrialStatus.FAILED).rank_key


def test_cross_validated_scores_within_a_standard_error_go_to_the_lower_loss() -> None:
    def folds(accs: list[float], val_loss: float) -> Evaluation:
        return dataclasses.replace(scored(statistics.fmean(accs), val_loss), fold_val_accs=accs)

    best = folds([1.0, 0.97, 0.99, 0.98, 1.0], 0.074)  # 0.988, standard error 0.0058
    calibrated = folds([0.98, 0.99, 0.98, 0.99, 0.98], 0.065)  # 0.984: a tie with it
    below = folds([0.97] * 5, 0.01)  # 0.97: out of reach, whatever its loss
    failed = dataclasses.replace(folds([1.0] * 5, 0.001), status=TrialStatus.FAILED)
    assert ranked([best, below, failed, calibrated]) == [calibrated, best, below]
    assert best.standard_error == pytest.approx(0.0058, abs=1e-4) and scored(1.0, 0.1).standard_error == 0.0
    # a hold-out score has no spread: accuracy first, then loss, as rank_key
    lucky, confident, worse = scored(1.0, 0.3), scored(1.0, 0.05), scored(0.99, 0.01)
    assert ranked([worse, lucky, confident]) == [confident, lucky, worse]
    assert ranked([lucky, scored(1.0, 0.3, "later")])[0] is lucky  # full ties keep the given order


def test_the_leaderboard_breaks_ties_by_validation_loss(tracking_uri: str) -> None:
    store = LineageStore(tracking_uri, "ties")
    store.ensure()
    run_ids = []
    for units, loss in ((8, 0.3), (9, None), (10, 0.05), (11, 0.2)):
        arch = Architecture((Node.make("input"), Node.make("flatten", [0]), Node.make("head", [1], units=units)))
        ev = dataclasses.replace(scored(1.0, loss, key=f"tie-{units}"), candidate=Candidate(arch, HParams(), Budget(1)))
        run_id = store.claim_trial(ev.candidate, ev.trial_key, parent_run_id=None, strategy="test",
                                   data_fingerprint="fp").run_id
        store.finish_trial(run_id, ev)
        run_ids.append(run_id)
        time.sleep(0.01)  # start times have millisecond resolution
    assert [row["run_id"] for row in store.leaderboard()] == [run_ids[2], run_ids[3], run_ids[0], run_ids[1]]
    assert json.loads(json.dumps(store.best(1)[0].to_json()))["val_loss"] == 0.05


def test_a_search_on_small_data_cross_validates_its_trials(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    from nas.api import create_search

    x, y = load_digits(return_X_y=True)
    np.savez(tmp_path / "few.npz", x=x[:400].astype(np.float32), y=y[:400])
    search = create_search("few", data=str(tmp_path / "few.npz"), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                           root=tmp_path, trials=2, epochs=1, concurrency=1, max_seconds=None)
    search.optimize()
    assert search.job.setting.folds == CV_FOLDS
    assert all(e.ok and len(e.fold_val_accs) == CV_FOLDS for e in search.trials())
