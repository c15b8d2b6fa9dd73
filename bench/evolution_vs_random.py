"""Evolution against random search on MNIST-1D, same trial budget, several seeds.

    python bench/evolution_vs_random.py [--trials 60] [--epochs 10] [--seeds 0,1,2,3,4]
                                        [--strategy evolution] [--population 10]

Target (issue 3): evolution's best validation accuracy >= random search's in 4 of 5
seeds, and its best network >= 98% test accuracy on MNIST-1D.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import scratch_project  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--strategy", default="evolution")
    parser.add_argument("--population", type=int, default=10)
    parser.add_argument("--space", default="spaces/cnn.yaml")
    args = parser.parse_args()
    scratch_project("evolution")

    from flows.search import run_search
    from nas.config import DataConfig, SearchConfig

    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        results = {}
        for strategy in ("random", args.strategy):
            population = args.population if strategy != "random" else None
            config = SearchConfig(data=DataConfig(source="mnist1d"), space=args.space, strategy=strategy,
                                  trials=args.trials, epochs=args.epochs, seed=seed, population=population,
                                  experiment=f"{strategy}-{seed}", max_seconds=300)
            results[strategy] = run_search(config)
        rows.append((seed, results["random"], results[args.strategy]))

    print(f"\nMNIST-1D, {args.trials} trials x {args.epochs} epochs, {args.space}; best validation (its test)")
    print(f"{'seed':>4}  {'random':>15}  {args.strategy:>15}")
    wins = 0
    for seed, rnd, evo in rows:
        wins += evo["best_val_acc"] >= rnd["best_val_acc"]
        print(f"{seed:>4}  {rnd['best_val_acc']:.4f} ({rnd['best_test_acc']:.4f})  "
              f"{evo['best_val_acc']:.4f} ({evo['best_test_acc']:.4f})")
    print(f"{args.strategy} >= random in {wins} of {len(rows)} seeds; best {args.strategy} test accuracy "
          f"{max(r[2]['best_test_acc'] for r in rows):.4f} (target: 4 of 5, and >= 0.98)")


if __name__ == "__main__":
    main()
