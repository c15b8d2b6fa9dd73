"""Transfer: does a network pretrained on an MNIST-1D variant learn the published MNIST-1D faster?

    python bench/transfer.py [--source mnist1d:1] [--target mnist1d] [--epochs 20] [--seeds 0,1,2,3,4]

One conv1d network (written below) is trained on --source (MNIST-1D drawn with another
generator seed: the same ten templates, other shifts, scales, shears and noise), then on
--target for --epochs epochs from scratch and from the source's weights (what
`--init-from` does: every tensor whose node and shape match), with the same recipe and
trial seed. Reported per seed: scratch's final validation accuracy, and the first epoch at
which the transferred network reaches it. Target: at most half the epochs in every seed.
On this 2-core CPU it takes about 4 minutes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from nas.data import prepare
from nas.space import Architecture, HParams, Node
from nas.train import load_data, train
from nas.trial import Budget, Candidate

NETWORK = Architecture((
    Node.make("input"),
    Node.make("conv", [0], channels=32, kernel_h=1, kernel_w=5, stride=1, batch_norm=True, activation="relu"),
    Node.make("pool", [1], kind="max", size=2),
    Node.make("conv", [2], channels=64, kernel_h=1, kernel_w=5, stride=1, batch_norm=True, activation="relu"),
    Node.make("global_pool", [3]),
    Node.make("dense", [4], units=128, activation="relu", dropout=0.0),
    Node.make("head", [5]),
))


def data(source: str):
    folder = Path(tempfile.mkdtemp(prefix="nas-bench-transfer-"))
    prepare(source, folder)
    return load_data(folder, "cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="mnist1d:1")
    parser.add_argument("--target", default="mnist1d")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    args = parser.parse_args()
    torch.set_num_threads(2)
    candidate = Candidate(NETWORK, HParams(optimizer="adam", lr=3e-3, batch_size=64, epochs=args.epochs),
                          Budget(args.epochs))
    source, target = data(args.source), data(args.target)
    pretrained = train(candidate, source, seed=0, device="cpu")
    print(f"pretrained on {args.source}: val {pretrained.evaluation.val_acc:.4f} after {args.epochs} epochs")
    fractions = []
    print(f"\n{'seed':>4}  {'scratch final val':>17}  {'transfer reaches it at epoch':>28}  {'fraction':>8}  "
          f"{'transfer final val':>18}")
    for seed in (int(s) for s in args.seeds.split(",")):
        scratch = train(candidate, target, seed=seed, device="cpu").evaluation
        moved = train(candidate, target, seed=seed, device="cpu", init_weights=pretrained.weights).evaluation
        goal = scratch.val_accs[-1]
        reached = next((epoch for epoch, acc in enumerate(moved.val_accs, 1) if acc >= goal), None)
        fraction = reached / args.epochs if reached else float("inf")
        fractions.append(fraction)
        print(f"{seed:>4}  {goal:>17.4f}  {reached or 'never':>28}  {fraction:>8.2f}  {moved.val_accs[-1]:>18.4f}"
              f"   ({len(moved.inherited)} tensors transferred)")
    print(f"\nmedian fraction of scratch's epochs: {statistics.median(fractions):.2f}; at most 1/2 in "
          f"{sum(f <= 0.5 for f in fractions)} of {len(fractions)} seeds (target: all)")


if __name__ == "__main__":
    main()
