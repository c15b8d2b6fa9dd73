"""The lineage store on PostgreSQL behind `nas server`'s MLflow tracking server: a real PostgreSQL
(initdb and pg_ctl on a loopback port, started here), searches through the server, and PostgreSQL
restarted in the middle of one. Skipped where PostgreSQL's programs are not installed."""

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from mlflow.tracking import MlflowClient

from nas.lineage import LineageStore
from nas.lineage.queries import LEADERBOARD_ORDER

from tests.conftest import free_port, start_server, stop_server
from tests.test_server import start_nas_server

# PostgreSQL's programs, on PATH or where Debian's packages put them (outside a minimal PATH).
PROGRAMS = os.pathsep.join([os.environ.get("PATH", ""), *sorted(glob.glob("/usr/lib/postgresql/*/bin")),
                            "/usr/local/bin", "/usr/sbin", "/sbin"])
pytestmark = pytest.mark.skipif(shutil.which("initdb", path=PROGRAMS) is None,
                                reason="PostgreSQL (initdb, pg_ctl) is not installed")


def as_postgres_user(command: list[str]) -> list[str]:
    """The program's full path; PostgreSQL refuses to run as root, so as root it runs as `nobody`."""
    command = [shutil.which(command[0], path=PROGRAMS), *command[1:]]
    return [shutil.which("runuser", path=PROGRAMS), "-u", "nobody", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="module")
