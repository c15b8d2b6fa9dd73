"""Weight inheritance: do mutated children reach their parent's accuracy in fewer epochs?

Trains a few parents on MNIST-1D, applies random mutations (all but reset-weights), and
trains every child twice for the same budget: from the parent's weights (through the
mutation's node map) and from scratch. For each, the first epoch whose validation accuracy
reaches the parent's final one; a child that never does counts as budget + 1.

    python bench/inheritance.py [--parents 6] [--mutations 5] [--epochs 10]

Target (issue 3): inheriting children get there in fewer epochs; prints the mean saved.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import scratch_project  # noqa: E402


def epochs_to_reach(val_accs: list[float], target: float, budget: int) -> int:
    return next((epoch for epoch, acc in enumerate(val_accs, start=1) if acc >= target), budget + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parents", type=int, default=6)
    parser.add_argument("--mutations", type=int, default=5, help="children per parent")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    folder = scratch_project("inheritance")

    import torch

    from nas.build import remap_state
    from nas.data import prepare
    from nas.space import SearchSpace
    from nas.space.mutations import MUTATIONS, NotApplicable, mutate
    from nas.train import load_data, train
    from nas.trial import Budget, Candidate

    torch.set_num_threads(2)
    meta = prepare("mnist1d", folder / "data")
    data = load_data(folder / "data", "cpu")
    space = SearchSpace.load("spaces/cnn.yaml").bind(meta.shape, len(meta.classes)).with_hparams(epochs=args.epochs)
    rng = random.Random(args.seed)
    allowed = tuple(m for m in MUTATIONS if m != "reset-weights")
    budget = Budget(args.epochs)
    rows = []
    while len(rows) < args.parents * args.mutations:
        arch, hparams = space.sample(rng)
        parent = train(Candidate(arch, hparams, budget), data, seed=args.seed)
        if not parent.evaluation.ok or parent.evaluation.val_acc < 0.3:
            continue  # a parent that learned nothing gives nothing to inherit
        target = parent.evaluation.val_acc
        for _ in range(args.mutations):
            try:
                child = mutate(space, arch, hparams, rng, allowed=allowed)
            except NotApplicable:
                continue
            kinds = {}
            for kind, init in (("inherit", remap_state(parent.weights, child.node_map)), ("scratch", None)):
                outcome = train(Candidate(child.arch, child.hparams, budget), data, seed=args.seed + 1,
                                init_weights=init)
                kinds[kind] = epochs_to_reach(outcome.evaluation.val_accs, target, args.epochs)
            rows.append((child.mutation, target, kinds["inherit"], kinds["scratch"]))
            print(f"{child.mutation:<26} parent val {target:.3f}: inherit {kinds['inherit']:>2} epochs, "
                  f"scratch {kinds['scratch']:>2}", flush=True)
    saved = [scratch - inherit for _, _, inherit, scratch in rows]
    faster = sum(s > 0 for s in saved)
    print(f"\n{len(rows)} mutations on MNIST-1D, budget {args.epochs} epochs (not reaching = {args.epochs + 1})")
    print(f"epochs to reach the parent's accuracy: inherit {statistics.mean(r[2] for r in rows):.2f}, "
          f"scratch {statistics.mean(r[3] for r in rows):.2f}; mean saved {statistics.mean(saved):.2f} "
          f"epochs; inheriting was faster for {faster}, slower for {sum(s < 0 for s in saved)}")


if __name__ == "__main__":
    main()
