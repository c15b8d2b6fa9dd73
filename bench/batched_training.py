"""Batched training: N settings of one network trained one by one versus at once (nas.batched).

    python bench/batched_training.py [--members 8] [--epochs 5] [--device cpu|cuda] [--threads 2]

MNIST-1D, one mid-size architecture of spaces/conv1d.yaml without dropout (a conv with batch
norm), N settings (a learning-rate grid times weight decay 0 / 1e-4, inits alternating).
Each device trains them separately, one after another, with nas.train.train, then together
with nas.batched.train_together; it prints the seconds of each, the speed-up
(separate / together) and the largest |val_acc difference| between the two. On the CPU the
two agree up to float rounding, which training amplifies over epochs: after 5 epochs a few
val examples (as separate runs with 1 versus 2 threads differ too); bf16 on CUDA more. Without --device: the CPU, and
CUDA too when torch sees it. The CPU runs with `--threads` torch threads.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, scratch_project  # noqa: E402

MID_SIZE = (20_000, 150_000)  # parameters


def pick_architecture(space, seed: int):
    """The first sample with no dropout, a batch-normed conv and a mid-size parameter count."""
    from nas.space import infer

    rng = random.Random(seed)
    shape, classes = space.bound()
    for _ in range(10_000):
        arch, hparams = space.sample(rng)
        has_dropout = any(float(n.get("dropout", 0) or 0) > 0 for n in arch.nodes)
        has_bn_conv = any(n.op == "conv" and n.get("batch_norm") for n in arch.nodes)
        if not has_dropout and has_bn_conv and MID_SIZE[0] <= infer(arch, shape, classes).params <= MID_SIZE[1]:
            return arch, hparams
    raise SystemExit("no suitable architecture sampled; widen MID_SIZE")


def settings(arch, hparams, members: int, epochs: int):
    from dataclasses import replace

    from nas.trial import Budget, Candidate

    n_lr = (members + 1) // 2
    lrs = [1e-3 * 10 ** (i / max(n_lr - 1, 1)) for i in range(n_lr)]  # 1e-3 .. 1e-2, log-spaced
    grid = [(lr, wd) for lr in lrs for wd in (0.0, 1e-4)][:members]
    return [Candidate(arch, replace(hparams, lr=lr, weight_decay=wd, epochs=epochs,
                                    init=("kaiming", "xavier")[i % 2]), Budget(epochs))
            for i, (lr, wd) in enumerate(grid)]


def compare(candidates, data_dir: Path, device: str) -> None:
    import torch

    from nas.batched import train_together
    from nas.train import load_data, train

    data = load_data(data_dir, device)
    started = time.perf_counter()
    alone = [train(c, data, device=device) for c in candidates]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    separate = time.perf_counter() - started
    started = time.perf_counter()
    together = train_together(candidates, data, device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    batched = time.perf_counter() - started
    failed = [i for i, (a, b) in enumerate(zip(alone, together)) if not (a.evaluation.ok and b.evaluation.ok)]
    diff = max((abs(a.evaluation.val_acc - b.evaluation.val_acc) for i, (a, b) in enumerate(zip(alone, together))
                if i not in failed), default=float("nan"))
    print(f"{device:>6}  separate {separate:7.2f} s  together {batched:7.2f} s  speed-up {separate / batched:5.2f}x  "
          f"max |val_acc diff| {diff:.4f}  val_acc {min(o.evaluation.val_acc or 0 for o in together):.3f}.."
          f"{max(o.evaluation.val_acc or 0 for o in together):.3f}" + (f"  failed members {failed}" if failed else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--device", help="cpu or cuda (default: cpu, and cuda when available)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="which architecture is sampled")
    parser.add_argument("--data-dir", help="a prepared MNIST-1D folder (default: prepare one, which needs mnist1d)")
    args = parser.parse_args()
    prepared = Path(args.data_dir).resolve() if args.data_dir else None
    folder = scratch_project("batched")

    import torch

    from nas.data import prepare, read_meta
    from nas.space import SearchSpace, infer

    torch.set_num_threads(args.threads)
    data_dir = prepared or folder / "data" / "mnist1d"
    meta = read_meta(data_dir) if prepared else prepare("mnist1d", data_dir)
    space = SearchSpace.load(ROOT / "spaces/conv1d.yaml").bind(meta.shape, len(meta.classes))
    arch, hparams = pick_architecture(space, args.seed)
    candidates = settings(arch, hparams, args.members, args.epochs)
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    plan_params = infer(arch, meta.shape, len(meta.classes)).params
    print(f"MNIST-1D ({meta.counts['train']} train rows), {len(candidates)} members x {args.epochs} epochs, "
          f"{hparams.optimizer}, batch {hparams.batch_size}, {plan_params:,} parameters, torch {torch.__version__}, "
          f"{args.threads} CPU threads")
    print("\n".join("   " + line for line in arch.describe()))
    for device in devices:
        compare(candidates, data_dir, device)


if __name__ == "__main__":
    main()
