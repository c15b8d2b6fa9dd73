"""Hypernetwork layers against plain convolutions of the same layout on MNIST-1D.

    python bench/hyperconv.py [--epochs 30] [--seeds 0,1,2]

One layout (three 1-D conv layers of 32, 64 and 64 channels with kernel 5, pooling,
global pooling, a dense layer of 128, the head) is trained with `conv` layers and with
`hyperconv` layers (Ha et al. 2016: kernels generated from per-block embeddings by one
shared generator), with the same recipe and trial seeds. Reported: the parameters of the
convolution layers (the generator included) and the test accuracy at the end of
training, per seed and on average. Target: at least 4x fewer convolution parameters within
1 point of test accuracy. On this 2-core CPU it takes about 6 minutes.
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
from nas.space.shapes import CONV_OPS, infer
from nas.train import load_data, train
from nas.trial import Budget, Candidate


def network(op: str) -> Architecture:
    def conv(inputs: list[int], channels: int) -> Node:
        return Node.make(op, inputs, channels=channels, kernel_h=1, kernel_w=5, stride=1, batch_norm=True,
                         activation="relu")

    return Architecture((
        Node.make("input"), conv([0], 32), Node.make("pool", [1], kind="max", size=2),
        conv([2], 64), Node.make("pool", [3], kind="max", size=2), conv([4], 64),
        Node.make("global_pool", [5]), Node.make("dense", [6], units=128, activation="relu", dropout=0.0),
        Node.make("head", [7])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    torch.set_num_threads(2)
    folder = Path(tempfile.mkdtemp(prefix="nas-bench-hyperconv-"))
    prepare("mnist1d", folder)
    data = load_data(folder, "cpu")
    hparams = HParams(optimizer="adam", lr=3e-3, batch_size=64, epochs=args.epochs)
    results: dict[str, list[float]] = {}
    conv_params: dict[str, int] = {}
    for op in CONV_OPS:
        arch = network(op)
        plan = infer(arch, data.shape, data.num_classes)
        conv_params[op] = sum(n.params for n in plan.nodes if n.node.op == op)
        results[op] = []
        for seed in (int(s) for s in args.seeds.split(",")):
            evaluation = train(Candidate(arch, hparams, Budget(args.epochs)), data, seed=seed, device="cpu").evaluation
            results[op].append(evaluation.test_acc)
            print(f"{op:>9} seed {seed}: test {evaluation.test_acc:.4f} (val {evaluation.val_acc:.4f}), "
                  f"{conv_params[op]:,} conv parameters of {plan.params:,}, {evaluation.seconds:.0f} s", flush=True)
    means = {op: statistics.mean(accs) for op, accs in results.items()}
    ratio = conv_params["conv"] / conv_params["hyperconv"]
    gap = 100 * (means["conv"] - means["hyperconv"])
    print(f"\nconv layers: {conv_params['conv']:,} parameters, mean test {means['conv']:.4f}; hyperconv: "
          f"{conv_params['hyperconv']:,} parameters ({ratio:.1f}x fewer), mean test {means['hyperconv']:.4f} "
          f"({gap:+.2f} points below). Target: >= 4x fewer within 1 point: {ratio >= 4 and gap <= 1}")


if __name__ == "__main__":
    main()
