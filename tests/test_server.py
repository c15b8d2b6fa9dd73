"""`nas server` as a user runs it: both servers come up on a fresh Prefect home, a search runs
through them, and Ctrl-C stops both (nothing left listening)."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from mlflow.tracking import MlflowClient

from tests.conftest import free_port


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _ctrl_c_heard() -> None:
    # Tests started in the background (e.g. `make test &`) inherit SIGINT ignored, and Python then
    # never turns it into KeyboardInterrupt; what this test asks is what Ctrl-C does in a terminal.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_nas_server(cwd, env, prefect_port: int, mlflow_port: int, tracking_uri: str):
    """`nas server` as a user starts it, once it says both servers answer: the process, the variables
    it says to export, and what it printed."""
    server = subprocess.Popen([sys.executable, "-m", "nas.cli", "server", "--prefect-port", str(prefect_port),
                               "--mlflow-port", str(mlflow_port), "--tracking-uri", tracking_uri],
                              cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              preexec_fn=_ctrl_c_heard)
    said = []
    for line in server.stdout:
        said.append(line)
        if line.startswith("Ctrl-C"):
            break
    # Keep reading what the servers print, so that a full pipe never blocks them (and their shutdown).
    threading.Thread(target=lambda: said.extend(server.stdout), daemon=True).start()
    exports = dict(line.split()[1].split("=", 1) for line in said if line.strip().startswith("export "))
    return server, exports, said


def test_a_search_runs_through_nas_server_and_ctrl_c_stops_both(tmp_path, digits_dir):
    prefect_port, mlflow_port = free_port(), free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    store = f"sqlite:///{tmp_path}/mlflow.db"
    server, exports, said = start_nas_server(tmp_path, env, prefect_port, mlflow_port, store)
    try:
        assert exports == {"PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
                           "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}"}, said
        search = subprocess.run([sys.executable, "-m", "nas.cli", "search", "--data-dir", str(digits_dir), "--trials",
                                 "1", "--epochs", "1", "--experiment", "served"],
                                cwd=tmp_path, env={**env, **exports}, capture_output=True, text=True, timeout=300)
        assert search.returncode == 0, search.stderr[-3000:]
        assert f"View at http://127.0.0.1:{prefect_port}/" in search.stderr + search.stdout  # the server ran the flow
        assert "Starting temporary server" not in search.stderr + search.stdout
        client = MlflowClient(store)  # the server wrote into the store it was given
        runs = client.search_runs([client.get_experiment_by_name("served").experiment_id], "tags.`nas.kind` = 'trial'")
        assert [r.info.status for r in runs] == ["FINISHED"]
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    assert server.returncode == 0
    deadline = time.monotonic() + 20
    while (_listening(prefect_port) or _listening(mlflow_port)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _listening(prefect_port) and not _listening(mlflow_port)
