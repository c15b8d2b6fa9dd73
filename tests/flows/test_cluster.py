"""Trials on Dask workers: a local cluster the search starts (--workers) and a running one by its
address (--cluster), each of real worker processes on loopback; the results are those of threads."""

import os
import signal
import threading
import time
from collections import Counter
from dataclasses import replace

import mlflow
import pytest
from distributed import LocalCluster

from flows.search import run_search
from nas.checks import check_search
from nas.config import DataConfig, SearchConfig
from nas.data import read_meta
from nas.lineage import KIND_DATA, LineageStore
from nas.train import load_data
from tasks.train import _data_on_this_machine
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def by_threads(tmp_path_factory, digits_dir, prefect_api):
    """One store for the module, holding the same search trained by threads of this process."""
    store = tmp_path_factory.mktemp("cluster")
    config = SearchConfig(data=DataConfig(source="digits", data_dir=str(digits_dir)),
                          space=str(ROOT / "spaces/small-cnn.yaml"), trials=4, epochs=1, seed=5, concurrency=2,
                          experiment="threads", tracking_uri=f"sqlite:///{store}/mlflow.db")
    run_search(config)
    return config


def trials(config, experiment):
    """trial key -> (val_acc, the process that trained it) of an experiment's finished trials."""
    client = mlflow.MlflowClient(config.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                              "tags.`nas.kind` = 'trial' and attributes.status = 'FINISHED'")
    return {r.data.tags["nas.trial_key"]: (r.data.metrics["val_acc"], int(r.data.tags["nas.owner"].rpartition(":")[2]))
            for r in runs}


def same_results_elsewhere(config, experiment):
    """Assert the experiment's trials are the threads' trials, with the same scores, trained by other processes."""
    here, there = trials(config, "threads"), trials(config, experiment)
    assert {k: acc for k, (acc, _) in there.items()} == {k: acc for k, (acc, _) in here.items()}
    workers = {pid for _, pid in there.values()}
    assert os.getpid() not in workers and 1 <= len(workers) <= 2, workers
    return workers


def test_a_local_cluster_trains_the_trials_in_worker_processes_with_the_results_of_threads(by_threads):
    summary = run_search(replace(by_threads, experiment="local", concurrency=None, dask_workers=2))
    assert summary["trials"] == 4
    same_results_elsewhere(by_threads, "local")


def test_a_running_cluster_is_used_by_address_and_its_workers_can_fetch_the_data(by_threads, tmp_path, monkeypatch):
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        run_search(replace(by_threads, experiment="remote", concurrency=None, cluster=cluster.scheduler_address))
        assert same_results_elsewhere(by_threads, "remote") <= {n.process.pid for n in cluster.workers.values()}
    # The search shared its data through the store; a worker without the project's disk fetches it from there.
    fingerprint = read_meta(by_threads.data.data_dir).fingerprint
    store = LineageStore(by_threads.tracking_uri, "remote")
    assert store.finished_run_of(KIND_DATA, fingerprint)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    fetched = _data_on_this_machine(str(tmp_path / "not-on-this-worker"), fingerprint, by_threads.tracking_uri,
                                    "remote")
    assert fetched == tmp_path / "nas" / "data" / fingerprint
    original = load_data(by_threads.data.data_dir, "cpu")
    assert load_data(fetched, "cpu").x_train.equal(original.x_train)


def test_workers_that_declare_gpus_train_one_trial_per_gpu_at_a_time(by_threads):
    """Two workers of two threads each, declaring one GPU each (as `dask worker --resources GPU=1`
    would): four trials submitted at once still train one per worker at a time."""
    with LocalCluster(n_workers=2, threads_per_worker=2, resources={"GPU": 1}, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        config = replace(by_threads, experiment="gpus", concurrency=None, cluster=cluster.scheduler_address)
        assert check_search(config).config.concurrency == 2  # the GPUs, not the 4 threads
        run_search(replace(config, concurrency=4, asynchronous=True))  # async: a new trial as each one ends
    same_results_elsewhere(by_threads, "gpus")
    client = mlflow.MlflowClient(by_threads.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("gpus").experiment_id],
                              "tags.`nas.kind` = 'trial' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time ASC"])
    by_worker = {}
    for run in runs:
        by_worker.setdefault(run.data.tags["nas.owner"], []).append((run.info.start_time, run.info.end_time))
    for spans in by_worker.values():
        assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), spans


