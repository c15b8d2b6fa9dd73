"""`nas server` as a user runs it: both servers come up on a fresh Prefect home, a search runs
through them, and Ctrl-C stops both (nothing left listening)."""

import base64
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

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
    lines = [line.strip() for line in said if line.strip().startswith("export ")]
    names = [line.split()[1].split("=", 1)[0] for line in lines]
    # As a user's shell runs them: the password is read from its file when the line runs.
    shell = subprocess.run(["bash", "-c", "\n".join(lines) + "\nenv -0"], capture_output=True, text=True, check=True)
    values = dict(entry.split("=", 1) for entry in shell.stdout.split("\0") if "=" in entry)
    return server, {name: values[name] for name in names}, said


def test_a_search_runs_through_nas_server_and_ctrl_c_stops_both(tmp_path, digits_dir):
    prefect_port, mlflow_port = free_port(), free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    store = f"sqlite:///{tmp_path}/mlflow.db"
    server, exports, said = start_nas_server(tmp_path, env, prefect_port, mlflow_port, store)
    try:
        secret = (tmp_path / "prefect-home" / "server-secret")
        password = secret.read_text().strip()
        assert oct(secret.stat().st_mode & 0o777) == "0o600" and password not in "".join(said)  # never printed
        assert exports == {"PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
                           "PREFECT_API_AUTH_STRING": f"nas:{password}",
                           "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
                           "MLFLOW_TRACKING_USERNAME": "nas", "MLFLOW_TRACKING_PASSWORD": password}, said
        _refused_without_the_password(prefect_port, mlflow_port, password)
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


def _answer(url: str, method: str = "GET", headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=b"{}" if method == "POST" else None, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers)


def _refused_without_the_password(prefect_port: int, mlflow_port: int, password: str) -> None:
    """What another local process, or a web page in the user's browser, gets from the servers."""
    prefect = f"http://127.0.0.1:{prefect_port}/api"
    assert _answer(f"{prefect}/admin/version")[0] == 401
    assert _answer(f"{prefect}/flows/filter", "POST")[0] in (401, 403)
    assert _answer(f"{prefect}/deployments/filter", "POST", {"Origin": "http://evil.example"})[0] in (401, 403)
    preflight = _answer(f"{prefect}/flow_runs/", "OPTIONS", {"Origin": "http://evil.example",
                                                              "Access-Control-Request-Method": "POST"})
    assert preflight[1].get("access-control-allow-origin") in (None, f"http://127.0.0.1:{prefect_port}")
    basic = "Basic " + base64.b64encode(f"nas:{password}".encode()).decode()
    assert _answer(f"{prefect}/admin/version", headers={"Authorization": basic})[0] == 200
    assert _answer(f"{prefect}/flows/filter", "POST", {"Authorization": basic})[0] == 403  # no CSRF token
    mlflow = f"http://127.0.0.1:{mlflow_port}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _answer(mlflow)[0] == 401
    assert _answer(mlflow, headers={"Authorization": basic})[0] == 200
