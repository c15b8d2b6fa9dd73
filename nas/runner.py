"""Running one trial: claim it in the lineage store, train it, record it.

`run_trial` is what every runner does for a candidate, whether a Prefect task calls it
(tasks/train.py) or a thread of this process does (`ThreadRunner`, the default of the
Python API). It never trains a trial that has a result in the store, and never trains a
key that another thread or process is training (see `LineageStore.claim_trial`).
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from nas.batched import train_together
from nas.build import inherited_weights
from nas.config import SearchConfig
from nas.data import DataError, DataMeta
from nas.lineage import KIND_TRIAL, Claim, LineageError, LineageStore
from nas.space import HParams, SearchSpace
from nas.space.architecture import learned_run
from nas.threads import torch_threads, using_threads
from nas.train import TrainData, load_data, pick_device, test_accuracy, train
from nas.trial import Candidate, Evaluation, TrialSetting

CV_MAX_ROWS = 1000  # below this many train+val rows, the val split is too small to rank networks ...
CV_FOLDS = 5  # ... so trials are scored by this many folds of cross-validation instead
EPOCHS = 20  # a trial's training when --epochs is not given ...
SMALL_DATA_EPOCHS = 100  # ... and below CV_MAX_ROWS, where an epoch is a few optimiser steps


@dataclass(frozen=True)
class TrialJob:
    """Where a search's trials are recorded, and what every one of them shares."""

    setting: TrialSetting
    experiment: str
    tracking_uri: str
    parent_run_id: str | None
    strategy: str
    tags: dict[str, str] = field(default_factory=dict)
    kind: str = KIND_TRIAL
    measure_test: bool = True
    log_model: bool = False  # log the network as an MLflow model too (the final run of refinement)
    dataset: dict[str, Any] | None = None  # the prepared data's DataMeta, logged as each run's dataset input
    cuda_graphs: bool = True  # see nas.train.train

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> TrialJob:
        return TrialJob(**{**data, "setting": TrialSetting(**data["setting"])})


def small_data(meta: DataMeta) -> bool:
    return meta.counts["train"] + meta.counts["val"] < CV_MAX_ROWS


def with_epochs(config: SearchConfig, meta: DataMeta) -> SearchConfig:
    """`config` with its epochs resolved for its data, when --epochs was not given.

    On 455 rows (breast cancer's train+val) an epoch is 8 to 15 steps: in 20 epochs not even
    logistic regression converges (4 test errors in 114, against 2 at 100 epochs), and the
    networks cross-validation ranks first are the undertrained ones. So a small table trains longer.
    """
    if config.epochs is not None:
        return config
    return replace(config, epochs=SMALL_DATA_EPOCHS if small_data(meta) else EPOCHS)


def trial_setting(config: SearchConfig, meta: DataMeta, space: SearchSpace) -> TrialSetting:
    """What a search's configuration fixes for all its trials, resolved for its data: the
    device (cuda when present) and the folds (`config.cv`, or automatic: see CV_MAX_ROWS)."""
    folds = config.cv or (CV_FOLDS if small_data(meta) else 1)
    return TrialSetting(meta.fingerprint, config.seed, pick_device(config.device).type,
                        config.max_params or space.max_params, folds)


def _claim(candidate: Candidate, data: TrainData, job: TrialJob,
           tags: dict[str, str] | None) -> tuple[LineageStore, Claim]:
    """The store, and the candidate's result there or this process's claim to train it."""
    if data.fingerprint != job.setting.data_fingerprint:
        raise DataError(f"the prepared data changed while the search ran (fingerprint {data.fingerprint}, the "
                        f"search started with {job.setting.data_fingerprint}); run the search again, which "
                        "prepares the data anew, instead of preparing it in another terminal meanwhile.")
    store = LineageStore(job.tracking_uri, job.experiment)
    claim = store.claim_trial(candidate, candidate.trial_key(job.setting), parent_run_id=job.parent_run_id,
                              strategy=job.strategy, data_fingerprint=data.fingerprint,
                              tags={**job.tags, **(tags or {})}, kind=job.kind,
                              dataset=DataMeta.from_json(job.dataset) if job.dataset else None)
    return store, claim