def test_evolution_under_hyperband_on_workers_inherits_and_resumes_as_threads_do(by_threads):
    """Worker processes read parents' weights and shorter rungs' checkpoints from the store: the same
    trials and scores as threads, with children that inherited and promotions that resumed."""
    combo = replace(by_threads, strategy="evolution", population=4, scheduler="hyperband", trials=8, epochs=3,
                    space=str(ROOT / "spaces/cnn.yaml"))
    run_search(replace(combo, experiment="evo-threads"))
    run_search(replace(combo, experiment="evo-workers", concurrency=None, dask_workers=2))
    client = mlflow.MlflowClient(by_threads.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("evo-workers").experiment_id],
                              "tags.`nas.kind` = 'trial' and attributes.status = 'FINISHED'")
    assert any("nas.resumed_at" in r.data.tags for r in runs) and any("nas.inherited_tensors" in r.data.tags
                                                                     for r in runs)
    # A child's trial key names the run it inherits from, which differs between the experiments: compare scores.
    here, there = trials(by_threads, "evo-threads"), trials(by_threads, "evo-workers")
    assert sorted(acc for acc, _ in there.values()) == sorted(acc for acc, _ in here.values())
    assert os.getpid() not in {pid for _, pid in there.values()}


def test_a_worker_killed_in_the_middle_of_a_trial_is_replaced_and_the_trial_trained_once(by_threads):
    client = mlflow.MlflowClient(by_threads.tracking_uri)
    killed = []

    def kill_a_worker_mid_trial() -> None:
        """SIGKILL the process that owns the first trial seen running, as a machine failure would."""
        while not killed and not done.is_set():
            experiment = client.get_experiment_by_name("killed")
            running = experiment and client.search_runs(
                [experiment.experiment_id], "tags.`nas.kind` = 'trial' and attributes.status = 'RUNNING'")
            if running:
                killed.append(int(running[0].data.tags["nas.owner"].rpartition(":")[2]))
                os.kill(killed[0], signal.SIGKILL)
            time.sleep(0.1)

    done = threading.Event()
    killer = threading.Thread(target=kill_a_worker_mid_trial)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        killer.start()
        try:
            summary = run_search(replace(by_threads, experiment="killed", concurrency=None, epochs=6,
                                         cluster=cluster.scheduler_address))
        finally:
            done.set()
            killer.join()
    assert killed and killed[0] != os.getpid()
    assert summary["trials"] == 4
    runs = client.search_runs([client.get_experiment_by_name("killed").experiment_id], "tags.`nas.kind` = 'trial'")
    finished = Counter(r.data.tags["nas.trial_key"] for r in runs if r.info.status == "FINISHED")
    assert len(finished) == 4 and set(finished.values()) == {1}, finished
    assert all(not r.data.tags["nas.owner"].endswith(f":{killed[0]}") for r in runs if r.info.status == "FINISHED")
    # The killed attempt was found with its owner gone, explained and set aside by the attempt that took over.
    abandoned = client.search_runs([client.get_experiment_by_name("killed").experiment_id], "tags.`nas.kind` = 'trial'",
                                   run_view_type=mlflow.entities.ViewType.DELETED_ONLY)
    assert [r.data.tags["nas.status"] for r in abandoned] == ["abandoned"]
    assert f":{killed[0]}" in abandoned[0].data.tags["nas.owner"]
