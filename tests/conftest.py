"""Test-wide isolation: Prefect's database and result cache live in a temporary folder.

prefect_test_harness does not isolate the result store, and a cached result from one
test must never answer for another, so PREFECT_HOME points at a fresh folder per session.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from hypothesis import settings

# CI replays the same examples every run: a red build must be reproducible, not luck.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    home = Path(tempfile.mkdtemp(prefix="nas-prefect-"))
    config._nas_prefect_home = home
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    # Models the project logs must load without unpickling anything, here and in subprocesses.
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
    # Subprocesses (the CLI, dvc stages) must find the `nas` of this environment first.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "_nas_prefect_home", ""), ignore_errors=True)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    from nas.data import prepare

    out = tmp_path_factory.mktemp("data") / "digits"
    prepare("digits", out)
    return out


@pytest.fixture(scope="session")
def prefect_api():
    """One temporary Prefect API server for every in-process flow test."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One real `prefect server` on loopback for tests whose CLI processes would otherwise each
    start a temporary one (10-20 s apiece); yields an environment for processes that use it.
    Each test keeps its own PREFECT_HOME, and so its own result cache."""
    port = free_port()
    server = start_server([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                           str(port), "--analytics-off"], f"http://127.0.0.1:{port}/api/health",
                          env={**os.environ, "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-server"))})
    try:
        yield {**os.environ, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    finally:
        stop_server(server)


def start_server(command: list[str], health_url: str, **popen) -> subprocess.Popen:
    """A server process in its own session (so its workers stop with it), once `health_url` answers."""
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                              **popen)
    deadline = time.monotonic() + 180
    while not answers(health_url):
        if server.poll() is not None or time.monotonic() > deadline:
            stop_server(server)
            raise AssertionError(f"{' '.join(command[:5])} did not answer at {health_url}")
        time.sleep(0.5)
    return server


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM to the server's whole process group, and wait for it."""
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=60)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False