def postgres():
    """A fresh cluster on a free loopback port, trusting local connections; yields (uri, pg_ctl command)."""
    folder = Path(tempfile.mkdtemp(prefix="nas-postgres-"))  # not under pytest's folder, which `nobody` cannot enter
    if os.geteuid() == 0:
        shutil.chown(folder, "nobody")
    port = free_port()
    subprocess.run(as_postgres_user(["initdb", "-D", str(folder / "data"), "--auth=trust", "-U", "nas"]),
                   check=True, capture_output=True, cwd=folder)
    pg_ctl = as_postgres_user(["pg_ctl", "-D", str(folder / "data"), "-l", str(folder / "log"), "-w", "-o",
                               f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"])
    subprocess.run([*pg_ctl, "start"], check=True, capture_output=True, cwd=folder)
    try:
        subprocess.run(as_postgres_user(["createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "nas", "mlflow"]),
                       check=True, capture_output=True, cwd=folder)
        yield f"postgresql://nas@127.0.0.1:{port}/mlflow", pg_ctl
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "stop"], capture_output=True, cwd=folder)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def servers(postgres, tmp_path_factory):
    """`nas server` in front of the PostgreSQL store; yields the environment that points commands at it."""
    folder = tmp_path_factory.mktemp("project")
    prefect_port, mlflow_port = free_port(), free_port()
    env = {**os.environ, "PREFECT_HOME": str(folder / "prefect-home")}
    server, exports, said = start_nas_server(folder, env, prefect_port, mlflow_port, postgres[0])
    assert set(exports) == {"PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_URI",
                            "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}, said
    yield folder, {**env, **exports}
    server.send_signal(signal.SIGINT)
    server.wait(timeout=60)


def search(folder, env, digits_dir, experiment, trials):
    return subprocess.Popen([sys.executable, "-m", "nas.cli", "search", "--data-dir", str(digits_dir), "--trials",
                             str(trials), "--epochs", "2", "--experiment", experiment, "--concurrency", "2"],
                            cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def trials(uri, experiment):
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], "tags.`nas.kind` = 'trial'") if found else []


def finished_in(uri, experiment) -> Counter:
    """How many FINISHED runs each trial key has."""
    return Counter(r.data.tags["nas.trial_key"] for r in trials(uri, experiment) if r.info.status == "FINISHED")


def test_a_search_through_the_server_lands_in_postgresql_with_proxied_artifacts(postgres, servers, digits_dir,
                                                                                monkeypatch):
    folder, env = servers
    process = search(folder, env, digits_dir, "pg", 3)
    assert process.wait(timeout=300) == 0, process.stderr.read()[-3000:]
    runs = trials(postgres[0], "pg")
    assert [r.info.status for r in runs] == ["FINISHED"] * 3
    # Clients sent the weights through the server, which keeps them beside the project's store.
    client = MlflowClient(postgres[0])
    assert client.get_experiment_by_name("pg").artifact_location.startswith("mlflow-artifacts:")
    assert list((folder / "mlflow" / "artifacts").rglob("weights.safetensors"))
    # `nas server` indexed the metrics MLflow's server made, and the leaderboard through the server (lowering a
    # bar until enough runs clear it) is MLflow's full sort.
    with psycopg.connect(postgres[0]) as db:
        assert db.execute("SELECT 1 FROM pg_indexes WHERE indexname = 'nas_latest_metrics_key_value'").fetchone()
    expected = [r.info.run_id for r in client.search_runs([runs[0].info.experiment_id], "tags.`nas.kind` = 'trial'",
                                                          order_by=list(LEADERBOARD_ORDER))]
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # as this shell exported them
        monkeypatch.setenv(name, env[name])
    served = LineageStore(env["MLFLOW_TRACKING_URI"], "pg")
    assert [[e.run_id for e in served.best(k)] for k in (1, 2, 3)] == [expected[:k] for k in (1, 2, 3)]


def test_postgresql_restarted_in_the_middle_of_a_search_loses_no_trial(postgres, servers, digits_dir):
    uri, pg_ctl = postgres
    folder, env = servers
    process = search(folder, env, digits_dir, "pg-restart", 8)
    deadline = time.monotonic() + 240
    while not finished_in(uri, "pg-restart") and time.monotonic() < deadline:
        time.sleep(0.5)
    subprocess.run([*pg_ctl, "-m", "fast", "restart"], check=True, capture_output=True)
    assert process.wait(timeout=600) == 0, process.stderr.read()[-3000:]
    finished = finished_in(uri, "pg-restart")
    assert len(finished) == 8 and set(finished.values()) == {1}, finished


def test_the_mlflow_server_restarted_in_the_middle_of_a_search_loses_no_trial(postgres, servers, digits_dir, tmp_path):
    uri, port = postgres[0], free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port",
               str(port), "--workers", "1", "--artifacts-destination", (tmp_path / "artifacts").as_uri()]

    def start() -> subprocess.Popen:
        return start_server(command, f"http://127.0.0.1:{port}/health", cwd=tmp_path,
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})

    server = start()
    try:
        env = {**servers[1], "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}  # served Prefect, this MLflow
        process = search(tmp_path, env, digits_dir, "mlflow-restart", 8)
        deadline = time.monotonic() + 240
        while not finished_in(uri, "mlflow-restart") and time.monotonic() < deadline:
            time.sleep(0.5)
        stop_server(server)  # the search's requests now fail until the server is back: MLflow's client retries them
        server = start()
        assert process.wait(timeout=600) == 0, process.stderr.read()[-3000:]
    finally:
        stop_server(server)
    finished = finished_in(uri, "mlflow-restart")
    assert len(finished) == 8 and set(finished.values()) == {1}, finished


def test_two_searches_at_once_through_the_server_train_each_trial_once(postgres, servers, digits_dir):
    folder, env = servers
    # Each its own Prefect home: only the store is shared, as between two machines' users.
    processes = [search(folder, {**env, "PREFECT_HOME": str(folder / f"prefect-{i}")}, digits_dir, "pg-two", 6)
                 for i in range(2)]
    for process in processes:
        assert process.wait(timeout=600) == 0, process.stderr.read()[-3000:]
    finished = finished_in(postgres[0], "pg-two")
    assert len(finished) == 6 and set(finished.values()) == {1}, finished


def test_a_password_in_the_tracking_uri_reaches_no_record_log_or_flow_parameter(postgres, digits_dir, tmp_path,
                                                                               prefect_server, tmp_path_factory):
    secret = "s3cret-pw"
    uri = postgres[0].replace("nas@", f"nas:{secret}@")
    result = subprocess.run([sys.executable, "-m", "nas.cli", "search", "--data-dir", str(digits_dir), "--trials",
                             "2", "--epochs", "1", "--experiment", "secret", "--tracking-uri", uri, "--metrics-out",
                             str(tmp_path / "metrics.json")], cwd=tmp_path, env=prefect_server, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(trials(postgres[0], "secret")) == 2  # it connected
    assert secret not in result.stdout + result.stderr
    with psycopg.connect(postgres[0]) as db:
        for table in ("params", "tags", "experiment_tags", "latest_metrics"):
            column = "key" if table == "latest_metrics" else "value"
            assert not db.execute(f"SELECT 1 FROM {table} WHERE {column} LIKE %s", (f"%{secret}%",)).fetchone()
    files = [path for path in tmp_path.rglob("*") if path.is_file()]  # artifacts, config.json, the metrics file
    assert len(files) > 5 and not [path for path in files if secret.encode() in path.read_bytes()]
    prefect = [path for path in tmp_path_factory.getbasetemp().glob("prefect-server*/*") if path.is_file()]
    assert prefect and not [path for path in prefect if secret.encode() in path.read_bytes()]  # flow-run parameters
