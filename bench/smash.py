"""SMASH on MNIST-1D: do hypernetwork scores rank networks, and does the one-shot search pay?

    python bench/smash.py [--steps 12000] [--epochs 10] [--networks 50] [--seeds 0,1,2,3,4]

1. Rank correlation. One hypernetwork (seed 0, --steps steps) scores 500 networks of
   spaces/conv1d.yaml; --networks of them, evenly spaced in score rank, are then trained
   normally for --epochs epochs. Reported: Kendall's tau between score and trained
   validation accuracy (target: at least 0.4).
2. Equal wall time. Per seed, `--strategy smash` (hypernetwork training, 500 candidates
   scored, the top 5 trained) is timed from start to end; random search then gets the same
   wall time. Both are real searches (lineage store, two trials at once) and the winner is
   each search's best validation network, compared on test accuracy. Target: SMASH at least
   as good in 3 of 5 seeds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from scipy.stats import kendalltau

from bench.common import ROOT, scratch_project
from nas.api import create_search
from nas.data import prepare
from nas.hyper import STEPS, score, train_one_shot
from nas.space import HParams, SearchSpace
from nas.train import fit, load_data
from nas.trial import Budget

SPACE = ROOT / "spaces/conv1d.yaml"
CANDIDATES = 500


def rank_correlation(steps: int, epochs: int, networks: int) -> None:
    folder = Path(scratch_project("smash-tau"))
    meta = prepare("mnist1d", folder / "data")
    data = load_data(folder / "data", "cpu")
    space = SearchSpace.load(SPACE).bind(tuple(meta.shape), len(meta.classes)).with_hparams(epochs=epochs)
    hparams = space.nearest_hparams(HParams())
    started = time.perf_counter()
    hypernetwork = train_one_shot(space, hparams, data, steps=steps, seed=0).model
    trained_in = time.perf_counter() - started
    rng, pool = random.Random(0), {}
    while len(pool) < CANDIDATES:
        arch = space.sample_arch(rng)
        pool[arch.arch_id] = arch
    archs = list(pool.values())
    started = time.perf_counter()
    scores = score(hypernetwork, archs, data)
    scored_in = time.perf_counter() - started
    ranked = sorted(range(len(archs)), key=lambda i: -scores[i])
    chosen = [ranked[round(k * (len(ranked) - 1) / (networks - 1))] for k in range(networks)]
    torch.set_num_threads(1)
    with ThreadPoolExecutor(2) as pool_:
        accs = list(pool_.map(lambda i: fit(archs[i], hparams, data, Budget(epochs)).val_acc or 0.0, chosen))
    torch.set_num_threads(2)
    tau = kendalltau([scores[i] for i in chosen], accs).statistic
    print(f"hypernetwork: {steps} steps in {trained_in:.0f} s; {len(archs)} networks scored in {scored_in:.1f} s "
          f"(scores {min(scores):.3f}-{max(scores):.3f})")
    print(f"Kendall tau over {networks} networks (score vs validation accuracy after {epochs} epochs): {tau:.3f} "
          f"{'✅' if tau >= 0.4 else '❌'} (target >= 0.4)")


def equal_wall_time(seed: int, steps: int, epochs: int) -> tuple[float, float]:
    scratch_project(f"smash-{seed}")
    common = dict(data="mnist1d", space=str(SPACE), epochs=epochs, seed=seed, concurrency=2, report_test=True,
                  max_seconds=None)
    started = time.perf_counter()
    smash = create_search("smash", strategy="smash", trials=5, smash_steps=steps, smash_candidates=CANDIDATES,
                          **common)
    smash.optimize()
    seconds = time.perf_counter() - started
    rand = create_search("random", strategy="random", trials=10_000, **common)
    rand.optimize(timeout=seconds)
    a, b = smash.best_trial, rand.best_trial
    print(f"seed {seed}: smash {seconds:.0f} s, best val {a.val_acc:.4f} test {a.test_acc:.4f} | random "
          f"{len(rand.evaluations)} trials, best val {b.val_acc:.4f} test {b.test_acc:.4f} "
          f"{'✅' if a.test_acc >= b.test_acc else '❌'}")
    return a.test_acc, b.test_acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=STEPS, help="hypernetwork training steps")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of every trained network")
    parser.add_argument("--networks", type=int, default=50, help="networks trained for the rank correlation")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="seeds of the equal-wall-time comparison")
    parser.add_argument("--skip-tau", action="store_true", help="only the equal-wall-time comparison")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if not args.skip_tau:
        rank_correlation(args.steps, args.epochs, args.networks)
    results = [equal_wall_time(int(s), args.steps, args.epochs) for s in args.seeds.split(",") if s]
    if results:
        wins = sum(a >= b for a, b in results)
        print(f"smash at least as good as random at equal wall time: {wins}/{len(results)} seeds "
              f"{'✅' if wins >= 3 else '❌'} (target 3 of 5); mean test smash "
              f"{statistics.mean(a for a, _ in results):.4f}, random {statistics.mean(b for _, b in results):.4f}")


if __name__ == "__main__":
    main()
