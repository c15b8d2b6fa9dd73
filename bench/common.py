"""Helpers shared by the benchmarks: a scratch project folder, a stopwatch, a free loopback port."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def scratch_project(name: str) -> Path:
    """A fresh folder with the project's spaces and params, so stores and caches start empty."""
    folder = Path(tempfile.mkdtemp(prefix=f"nas-bench-{name}-"))
    shutil.copytree(ROOT / "spaces", folder / "spaces")
    shutil.copy2(ROOT / "params.yaml", folder / "params.yaml")
    os.environ["PREFECT_HOME"] = str(folder / ".prefect")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.chdir(folder)
    return folder


@contextmanager
def stopwatch(into: dict, key: str):
    started = time.perf_counter()
    yield
    into[key] = time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
