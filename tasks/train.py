"""Prefect tasks: train one candidate and record it in the lineage store.

The cache key is the trial key (graph, hparams, budget, data fingerprint, seed, training
version) plus the store it is recorded in, and results persist as JSON. A repeated or
interrupted search therefore never retrains a finished candidate; should Prefect's cache
be gone, the lineage store still knows the trial and it is not trained twice either.
"""

from __future__ import annotations

from typing import Any

import torch
from prefect import task
from prefect.context import TaskRunContext
from prefect.runtime import flow_run, task_run

from nas.build import inherited_weights
from nas.lineage import KIND_FINAL, KIND_TRIAL, LineageStore
from nas.space.architecture import ArchitectureError, digest
from nas.train import TrainData, load_data, train
from nas.trial import Candidate


def _trial_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    store = digest([parameters["tracking_uri"], parameters["experiment"]], 8)
    return f"trial-{parameters['trial_key']}-{store}"


def _infrastructure_error_only(task: Any, task_run: Any, state: Any) -> bool:
    """Retry when the store or the filesystem hiccups, never for a user's mistake."""
    return not isinstance(state.data, (ValueError, TypeError, KeyError, ArchitectureError))


def _train_and_record(candidate: dict[str, Any], trial_key: str, data: TrainData, *, seed: int, experiment: str,
                      tracking_uri: str, parent_run_id: str, strategy: str, max_params: int | None,
                      device: str | None, tags: dict[str, str] | None, kind: str = KIND_TRIAL,
                      measure_test: bool = True, log_model: bool = False) -> dict[str, Any]:
    store = LineageStore(tracking_uri, experiment)
    finished = store.find(trial_key)
    if finished is not None:
        return finished.to_json()
    cand = Candidate.from_json(candidate)
    run_tags = {**(tags or {}), "prefect.flow_run_id": str(flow_run.id), "prefect.task_run_id": str(task_run.id)}
    run_id = store.start_trial(cand, trial_key, parent_run_id=parent_run_id, strategy=strategy,
                               data_fingerprint=data.fingerprint, tags=run_tags, kind=kind)
    try:
        init = inherited_weights(store.weights(cand.inherit_from), cand.info.get("node_map")) \
            if cand.inherit_from else None
        resume = store.checkpoint(cand.resume_from) if cand.resume_from else None
        outcome = train(cand, data, seed=seed, device=device, max_params=max_params, init_weights=init,
                        resume=resume, measure_test=measure_test)
        outcome.evaluation.run_id = run_id
        if log_model and outcome.model is not None:  # before finishing: find() trusts a FINISHED run
            example = data.x_train[:4].cpu().numpy()
            store.log_model(run_id, outcome.model.cpu().eval(), example, source_run_id=run_id)
        store.finish_trial(run_id, outcome.evaluation, outcome.weights, outcome.checkpoint)
    except BaseException as exc:
        store.fail_trial(run_id, f"{type(exc).__name__}: {exc}")
        raise
    return outcome.evaluation.to_json()


@task(name="train-candidate", task_run_name="train-{trial_key}", cache_key_fn=_trial_cache_key,
      persist_result=True, result_serializer="json", retries=2, retry_delay_seconds=2,
      retry_condition_fn=_infrastructure_error_only)
def train_candidate(candidate: dict[str, Any], trial_key: str, *, data_dir: str, seed: int, experiment: str,
                    tracking_uri: str, parent_run_id: str, strategy: str, max_params: int | None = None,
                    device: str | None = None, threads: int = 1, tags: dict[str, str] | None = None,
                    measure_test: bool = True) -> dict[str, Any]:
    # Per thread: OpenMP keeps its thread count per calling thread, and a worker thread
    # left at the process default runs small networks about half as fast.
    torch.set_num_threads(threads)
    return _train_and_record(candidate, trial_key, load_data(data_dir, device), seed=seed, experiment=experiment,
                             tracking_uri=tracking_uri, parent_run_id=parent_run_id, strategy=strategy,
                             max_params=max_params, device=device, tags=tags, measure_test=measure_test)


@task(name="train-final", task_run_name="final-{trial_key}", cache_key_fn=_trial_cache_key,
      persist_result=True, result_serializer="json", retries=2, retry_delay_seconds=2,
      retry_condition_fn=_infrastructure_error_only)
def train_final(candidate: dict[str, Any], trial_key: str, *, data_dir: str, seed: int, experiment: str,
                tracking_uri: str, parent_run_id: str, max_params: int | None = None, device: str | None = None,
                tags: dict[str, str] | None = None) -> dict[str, Any]:
    """The chosen network and recipe trained on train+val, logged as an MLflow model; test stays untouched.

    `trial_key` must be computed with the train+val fingerprint (nas.train.with_validation).
    """
    data = load_data(data_dir, device).with_validation_in_training()
    return _train_and_record(candidate, trial_key, data, seed=seed, experiment=experiment, tracking_uri=tracking_uri,
                             parent_run_id=parent_run_id, strategy="final", max_params=max_params, device=device,
                             tags=tags, kind=KIND_FINAL, measure_test=False, log_model=True)
