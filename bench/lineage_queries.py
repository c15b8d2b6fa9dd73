"""Lineage lookups at tens of thousands of runs: find by trial key, parents, leaderboard top 10.

Seeds a fresh store with --runs finished trial runs tagged and scored as the project's are
(one MLflow call per run, as searches write them), then times each lookup through
LineageStore, median of 5. The baseline is the leaderboard as MLflow's own search_runs
sorts it (what LineageStore did before): it sorts every run, and SQLite scans a metric
subquery once per run, so there it grows quadratically with the store.

    python bench/lineage_queries.py [--runs 10000] [--tracking-uri postgresql://...] [--through-server]

With --through-server, the same lookups through an MLflow tracking server in front of the
store, as clients of `nas server` make them: the leaderboard then asks for runs above a
lowering bar of validation accuracy (LineageStore._best_runs) instead of walking an index.

Target (issue: beyond one process): each lookup <= 20 ms at 10,000 runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import free_port, scratch_project  # noqa: E402


def seed(uri: str, runs: int) -> str:
    """`runs` finished trials under one search run; a run id in the middle of them."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from nas.lineage import LineageStore

    store = LineageStore(uri, "seeded")
    experiment = store.ensure()
    client = MlflowClient(uri)
    search = client.create_run(experiment, tags={"nas.kind": "search"}).info.run_id
    rng, ids = random.Random(0), []
    for i in range(runs):
        tags = {"nas.kind": "trial", "nas.status": "ok", "nas.trial_key": f"key{i:06d}", "nas.arch_id": f"arch{i}",
                "nas.strategy": "random", "nas.data_fp": "seeded", "mlflow.parentRunId": search,
                "nas.parents": json.dumps(ids[-2:])}
        ids.append(client.create_run(experiment, tags=tags).info.run_id)
        at = int(time.time() * 1000)
        client.log_batch(ids[-1], metrics=[Metric("val_acc", rng.random(), at, 0),
                                           Metric("val_loss", rng.random(), at, 0),
                                           Metric("params", rng.randrange(10**3, 10**6), at, 0)])
        client.set_terminated(ids[-1])
    return ids[runs // 2]


def milliseconds(lookup, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        lookup()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(store, middle: str, where: str) -> None:
    """Print each lookup's median time on `store`, and the leaderboard against MLflow's full sort."""
    from nas.lineage.queries import LEADERBOARD_ORDER

    key = store.run_summary(middle)["tags"]["nas.trial_key"]
    as_mlflow_sorts = milliseconds(lambda: store._search(
        "tags.`nas.kind` = 'trial' and tags.`nas.status` = 'ok' and attributes.status = 'FINISHED'",
        order_by=list(LEADERBOARD_ORDER), max_results=10),
        repeats=1)
    print(f"{where}, baseline: leaderboard top 10 as MLflow's search_runs sorts it {as_mlflow_sorts:.1f} ms")
    # find() is this query plus reading the run's evaluation.json, which seeded runs do not have.
    lookups = {"find by trial key": lambda: store._search(f"tags.`nas.trial_key` = '{key}' and "
                                                          "attributes.status = 'FINISHED'", max_results=1),
               "parents": lambda: store.parents(middle),
               "leaderboard top 10": lambda: store.leaderboard(10)}
    for name, lookup in lookups.items():
        print(f"{where}, {name}: {milliseconds(lookup):.1f} ms (target <= 20)")
    print(f"{where}, leaderboard / baseline: {milliseconds(lookups['leaderboard top 10']) / as_mlflow_sorts:.3f}")


@contextmanager
def tracking_server(uri: str) -> Iterator[str]:
    """An MLflow tracking server on loopback in front of the store; yields its address."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host",
                               "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        address = f"http://127.0.0.1:{port}"
        for _ in range(240):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{address}/health", timeout=2).close()
                break
            time.sleep(0.5)
        yield address
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--tracking-uri", help="a store to seed (default: a fresh SQLite file)")
    parser.add_argument("--through-server", action="store_true",
                        help="also time the lookups through an MLflow tracking server in front of the store")
    args = parser.parse_args()
    folder = scratch_project("lineage")
    uri = args.tracking_uri or f"sqlite:///{folder}/mlflow.db"

    from nas.lineage import LineageStore

    started = time.perf_counter()
    middle = seed(uri, args.runs)
    print(f"seeded {args.runs:,} runs in {time.perf_counter() - started:.0f} s ({uri.split(':')[0]})")
    measure(LineageStore(uri, "seeded"), middle, "direct")
    if args.through_server:
        with tracking_server(uri) as address:
            measure(LineageStore(address, "seeded"), middle, "through a tracking server")


if __name__ == "__main__":
    main()
