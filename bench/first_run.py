"""A newcomer's first commands: `nas search` on five fresh Prefect homes in a row, and the time to
the first finished trial with and without `nas server` running.

    python bench/first_run.py

Targets (issue 9): five successes out of five; with `nas server`, the first trial within 10 s of
the command (the baseline, without it, pays a temporary Prefect server's start each time).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import free_port, scratch_project  # noqa: E402

SEARCH = ["search", "--trials", "2", "--epochs", "1"]


def first_trial_seconds(folder: Path, env: dict[str, str]) -> tuple[bool, float]:
    """(succeeded, seconds from the command to its first 'trial 1/' line)."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "nas.cli", *SEARCH], cwd=folder, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first = float("nan")
    for line in process.stdout:
        if first != first and re.search(r"trial 1/\d+:", line):
            first = time.perf_counter() - started
    return process.wait() == 0, first


def main() -> None:
    folder = scratch_project("first-run")
    fresh = []
    for attempt in range(5):  # a new Prefect home each time: the temporary server creates its database
        env = {**os.environ, "PREFECT_HOME": str(folder / f"home-{attempt}")}
        fresh.append(first_trial_seconds(folder, env))
    ok = sum(success for success, _ in fresh)
    baseline = sorted(seconds for _, seconds in fresh)[2]
    print(f"fresh Prefect homes: {ok}/5 searches succeeded; first trial after {baseline:.1f} s (median)")

    prefect_port, mlflow_port = free_port(), free_port()
    env = {**os.environ, "PREFECT_HOME": str(folder / "served-home")}
    server = subprocess.Popen([sys.executable, "-m", "nas.cli", "server", "--prefect-port", str(prefect_port),
                               "--mlflow-port", str(mlflow_port)], cwd=folder, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    exports = {}
    for line in server.stdout:
        if line.strip().startswith("export "):
            name, value = line.split()[1].split("=", 1)
            exports[name] = value
        if line.startswith("Ctrl-C"):
            break
    try:
        served = [first_trial_seconds(folder, {**env, **exports}) for _ in range(3)]
    finally:
        server.terminate()
        server.wait(timeout=60)
    seconds = sorted(s for _, s in served)[1]
    print(f"with nas server: {sum(s for s, _ in served)}/3 succeeded; first trial after {seconds:.1f} s (median; "
          f"target <= 10) = {seconds / baseline:.2f} of the fresh-home baseline")


if __name__ == "__main__":
    main()
