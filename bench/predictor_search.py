"""The predictor on real training: does a search warm-started from the store beat random search?

    python bench/predictor_search.py [--trials 40] [--epochs 20] [--seeds 0,1,2,3,4] [--pool 40] [--project DIR]

One store on bundled MNIST-1D (its auto space, spaces/conv1d.yaml). First another
experiment fills it: a random search of --pool trials (seed 100). Then, for each seed, a
predictor-guided search with --warm-start-predictor (it learns from every earlier run of the
store on this data: the pool, and the searches of earlier seeds) and a plain random search,
--trials trials of --epochs epochs each. Reported per seed: the test accuracy of each
search's best-by-validation network. Target (issue 13): the predictor's beats random
search's in at least 4 of 5 seeds. On this 2-core CPU it takes about an hour; an
interrupted run continues with --project (the folder it printed), retraining nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import scratch_project  # noqa: E402


def best_test(name: str, strategy: str, trials: int, epochs: int, seed: int, **options) -> tuple[float, float]:
    from nas.api import create_search

    search = create_search(name, data="mnist1d", strategy=strategy, trials=trials, epochs=epochs, seed=seed,
                           report_test=True, **options)
    search.optimize()
    best = search.best_trial
    return best.val_acc, best.test_acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--pool", type=int, default=40, help="trials of the earlier experiment the store holds")
    parser.add_argument("--project", help="continue in this folder (a store an earlier run printed)")
    args = parser.parse_args()
    if args.project:
        folder = Path(args.project)
        os.chdir(folder)
    else:
        folder = scratch_project("predictor")
    print(f"store: {folder}")
    val, test = best_test("pool", "random", args.pool, args.epochs, 100)
    print(f"pool: random search, {args.pool} trials: best val {val:.4f}, test {test:.4f}")
    wins = 0
    seeds = [int(s) for s in args.seeds.split(",")]
    for seed in seeds:
        _, guided = best_test(f"predictor-{seed}", "predictor", args.trials, args.epochs, seed,
                              warm_start_predictor=True)
        _, plain = best_test(f"random-{seed}", "random", args.trials, args.epochs, seed)
        wins += guided > plain
        print(f"seed {seed}: test of the best by validation: predictor (warm) {guided:.4f}, random {plain:.4f}"
              f" {'<- predictor' if guided > plain else ''}")
    print(f"predictor beats random in {wins}/{len(seeds)} seeds (target: at least 4 of 5, 80%): "
          f"{'yes' if wins >= 0.8 * len(seeds) else 'NO'}")


if __name__ == "__main__":
    main()
