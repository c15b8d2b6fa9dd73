"""`nas serve` against a real Prefect server: the deployment fires on its interval, each firing
continues the experiment with more trials, and the runs land in MLflow tagged with their flow run."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, free_port, start_server, stop_server
from tests.test_server import _ctrl_c_heard


def finished(store: str, kind: str) -> list:
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("nightly")
    return client.search_runs([experiment.experiment_id], f"tags.`nas.kind` = '{kind}' and attributes.status = "
                              "'FINISHED'") if experiment else []


def test_a_served_schedule_fires_twice_and_each_firing_adds_trials(tmp_path, digits_dir):
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           # the scheduler and the served runner look for due runs every 2 s instead of 60 s and 10 s
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2", "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    store = f"sqlite:///{tmp_path}/mlflow.db"
    server = start_server([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                           str(port)], f"http://127.0.0.1:{port}/api/health", cwd=tmp_path, env=env)
    serving = None
    try:
        serving = subprocess.Popen([sys.executable, "-m", "nas.cli", "serve", "--every", "15", "--more-trials", "2",
                                    "--epochs", "1", "--data-dir", str(digits_dir), "--experiment", "nightly",
                                    "--space", str(ROOT / "spaces/small-cnn.yaml"), "--tracking-uri", store,
                                    "--refine-trials", "1", "--refine-top-k", "1"],
                                   cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   preexec_fn=_ctrl_c_heard)
        deadline = time.monotonic() + 300
        while len(finished(store, "search")) < 2 and serving.poll() is None and time.monotonic() < deadline:
            time.sleep(2)
        searches = finished(store, "search")
        assert len(searches) >= 2, serving.stdout.read() if serving.poll() is not None else len(searches)
    finally:
        if serving is not None:
            serving.send_signal(signal.SIGINT)
            serving.wait(timeout=60)
        stop_server(server)
    # Each finished firing's search trained two new trials and replayed the earlier ones from the store (a
    # firing's refinement trains trials too, under its own flow run): no trial was trained twice.
    trials = finished(store, "trial")
    by_flow_run = Counter(r.data.tags["prefect.flow_run_id"] for r in trials)
    assert all(by_flow_run[s.data.tags["prefect.flow_run_id"]] == 2 for s in searches), by_flow_run
    assert len({r.data.tags["nas.trial_key"] for r in trials}) == len(trials)
    # The first firing beat an empty store, so its winner was refined and registered.
    client = MlflowClient(store)
    assert client.get_registered_model("nas-nightly").aliases.get("champion")
    # `nas runs` says which firing produced each trial.
    listed = subprocess.run([sys.executable, "-m", "nas.cli", "runs", "--experiment", "nightly", "--tracking-uri",
                             store], cwd=tmp_path, capture_output=True, text=True, timeout=120).stdout
    assert all(flow_run in listed for flow_run in by_flow_run), listed


def test_a_flow_run_of_the_deployment_with_parameters_of_its_own_is_refused(tmp_path, monkeypatch):
    from flows.schedule import SERVED_PARAMETERS, scheduled_search, served_digest
    from nas.config import ConfigError, SearchConfig

    served = {"config": SearchConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db").to_json(), "refine_config": {},
              "model_name": None, "more_trials": 2}
    # What `nas serve` sets in the process whose flow runs the deployment's runs are.
    monkeypatch.setenv(SERVED_PARAMETERS, served_digest(served))
    forged = {**served, "config": {**served["config"], "tracking_uri": f"sqlite:///{tmp_path}/other.db"}}
    with pytest.raises(ConfigError, match="only the parameters"):
        scheduled_search.fn(**forged)
    assert not (tmp_path / "other.db").exists()
