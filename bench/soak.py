"""Soak of the lineage store's claims: many processes, one MLflow server over PostgreSQL, kills and a restart.

4 processes run `nas search` over and over, each in turn one of 3 searches that share a seed
(so most of their trials are the same trial keys), against one MLflow tracking server over
PostgreSQL and one Prefect server, all on loopback. Every 30 s one of them is killed with
SIGKILL and replaced; halfway through the MLflow server is restarted. Meanwhile the store is
read every few seconds, and at the end it is checked:

- duplicates: trial keys with more than one FINISHED run (target 0);
- lost: runs once seen FINISHED that are later deleted or no longer FINISHED (target 0);
- retrained: runs of a key started after a run of that key had finished (target 0).

    python bench/soak.py [--minutes 10] [--kill-every 30]

Needs PostgreSQL's initdb and pg_ctl (as test_postgres does); runs as `nobody` when root.
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, free_port, scratch_project  # noqa: E402

PROGRAMS = os.pathsep.join([os.environ.get("PATH", ""), *sorted(glob.glob("/usr/lib/postgresql/*/bin")),
                            "/usr/local/bin"])
SEARCHES = [("--trials", "6", "--epochs", "1"), ("--trials", "8", "--epochs", "1"),
            ("--trials", "6", "--epochs", "1", "--strategy", "grid")]


def postgres_program(*command: str) -> list[str]:
    path = shutil.which(command[0], path=PROGRAMS)
    if path is None:
        sys.exit(f"soak: {command[0]} is not installed; install PostgreSQL (apt-get install postgresql).")
    runner = [shutil.which("runuser", path=PROGRAMS), "-u", "nobody", "--"] if os.geteuid() == 0 else []
    return [*runner, path, *command[1:]]


def start_postgres() -> tuple[str, list[str]]:
    folder = Path(tempfile.mkdtemp(prefix="nas-soak-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "nobody")
    port = free_port()
    subprocess.run(postgres_program("initdb", "-D", str(folder / "data"), "--auth=trust", "-U", "nas"), check=True,
                   capture_output=True, cwd=folder)
    pg_ctl = postgres_program("pg_ctl", "-D", str(folder / "data"), "-l", str(folder / "log"), "-w", "-o",
                              f"-p {port} -k {folder} -c listen_addresses=127.0.0.1")
    subprocess.run([*pg_ctl, "start"], check=True, capture_output=True, cwd=folder)
    subprocess.run(postgres_program("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "nas", "mlflow"),
                   check=True, capture_output=True, cwd=folder)
    return f"postgresql://nas@127.0.0.1:{port}/mlflow", pg_ctl


def start(command: list[str], health: str, log: Path) -> subprocess.Popen:
    import urllib.request

    process = subprocess.Popen(command, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(360):
        try:
            with urllib.request.urlopen(health, timeout=2):
                return process
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"soak: {command[:4]} did not start; see {log}")


def stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)


def snapshot(uri: str) -> list[tuple[str, str, str, str, int]]:
    """(run id, trial key, status, lifecycle stage, start time) of every trial run, deleted ones too."""
    import psycopg

    with psycopg.connect(uri) as db:
        return db.execute("SELECT r.run_uuid, t.value, r.status, r.lifecycle_stage, r.start_time FROM runs r "
                          "JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'nas.trial_key' "
                          "JOIN tags k ON k.run_uuid = r.run_uuid AND k.key = 'nas.kind' AND k.value = 'trial'"
                          ).fetchall()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--kill-every", type=float, default=30.0)
    parser.add_argument("--processes", type=int, default=4)
    args = parser.parse_args()

    folder = scratch_project("soak")
    subprocess.run([sys.executable, "-m", "nas.cli", "prepare", "--data", "digits", "--data-dir", "data/digits"],
                   check=True, capture_output=True)
    uri, pg_ctl = start_postgres()
    prefect_port, mlflow_port = free_port(), free_port()
    prefect = start([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                     str(prefect_port), "--analytics-off"], f"http://127.0.0.1:{prefect_port}/api/health",
                    folder / "prefect.log")
    mlflow_command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
                      "--port", str(mlflow_port), "--workers", "1", "--artifacts-destination",
                      (folder / "artifacts").as_uri()]
    mlflow_health = f"http://127.0.0.1:{mlflow_port}/health"
    os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # as `nas server` starts it
    mlflow = start(mlflow_command, mlflow_health, folder / "mlflow.log")
    env = {**os.environ, "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
           "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "10"}
    rng = random.Random(0)
    started = time.monotonic()
    end = started + args.minutes * 60

    def launch(i: int, round_: int) -> subprocess.Popen:
        options = SEARCHES[(i + round_) % len(SEARCHES)]
        return subprocess.Popen([sys.executable, "-m", "nas.cli", "search", "--data-dir", "data/digits", "--space",
                                 str(ROOT / "spaces/small-cnn.yaml"), "--seed", "7", "--experiment", "soak",
                                 "--concurrency", "2", *options], env={**env, "PREFECT_HOME": str(folder / f"p{i}")},
                                stdout=subprocess.DEVNULL, stderr=(folder / f"search{i}.log").open("ab"),
                                start_new_session=True)

    rounds = [0] * args.processes
    workers = [launch(i, 0) for i in range(args.processes)]
    seen_finished: set[str] = set()
    lost: set[str] = set()
    kills = searches_done = 0
    next_kill, restarted = started + args.kill_every, False
    while time.monotonic() < end:
        for i, process in enumerate(workers):
            if process.poll() is not None:
                searches_done += process.returncode == 0
                rounds[i] += 1
                workers[i] = launch(i, rounds[i])
        if time.monotonic() >= next_kill:
            victim = rng.randrange(args.processes)
            os.killpg(workers[victim].pid, signal.SIGKILL)
            workers[victim].wait()
            kills += 1
            rounds[victim] += 1
            workers[victim] = launch(victim, rounds[victim])
            next_kill += args.kill_every
        if not restarted and time.monotonic() >= started + args.minutes * 30:
            stop(mlflow)
            mlflow = start(mlflow_command, mlflow_health, folder / "mlflow.log")
            restarted = True
        try:
            runs = snapshot(uri)
        except Exception:  # noqa: BLE001 - the database busy or restarting: look again next time
            runs = []
        by_id = {run[0]: run for run in runs}
        lost |= {run_id for run_id in seen_finished
                 if run_id in by_id and (by_id[run_id][2] != "FINISHED" or by_id[run_id][3] != "active")}
        seen_finished |= {run[0] for run in runs if run[2] == "FINISHED" and run[3] == "active"}
        time.sleep(3)
    for process in workers:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    runs = snapshot(uri)
    by_id = {run[0]: run for run in runs}
    lost |= {run_id for run_id in seen_finished if run_id not in by_id or by_id[run_id][2] != "FINISHED"
             or by_id[run_id][3] != "active"}
    finished = [run for run in runs if run[2] == "FINISHED" and run[3] == "active"]
    per_key = Counter(run[1] for run in finished)
    first_finish = {}
    import psycopg

    with psycopg.connect(uri) as db:
        ends = dict(db.execute("SELECT run_uuid, end_time FROM runs WHERE status = 'FINISHED'").fetchall())
    for run in finished:
        first_finish[run[1]] = min(first_finish.get(run[1], ends[run[0]]), ends[run[0]])
    retrained = [run for run in runs if run[1] in first_finish and run[4] > first_finish[run[1]]]
    stop(mlflow)
    stop(prefect)
    subprocess.run([*pg_ctl, "-m", "fast", "stop"], capture_output=True)
    print(f"soak: {args.minutes:g} min, {args.processes} processes, {searches_done} searches finished, {kills} "
          f"killed (-9), MLflow server restarted {int(restarted)}x")
    print(f"trial keys {len(per_key)}, finished runs {len(finished)}, all trial runs {len(runs)}")
    print(f"duplicates {sum(n - 1 for n in per_key.values())}, lost {len(lost)}, retrained after finishing "
          f"{len(retrained)}  (targets: 0, 0, 0)")


if __name__ == "__main__":
    main()