def run_trial(candidate: Candidate, data: TrainData, job: TrialJob, tags: dict[str, str] | None = None) -> Evaluation:
    """The recorded result of `candidate`: found in the store, waited for, or trained now."""
    store, claim = _claim(candidate, data, job, tags)
    if claim.result is not None:
        return _with_test(store, claim.result, data, job)
    run_id = claim.run_id
    assert run_id is not None
    streamed: set[tuple[str, int]] = set()

    def stream(step: int, metrics: dict[str, float]) -> None:
        try:
            store.log_step(run_id, step, metrics)
        except Exception as error:  # a lost point is logged with the result; training goes on
            logging.getLogger(__name__).warning("metrics of run %s at step %d were not logged: %s", run_id, step,
                                                error)
            return
        streamed.update((name, step) for name in metrics)

    try:
        with store.heartbeat(run_id):
            init = _inherited(store, candidate, run_id)
            # A cross-validated run keeps no checkpoint (see nas.train._cross_validate): it starts afresh.
            continues = candidate.resume_from is not None and job.setting.folds == 1
            resume = store.checkpoint(candidate.resume_from) if continues else None
            outcome = train(candidate, data, seed=job.setting.seed, device=job.setting.device,
                            max_params=job.setting.max_params, init_weights=init, resume=resume,
                            measure_test=job.measure_test, folds=job.setting.folds, on_metrics=stream,
                            cuda_graphs=job.cuda_graphs, learned=learned_optimizer(store, candidate.hparams))
        outcome.evaluation.run_id = run_id
        if job.log_model and outcome.model is not None:  # before finishing: find() trusts a FINISHED run
            example = data.x_train[:4].cpu().numpy()
            store.log_model(run_id, outcome.model.cpu().eval(), example, source_run_id=run_id)
        store.finish_trial(run_id, outcome.evaluation, outcome.weights, outcome.checkpoint, streamed)
    except BaseException as exc:
        store.fail_trial(run_id, f"{type(exc).__name__}: {exc}")
        raise
    return outcome.evaluation


def batches(job: TrialJob) -> bool:
    """Whether the job's trials may train in groups: not cross-validated, not a final model."""
    return job.setting.folds == 1 and not job.log_model


def run_group(candidates: list[Candidate], data: TrainData, job: TrialJob,
              tags: dict[str, str] | None = None) -> list[Evaluation]:
    """`run_trial` for candidates that `nas.batched.groups` put together: each is claimed and
    recorded as its own run, and those the store has no result for train as one batched network.

    Its metrics reach the store when the group ends, not epoch by epoch. A job that cannot
    batch (see `batches`) trains them one by one.
    """
    if len(candidates) == 1 or not batches(job):
        return [run_trial(c, data, job, tags) for c in candidates]
    claims = [_claim(c, data, job, tags) for c in candidates]
    store = claims[0][0]
    results = [claim.result and _with_test(store, claim.result, data, job) for _, claim in claims]
    todo = [i for i, result in enumerate(results) if result is None]
    try:
        with ExitStack() as beats:
            for i in todo:
                beats.enter_context(store.heartbeat(claims[i][1].run_id))
            outcomes = train_together([candidates[i] for i in todo], data, seed=job.setting.seed,
                                      device=job.setting.device, max_params=job.setting.max_params,
                                      measure_test=job.measure_test)
        for i, outcome in zip(todo, outcomes):
            outcome.evaluation.run_id = claims[i][1].run_id
            store.finish_trial(outcome.evaluation.run_id, outcome.evaluation, outcome.weights, None, set())
            results[i] = outcome.evaluation
    except BaseException as exc:
        for i in todo:
            if results[i] is None:
                store.fail_trial(claims[i][1].run_id, f"{type(exc).__name__}: {exc}")
        raise
    return results


def _with_test(store: LineageStore, evaluation: Evaluation, data: TrainData, job: TrialJob) -> Evaluation:
    """A stored result, measured on the test split now if this job asks for it (--report-test after the
    same search without it) and it was not: the test changes no training, so it is not in the trial key."""
    if not job.measure_test or evaluation.test_acc is not None or not evaluation.ok or job.setting.folds > 1:
        return evaluation
    assert evaluation.run_id is not None
    evaluation.test_acc = test_accuracy(evaluation.candidate.arch, store.weights(evaluation.run_id), data)
    store.add_test_accuracy(evaluation)
    return evaluation


def _inherited(store: LineageStore, candidate: Candidate, run_id: str) -> dict[str, torch.Tensor] | None:
    """The parent's weights for this child; when they cannot be had, fresh weights, said in a tag."""
    if not candidate.inherit_from:
        return None
    try:
        parent = store.weights(candidate.inherit_from)
    except LineageError as error:
        store.log_result(run_id, {}, {"nas.inherit": f"unavailable, trained from fresh weights: {error}"})
        return None
    return inherited_weights(parent, candidate.info.get("node_map"))


def learned_optimizer(store: LineageStore, hparams: HParams) -> torch.nn.Module | None:
    """The network of the learned optimiser `hparams` names ("learned:<run id>"), else None."""
    run_id = learned_run(hparams.optimizer)
    if run_id is None:
        return None
    from nas.learned_opt import from_bytes

    return from_bytes(store.learned_optimizer(run_id))


class ThreadRunner:
    """Trials as threads of this process, `concurrency` at a time: a runner for `nas.loop.run_loop`."""

    def __init__(self, data_dir: str | Path, job: TrialJob, concurrency: int = 1) -> None:
        self.data = load_data(data_dir, job.setting.device)
        self.job = job
        self.threads = torch_threads(concurrency)
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="trial")

    def __call__(self, candidate: Candidate) -> Future[Evaluation]:
        return self.pool.submit(self._run, candidate)

    def _run(self, candidate: Candidate) -> Evaluation:
        with using_threads(self.threads):
            return run_trial(candidate, self.data, self.job)

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def __enter__(self) -> ThreadRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
