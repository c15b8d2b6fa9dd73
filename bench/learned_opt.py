"""The LSTM optimiser (nas.learned_opt) against hand-tuned Adam, RMSprop, SGD and NAG on MNIST-1D.

    python bench/learned_opt.py [--iterations 200] [--seeds 0-9] [--validation 50-54] [--held-out 100-104]
                                [--unroll 5] [--batch 2] [--seed 0] [--out bench/learned_opt.json]

1. Meta-training: one OptimizerNet learns to train a sigmoid MLP with 20 hidden units on
   512-row subsets of MNIST-1D (one task per --seeds seed: its rows and, per meta-iteration,
   fresh initial weights), `--horizon` optimisee steps per run, truncated every `--unroll`,
   `--batch` runs per meta-update. Every 25 iterations the net is scored on the
   --validation tasks (the loss after `--horizon` steps); the best one is kept.
2. Baselines: Adam, RMSprop, plain SGD and SGD with Nesterov momentum 0.9, each at the
   learning rate of --grid with the lowest mean loss after `--horizon` steps on the same
   training tasks.
3. Held-out tasks (--held-out seeds: other rows, other initial weights): the loss after
   `--horizon` steps of the learned optimiser and of each tuned baseline, per seed, and the
   count of seeds where the learned one beats the best of them (target: 4 of 5).
4. Generalisation: the same comparison on a larger MLP (--large, default 40,40), which
   meta-training never saw; the baselines are tuned again for it on the training seeds.

Writes the numbers to --out (JSON) and the mean loss curves next to it (PNG). Measured
with meta-training seeds 0, 1 and 2: 5 of 5 on both networks each time, in about 3
minutes (one thread of this 2-core CPU, with other work running beside it).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from nas.learned_opt import LearnedOptimizer, OptimizerNet, Task, meta_train, optimise, task_family, to_bytes

BASELINES = {
    "adam": torch.optim.Adam,
    "rmsprop": torch.optim.RMSprop,
    "sgd": torch.optim.SGD,
    "nag": partial(torch.optim.SGD, momentum=0.9, nesterov=True),  # the paper's fourth baseline, and nas.train's SGD
}


def seed_list(text: str) -> list[int]:
    """"0-9" or "0,1,5" (or a mix: "0-3,7")."""
    seeds: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        seeds.extend(range(int(first), int(last or first) + 1))
    return seeds


def final_loss(curve: list[float]) -> float:
    """A diverged run (NaN) ranks last, not first."""
    return curve[-1] if math.isfinite(curve[-1]) else math.inf


def tune(tasks: list[Task], grid: list[float], steps: int) -> dict[str, dict]:
    """Per baseline: the mean final loss over `tasks` at each learning rate of `grid`, and the best rate."""
    tuned = {}
    for name, kind in BASELINES.items():
        means = {lr: statistics.fmean(final_loss(optimise(task, lambda ps: kind(ps, lr=lr), steps, task.seed))
                                      for task in tasks) for lr in grid}
        tuned[name] = {"mean_final_loss": means, "lr": min(means, key=means.get)}
    return tuned


def compare(net: OptimizerNet, held_out: list[Task], tuned: dict[str, dict], steps: int, title: str) -> dict:
    """Every held-out seed's curves, a printed table of final losses, and the learned optimiser's wins."""
    names = ["learned", *BASELINES]
    print(f"\n{title}: loss after {steps} steps")
    print("seed  " + "  ".join(f"{n:>9}" for n in names) + "  learned wins")
    seeds, wins = {}, 0
    for task in held_out:
        curves = {"learned": optimise(task, lambda ps: LearnedOptimizer(ps, net), steps, task.seed)}
        for name, kind in BASELINES.items():
            lr = tuned[name]["lr"]
            curves[name] = optimise(task, lambda ps: kind(ps, lr=lr), steps, task.seed)
        finals = {name: final_loss(curve) for name, curve in curves.items()}
        won = finals["learned"] < min(finals[name] for name in BASELINES)
        wins += won
        seeds[task.seed] = {"final": finals, "won": won, "curves": curves}
        print(f"{task.seed:<5} " + "  ".join(f"{finals[n]:9.4f}" for n in names) + f"  {'yes' if won else 'no'}")
    rates = ", ".join(f"{name} {tuned[name]['lr']:g}" for name in BASELINES)
    print(f"learned < best hand-tuned in {wins} of {len(held_out)} seeds (tuned lr: {rates})")
    return {"tuned": tuned, "seeds": seeds, "wins": wins, "of": len(held_out)}


def finite(value):
    """`value` with every non-finite float as None: strict JSON has no NaN or Infinity."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def plot(results: dict, meta_curve: list[float], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return False
    panels = list(results.items())
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(5 * (len(panels) + 1), 4))
    for ax, (title, result) in zip(axes, panels):
        for name in ["learned", *BASELINES]:
            curves = [seed["curves"][name] for seed in result["seeds"].values()]
            mean = [statistics.fmean(step) for step in zip(*curves)]
            label = name if name == "learned" else f"{name} (lr {result['tuned'][name]['lr']:g})"
            ax.plot(mean, label=label, linewidth=2.5 if name == "learned" else 1.2)
        ax.set(title=f"{title}: mean over {result['of']} held-out tasks", xlabel="step", ylabel="training loss",
               yscale="log")
        ax.legend()
    axes[-1].plot(meta_curve, linewidth=0.6)
    axes[-1].set(title="meta-training", xlabel="meta-iteration", ylabel="mean loss over the horizon", yscale="log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=200, help="meta-training iterations")
    parser.add_argument("--seeds", default="0-9", help="training tasks (meta-training and tuning the baselines)")
    parser.add_argument("--validation", default="50-54", help="tasks that pick the best net during meta-training")
    parser.add_argument("--held-out", default="100-104", help="tasks that judge")
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--unroll", type=int, default=5)
    parser.add_argument("--meta-lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=2, help="problems per meta-iteration")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--large", default="40,40", help="hidden sizes of the generalisation test's MLP")
    parser.add_argument("--grid", default="0.001,0.003,0.01,0.03,0.1,0.3,1", help="learning rates tried per baseline")
    parser.add_argument("--seed", type=int, default=0, help="meta-training seed")
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    parser.add_argument("--save-net", default=None, help="also write the trained optimiser here (safetensors)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny tensors: more threads only wait on each other
    started = time.perf_counter()
    seeds, validation_seeds, held_out_seeds = seed_list(args.seeds), seed_list(args.validation), seed_list(args.held_out)
    large = tuple(int(h) for h in args.large.split(","))
    grid = [float(lr) for lr in args.grid.split(",")]
    shared = (set(seeds) | set(validation_seeds)) & set(held_out_seeds)
    if shared:
        parser.error(f"--held-out shares {sorted(shared)} with --seeds or --validation: held-out tasks must be unseen")

    train_tasks = task_family("mnist1d", seeds, rows=args.rows, hidden=(20,))
    meta_started = time.perf_counter()

    def progress(i: int, loss: float) -> None:
        if (i + 1) % 50 == 0 or i + 1 == args.iterations:
            print(f"meta-iteration {i + 1}/{args.iterations}: mean loss over the horizon {loss:.4f} "
                  f"({time.perf_counter() - meta_started:.0f} s)", flush=True)

    net, meta_curve = meta_train(train_tasks, iterations=args.iterations, unroll=args.unroll, horizon=args.horizon,
                                 meta_lr=args.meta_lr, seed=args.seed, batch=args.batch, anneal=True,
                                 on_iteration=progress,
                                 validate=task_family("mnist1d", validation_seeds, rows=args.rows, hidden=(20,)))
    meta_seconds = time.perf_counter() - meta_started
    if args.save_net:
        Path(args.save_net).write_bytes(to_bytes(net))

    results = {}
    for title, hidden in (("MLP (20,)", (20,)), (f"MLP {large} (unseen in meta-training)", large)):
        tasks = train_tasks if hidden == (20,) else task_family("mnist1d", seeds, rows=args.rows, hidden=hidden)
        tuned = tune(tasks, grid, args.horizon)
        held_out = task_family("mnist1d", held_out_seeds, rows=args.rows, hidden=hidden)
        results[title] = compare(net, held_out, tuned, args.horizon, title)
    total = time.perf_counter() - started
    print(f"\nmeta-training {meta_seconds:.0f} s, whole run {total:.0f} s")

    out = Path(args.out)
    summary = {
        "command": " ".join(sys.argv), "settings": vars(args), "meta_seconds": meta_seconds, "total_seconds": total,
        "meta_curve": meta_curve,
        "results": {title: {**r, "seeds": {str(s): {k: v for k, v in seed.items() if k != "curves"}
                                           for s, seed in r["seeds"].items()},
                            "mean_curves": {name: [statistics.fmean(step) for step in
                                                   zip(*(seed["curves"][name] for seed in r["seeds"].values()))]
                                            for name in ["learned", *BASELINES]}}
                    for title, r in results.items()},
    }
    out.write_text(json.dumps(finite(summary), indent=1, allow_nan=False) + "\n")
    if plot(results, meta_curve, out.with_suffix(".png")):
        print(f"wrote {out} and {out.with_suffix('.png')}")
    else:
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
