"""Prefect tasks: train one candidate, or a group of one shape, and record each in the lineage store
(`nas.runner.run_trial`, `run_group`).

The cache key is the trial key (a group's: its members') (everything that decides the result: see
`Candidate.trial_key`) plus the store it is recorded in, and results persist as JSON. A
repeated or interrupted search therefore never retrains a finished candidate; should
Prefect's cache be gone, the lineage store still knows the trial and it is not trained
twice either. The cache answers to the store: a trial the store holds no finished run of is
submitted with the cache refreshed (flows.common.prefect_runner), so a deleted store or run
trains again instead of being read back from Prefect. A failure of the environment (time limit, out of memory) raises, so that
Prefect caches nothing and a rerun trains the trial again.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import Any

from prefect import task
from prefect.context import TaskRunContext
from prefect.runtime import flow_run, task_run

from nas.cluster import pin_local_worker_gpu
from nas.ids import digest
from nas.data import DataError, read_meta
from nas.lineage import KIND_FINAL, LineageStore
from nas.runner import TrialJob, run_group
from nas.space.architecture import ArchitectureError
from nas.threads import using_threads
from nas.train import TrainData, load_data, with_validation
from nas.trial import Candidate, TrialInterrupted


def _store_digest(job: dict[str, Any]) -> str:
    """The store a result is recorded in, and whether it holds a test measurement (--report-test)."""
    return digest([job["tracking_uri"], job["experiment"], *(["test"] if job["measure_test"] else [])], 8)


def _trial_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    return f"trial-{parameters['trial_key']}-{_store_digest(parameters['job'])}"


def _group_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    return f"group-{digest(parameters['trial_keys'])}-{_store_digest(parameters['job'])}"


def _infrastructure_error_only(task: Any, task_run: Any, state: Any) -> bool:
    """Retry when the store or the filesystem hiccups, never for a user's mistake or an interrupted trial."""
    return not isinstance(state.data, (ValueError, TypeError, KeyError, ArchitectureError, TrialInterrupted))


# Every trial of a search reads the same prepared split: keep the last two in memory (a
# search and its final training). The fingerprint is part of the key, and run_trial checks
# the loaded data against it, so a split prepared anew is never served stale.
@functools.lru_cache(maxsize=2)
def _loaded(data_dir: str, device: str, fingerprint: str, tracking_uri: str, experiment: str) -> TrainData:
    return load_data(_data_on_this_machine(data_dir, fingerprint, tracking_uri, experiment), device)


def _data_on_this_machine(data_dir: str, fingerprint: str, tracking_uri: str, experiment: str) -> Path:
    """The search's data folder; on a cluster worker without it, the copy fetched from the store
    (shared by the search: LineageStore.share_data) into the user's cache."""
    with contextlib.suppress(DataError):
        if read_meta(data_dir).fingerprint == fingerprint:
            return Path(data_dir)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nas" / "data"
    return LineageStore(tracking_uri, experiment).fetch_data(fingerprint, cache)


def _run(candidates: list[dict[str, Any]], job: dict[str, Any], data_dir: str) -> list[dict[str, Any]]:
    pin_local_worker_gpu()
    trial_job = TrialJob.from_json(job)
    setting = trial_job.setting
    data = _loaded(data_dir, setting.device, setting.data_fingerprint.removesuffix(with_validation("")),
                   trial_job.tracking_uri, trial_job.experiment)
    if trial_job.kind == KIND_FINAL:  # the chosen recipe on train+val; its setting carries that fingerprint
        data = data.with_validation_in_training()
    tags = {"prefect.flow_run_id": str(flow_run.id), "prefect.task_run_id": str(task_run.id)}
    evaluations = run_group([Candidate.from_json(c) for c in candidates], data, trial_job, tags)
    interrupted = [e.reason for e in evaluations if e.retryable]
    if interrupted:
        raise TrialInterrupted("; ".join(interrupted))
    return [e.to_json() for e in evaluations]


@task(name="train-candidate", task_run_name="train-{trial_key}", cache_key_fn=_trial_cache_key,
      persist_result=True, result_serializer="json", retries=2, retry_delay_seconds=2,
      retry_condition_fn=_infrastructure_error_only)
def train_candidate(candidate: dict[str, Any], trial_key: str, *, job: dict[str, Any], data_dir: str,
                    threads: int = 1) -> dict[str, Any]:
    # A worker thread left at the process default runs small networks about half as fast.
    with using_threads(threads):
        return _run([candidate], job, data_dir)[0]


@task(name="train-group", task_run_name="train-group-{trial_keys[0]}", cache_key_fn=_group_cache_key,
      persist_result=True, result_serializer="json", retries=2, retry_delay_seconds=2,
      retry_condition_fn=_infrastructure_error_only)
def train_group(candidates: list[dict[str, Any]], trial_keys: list[str], *, job: dict[str, Any], data_dir: str,
                threads: int = 1) -> list[dict[str, Any]]:
    """Candidates of one shape (nas.batched.groups) trained as one batched network, each its own run."""
    with using_threads(threads):
        return _run(candidates, job, data_dir)
