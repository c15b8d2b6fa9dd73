"""Trial throughput on a local Dask cluster of 2 worker processes against 1, on this machine.

The same search (random, MNIST-1D, fixed seed, `--async`, single-threaded trials) runs with `--workers 1`
and with `--workers 2`, each into its own experiment of one store. Throughput is trials per
hour over the span of the trials themselves (first start to last end, from the MLflow runs),
so the cluster's start-up is not counted; the whole command's time is printed beside it.
Both searches must give every trial the same validation accuracy.

    python bench/cluster_throughput.py [--trials 24] [--epochs 4]

Target (issue: beyond one process): 2 workers >= 1.8x the trials per hour of 1 worker.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import scratch_project  # noqa: E402


def search(workers: int, trials: int, epochs: int) -> tuple[dict[str, float], float, float]:
    """(val_acc by trial key, trials per hour over the trials' span, the command's seconds)."""
    import mlflow

    experiment = f"workers-{workers}"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nas.cli", "search", "--data", "mnist1d", "--trials", str(trials),
                    "--epochs", str(epochs), "--workers", str(workers), "--async", "--experiment", experiment],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    client = mlflow.MlflowClient("sqlite:///mlflow/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                              "tags.`nas.kind` = 'trial' and attributes.status = 'FINISHED'")
    span_hours = (max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)) / 3.6e6
    return {r.data.tags["nas.trial_key"]: r.data.metrics["val_acc"] for r in runs}, len(runs) / span_hours, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    scratch_project("cluster")
    results = {workers: search(workers, args.trials, args.epochs) for workers in (1, 2)}
    for workers, (_, per_hour, seconds) in results.items():
        print(f"{workers} worker(s): {per_hour:,.0f} trials/hour over the trials, command {seconds:.0f} s")
    same = results[1][0] == results[2][0]
    print(f"2 workers / 1 worker: {results[2][1] / results[1][1]:.2f}x (target >= 1.8); "
          f"same val_acc for all {len(results[1][0])} trial keys: {same}")


if __name__ == "__main__":
    main()
