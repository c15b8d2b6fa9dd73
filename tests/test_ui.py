"""`nas show` prints a run, and `nas ui` serves the MLflow UI on 127.0.0.1 against the same store."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from nas.lineage import LineageStore
from nas.space import Architecture, HParams, Node
from nas.trial import Budget, Candidate, Evaluation
from tests.conftest import free_port


def test_ui_lists_the_trials_of_the_store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    store = LineageStore(uri, "ui-test")
    arch = Architecture((Node.make("input"), Node.make("flatten", [0]), Node.make("head", [1])))
    candidate = Candidate(arch, HParams(), Budget(1))
    parent = store.start_search({"strategy": "random"}, None, "fp")
    run_id = store.claim_trial(candidate, "key", parent_run_id=parent, strategy="random", data_fingerprint="fp").run_id
    store.finish_trial(run_id, Evaluation(candidate, "key", val_acc=0.5, test_acc=0.4, run_id=run_id))

    shown = subprocess.run([sys.executable, "-m", "nas.cli", "show", run_id, "--tracking-uri", uri,
                            "--experiment", "ui-test"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "nas.trial_key" in shown.stdout and "1  flatten" in shown.stdout

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "nas.cli", "ui", "--port", str(port), "--tracking-uri", uri],
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        body = None
        deadline = time.time() + 90
        while time.time() < deadline and body is None:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search", method="POST",
                    data=json.dumps({"experiment_ids": [store.experiment_id]}).encode(),
                    headers={"Content-Type": "application/json"})
                body = json.loads(urllib.request.urlopen(request, timeout=5).read())
            except OSError:
                assert process.poll() is None, "nas ui exited"
                time.sleep(1)
        assert body is not None, "the UI did not answer within 90 s"
        ids = {run["info"]["run_id"] for run in body["runs"]}
        assert {parent, run_id} <= ids
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        assert "<html" in page.lower()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
