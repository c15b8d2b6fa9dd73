"""Test-wide isolation: Prefect's database and result cache live in a temporary folder.

prefect_test_harness does not isolate the result store, and a cached result from one
test must never answer for another, so PREFECT_HOME points at a fresh folder per session.
"""

import os
import shutil
import sys
import tempfile
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
