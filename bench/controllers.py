"""The learned controllers at their defaults against random search on the tabular benchmark.

    python bench/controllers.py [--table bench/mnist1d.parquet] [--seeds 10] [--trials 60] [--concurrency 2]
                                [--rates 0.0006,0.005,0.02,0.05]

Each method searches the table (trials answered by lookup) once per seed, in batches of
--concurrency (the CLI's default 2, so nas-rl updates its controller every 2 results). Prints
the median over seeds of the best validation accuracy found (the table seed's), for random
search, nas-rl at its default learning rate (nas.strategies.nas_rl.learning_rate_for), nas-rl
at each of --rates (the paper's 6e-4 among them), and MetaQNN.

Target (issue 38): nas-rl and MetaQNN at their defaults >= random search, 60 lookups, seeds 0-9.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def best_val(table_path: str, strategy: str, options: dict, seed: int, trials: int, concurrency: int) -> float:
    import torch

    from nas.benchmark import BenchmarkTable

    torch.set_num_threads(1)  # one search per process, as many processes as cores
    outcome = BenchmarkTable(table_path).search(strategy, seed=seed, trials=trials, concurrency=concurrency,
                                                **options)
    return max(e.val_acc for e in outcome.evaluations if e.ok)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", default="bench/mnist1d.parquet")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--rates", default="0.0006,0.005,0.02,0.05", help="nas-rl learning rates to compare")
    args = parser.parse_args()

    from nas.strategies.nas_rl import learning_rate_for

    default_rate = learning_rate_for(args.trials, args.concurrency)
    methods = {"random": ("random", {}), f"nas-rl default (lr {default_rate:.3g})": ("nas-rl", {}),
               **{f"nas-rl lr {rate}": ("nas-rl", {"controller_lr": float(rate)}) for rate in args.rates.split(",")},
               "metaqnn default": ("metaqnn", {})}
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        jobs = {label: [pool.submit(best_val, args.table, strategy, options, seed, args.trials, args.concurrency)
                        for seed in range(args.seeds)] for label, (strategy, options) in methods.items()}
        found = {label: [job.result() for job in seeds] for label, seeds in jobs.items()}
    random_median = statistics.median(found["random"])
    print(f"best validation accuracy after {args.trials} lookups of {args.table}, batches of {args.concurrency}, "
          f"seeds 0-{args.seeds - 1}")
    print(f"{'method':<28}{'median':>8}{'min':>8}{'max':>8}{'>= random':>11}")
    for label, values in found.items():
        median = statistics.median(values)
        print(f"{label:<28}{median:>8.4f}{min(values):>8.4f}{max(values):>8.4f}"
              f"{'' if label == 'random' else ('yes' if median >= random_median else 'NO'):>11}")


if __name__ == "__main__":
    main()
