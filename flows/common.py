"""What the flows share: the prepared data, the Prefect trial runner, and how a result reads in the log."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from prefect import Flow, Task
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from nas.batched import groups
from nas.config import SearchConfig
from nas.data import DataError, DataMeta, read_meta
from nas.lineage import LineageStore
from nas.loop import Submit, SubmitGroup
from nas.runner import TrialJob, batches
from nas.threads import torch_threads
from nas.trial import Candidate, Evaluation
from tasks.prepare import prepare_data
from tasks.train import train_candidate, train_group


def describe(e: Evaluation) -> str:
    if not e.ok:
        return f"{e.arch_id} failed: {e.reason}"
    test = f" test {e.test_acc:.4f}" if e.test_acc is not None else ""
    return f"{e.arch_id} val {e.val_acc:.4f}{test} ({e.params:,} params, {e.seconds:.1f}s, run {e.run_id})"


def _fingerprint_on_disk(data_dir: Path) -> str | None:
    try:
        return read_meta(data_dir).fingerprint
    except DataError:
        return None


def prepared_data(cfg: SearchConfig, data_dir: Path) -> DataMeta:
    """The prepare task's result, redone when the cache remembers files that are gone or replaced."""
    options = dict(source=cfg.data.source, out_dir=str(data_dir), label_column=cfg.data.label_column,
                   shape=list(cfg.data.shape) if cfg.data.shape else None, seed=cfg.data.split_seed)
    meta = DataMeta.from_json(prepare_data(**options))
    if _fingerprint_on_disk(data_dir) != meta.fingerprint:
        meta = DataMeta.from_json(prepare_data.with_options(refresh_cache=True)(**options))
    if cfg.cluster:  # its workers may not share this disk: they fetch the data from the store
        LineageStore(cfg.tracking_uri, cfg.experiment_name).share_data(meta, data_dir)
    return meta


def run_flow(flow: Flow, cfg: SearchConfig, *args: Any) -> Any:
    """Run `flow` with its tasks where `cfg` says (trial_runner)."""
    with prefect_api_for_workers(cfg):
        return flow.with_options(task_runner=trial_runner(cfg))(*args)


@contextlib.contextmanager
def prefect_api_for_workers(cfg: SearchConfig) -> Iterator[None]:
    """Dask workers are other processes. Without a Prefect server to report to, each would start
    a temporary one of its own (10 s or more, and task runs recorded where nobody looks), so
    the flow's temporary server is started here and its address travels with every task."""
    if not (cfg.cluster or cfg.dask_workers) or PREFECT_API_URL.value():
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the one the flow would start itself; it stops when this process exits
    server.start()
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        yield


def trial_runner(cfg: SearchConfig) -> TaskRunner:
    """Where a flow's tasks run: threads of this process, `cfg.workers` at a time (Prefect's
    default is unbounded); the workers of the Dask cluster at `cfg.cluster`; or, with
    `cfg.dask_workers`, a local Dask cluster of that many single-threaded worker processes on
    loopback, started for the flow and stopped after it."""
    if not (cfg.cluster or cfg.dask_workers):
        return ThreadPoolTaskRunner(max_workers=cfg.workers)
    from flows.dask_runner import TrialDaskRunner

    if cfg.cluster:
        return TrialDaskRunner(address=cfg.cluster)
    # Single-threaded workers train one trial each; on a machine with GPUs, worker i trains on GPU i mod
    # their count (nas.cluster.pin_local_worker_gpu).
    return TrialDaskRunner(cluster_class="distributed.LocalCluster",
                           cluster_kwargs={"n_workers": cfg.dask_workers, "threads_per_worker": 1, "processes": True,
                                           "host": "127.0.0.1", "dashboard_address": None})


def prefect_runner(job: TrialJob, data_dir: Path, concurrency: int) -> Submit:
    """A runner for `nas.loop.run_loop`: each candidate becomes a cached `train_candidate` task."""
    threads = torch_threads(concurrency)
    store = LineageStore(job.tracking_uri, job.experiment)

    def submit(candidate: Candidate) -> Future[Evaluation]:
        key = candidate.trial_key(job.setting)
        return _as_future(_answering_to(store, [key], train_candidate).submit(
            candidate.to_json(), key, job=job.to_json(), data_dir=str(data_dir), threads=threads))
    return submit


def prefect_group_runner(job: TrialJob, data_dir: Path, concurrency: int) -> SubmitGroup:
    """A round's candidates as Prefect tasks: those of one shape (nas.batched.groups) as one
    `train_group` task that trains them as one batched network, the rest one task each."""
    submit = prefect_runner(job, data_dir, concurrency)
    store = LineageStore(job.tracking_uri, job.experiment)

    def submit_group(candidates: list[Candidate]) -> list[Future[Evaluation]]:
        futures: dict[int, Future[Evaluation]] = {}
        for group in groups(candidates) if batches(job) else [[c] for c in candidates]:
            if len(group) == 1:
                futures[id(group[0])] = submit(group[0])
                continue
            keys = [c.trial_key(job.setting) for c in group]
            # The group stands for len(group) trials at once: it gets their threads.
            done = _answering_to(store, keys, train_group).submit(
                [c.to_json() for c in group], keys, job=job.to_json(), data_dir=str(data_dir),
                threads=min(os.cpu_count() or 1, torch_threads(concurrency) * len(group)))
            for position, candidate in enumerate(group):
                futures[id(candidate)] = _as_future(done, lambda results, i=position: results[i])
        return [futures[id(c)] for c in candidates]
    return submit_group


def _answering_to(store: LineageStore, trial_keys: list[str], task: Task) -> Task:
    """`task`, reading Prefect's cache only where the store holds a finished run of every trial: a
    cached result whose run was deleted (the store folder, `nas gc`, the UI) would name a run that
    is not there, so then the task runs (the store's claim trains or finds the trial) and its
    result replaces the cached one."""
    if all(store.has_result(key) for key in trial_keys):
        return task
    return task.with_options(refresh_cache=True)


def _as_future(prefect_future: Any, pick: Callable[[Any], Any] = lambda result: result) -> Future[Evaluation]:
    """A Prefect future (of one result, or of a group's `pick`ed one) as a standard one, which
    the loop can wait on with others."""
    future: Future[Evaluation] = Future()

    def settle(done: Any) -> None:
        try:
            future.set_result(Evaluation.from_json(pick(done.result())))
        except BaseException as error:  # the loop tells it as an ERROR result
            future.set_exception(error)

    prefect_future.add_done_callback(settle)
    return future
