"""Genetic CNN beside aging evolution and random search, with real training on MNIST-1D.

    python bench/genetic_cnn.py [--trials 60] [--seeds 0,1,2,3,4] [--epochs 1] [--population 10]
                                [--concurrency 2] [--max-seconds 60] [--methods genetic-cnn,aging-evolution,random]
                                [--project DIR] [--out bench]

One lineage store (MLflow on SQLite under --project, default a fresh temporary folder) on
the bundled MNIST-1D data. For each seed and method, one search of --trials trials through
`nas.api.create_search` on the same space file, spaces/genetic-cnn.yaml: Genetic CNN
evolves the connections of its three stages (3, 4, 5 nodes); aging evolution and random
search write plain chains of the same convolutions (the file's `layout`). Genetic CNN and
aging evolution use a population of --population. Every trial is also measured on the test
split (report_test), and each search's winner is its best trial by validation accuracy:
reported are that validation accuracy and the winner's test accuracy. Aging evolution's
initial population is random samples drawn with the search's seed, so for one seed it and
random search share their first --population trials (the comparison is paired there).

Prints, per method, mean +- sd and median over the seeds of the best validation accuracy
and of the winner's test accuracy, the mean number of trials, failures, and time (this
invocation's wall seconds, and the training seconds the store recorded, which a cache hit
does not repeat); then one row per search. Writes genetic_cnn.json (configuration, summary,
per-seed rows, best-val-so-far curves) and genetic_cnn.png (best validation accuracy so far
against trials, mean over seeds, one line per method) to --out.

Each search is an experiment named METHOD-sSEED-eEPOCHS, so running the script again with
the same --project replays every finished trial from the store (a cache hit: nothing
trains) and an interrupted run continues where it stopped.

Why --epochs 1 by default: the 3 methods x 5 seeds x 60 trials are 900 trainings. Measured
on this 2-core CPU (shared with other work, load about 3-4) at --concurrency 2: a Genetic
CNN network (73k-108k parameters) takes about 4.3 s per epoch while another trains beside
it, so about 2.1 s of wall time per trial at 1 epoch; the smaller chains that aging
evolution and random search write (2k-26k parameters) about 0.9 s. That is about 4 minutes
per seed at 1 epoch (some 20 minutes for the default run), but about 7 minutes per seed at
2 epochs (35 minutes): over the 25-30 minutes this benchmark is sized for. The default
run took 20 minutes here (2026-12-01). One epoch ranks networks noisily (a Genetic CNN
network reached 0.55-0.66 validation accuracy after 1 epoch and 0.80-0.91 after 3), so
read the numbers as a comparison of methods at a small fixed budget; with time to spare,
--epochs 3 or more tells more. --max-seconds 60 is only a guard against a stalled trial
(it fails, and a rerun trains it again): no 1-epoch trial here comes near it.

As in the paper, Genetic CNN trains a network it has seen before again (its fitness is
the mean), so about a third to a half of its 60 trials retrain earlier networks; the
winner is still the single trial of highest validation accuracy, as for the others.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, scratch_project  # noqa: E402

METHODS = ("genetic-cnn", "aging-evolution", "random")
POPULATION_METHODS = {"genetic-cnn", "aging-evolution"}  # the strategies that take --population
SPACE = ROOT / "spaces" / "genetic-cnn.yaml"
DATA = "mnist1d"


def run_search(method: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One search, run (or replayed from the store): its winner, its best-val-so-far curve, its time."""
    from nas.api import create_search

    options: dict[str, Any] = {"population": args.population} if method in POPULATION_METHODS else {}
    started = time.perf_counter()
    search = create_search(f"{method}-s{seed}-e{args.epochs}", data=DATA, strategy=method, space=str(SPACE),
                           trials=args.trials, epochs=args.epochs, seed=seed, concurrency=args.concurrency,
                           max_seconds=args.max_seconds, report_test=True, **options)
    outcome = search.optimize()
    wall = time.perf_counter() - started
    evaluations = search.evaluations  # in the order they were told
    curve: list[float | None] = []
    best: float | None = None
    for evaluation in evaluations:
        if evaluation.ok and evaluation.val_acc is not None and (best is None or evaluation.val_acc > best):
            best = evaluation.val_acc
        curve.append(best)
    winner = search.best_trial
    return {
        "method": method, "seed": seed, "experiment": search.config.experiment_name,
        "trials": len(evaluations), "failed": sum(not e.ok for e in evaluations),
        "failures": sorted({e.reason or e.status.value for e in evaluations if not e.ok}),
        "stop_reason": outcome.stop_reason,
        "best_val_acc": winner.val_acc if winner else None, "test_acc": winner.test_acc if winner else None,
        "best_run_id": winner.run_id if winner else None, "best_arch_id": winner.arch_id if winner else None,
        "best_params": winner.params if winner else None,
        "best_genetic_code": winner.candidate.info.get("genetic_code") if winner else None,
        "best_generation": winner.candidate.generation if winner else None,
        "wall_seconds": wall, "train_seconds": sum(e.seconds or 0.0 for e in evaluations),
        "curve": curve,
    }


def stats(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"mean": None, "sd": None, "median": None, "n": 0}
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "median": statistics.median(values), "n": len(values)}


def summarise(rows: list[dict[str, Any]], methods: list[str], trials: int) -> dict[str, dict[str, Any]]:
    summary = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        curves = []
        for r in mine:  # a search that ran dry keeps its last value; None until a first success
            curve = r["curve"] + [r["curve"][-1] if r["curve"] else None] * (trials - len(r["curve"]))
            curves.append(curve[:trials])
        mean_curve = []
        for t in range(trials):
            at = [c[t] for c in curves if c[t] is not None]
            mean_curve.append(statistics.fmean(at) if at else None)
        summary[method] = {
            "best_val_acc": stats([r["best_val_acc"] for r in mine if r["best_val_acc"] is not None]),
            "test_acc": stats([r["test_acc"] for r in mine if r["test_acc"] is not None]),
            "mean_trials": statistics.fmean(r["trials"] for r in mine) if mine else None,
            "failed": sum(r["failed"] for r in mine),
            "wall_seconds": sum(r["wall_seconds"] for r in mine),
            "train_seconds": sum(r["train_seconds"] for r in mine),
            "mean_best_val_so_far": mean_curve,
        }
    return summary


def fmt(s: dict[str, Any]) -> str:
    if s["mean"] is None:
        return f"{'-':>24}"
    return f"{s['mean']:.4f} ± {s['sd']:.4f} ({s['median']:.4f})".rjust(24)


def print_table(summary: dict[str, dict[str, Any]], rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\nMNIST-1D, space {SPACE.relative_to(ROOT)}, {args.trials} trials x {args.epochs} epoch(s), "
          f"population {args.population}, concurrency {args.concurrency}, seeds {args.seeds}")
    print(f"{'method':<17}{'best val: mean ± sd (median)':>30}{'test of winner: mean ± sd (median)':>36}"
          f"{'trials':>8}{'failed':>8}{'wall s':>9}{'train s':>9}")
    for method, s in summary.items():
        print(f"{method:<17}{fmt(s['best_val_acc']):>30}{fmt(s['test_acc']):>36}{s['mean_trials']:>8.1f}"
              f"{s['failed']:>8}{s['wall_seconds']:>9.0f}{s['train_seconds']:>9.0f}")
    print(f"\n{'method':<17}{'seed':>5}{'trials':>7}{'failed':>7}{'best val':>10}{'test':>8}{'params':>8}"
          f"{'gen':>5}{'wall s':>8}  genetic code / arch id")
    for r in rows:
        val = f"{r['best_val_acc']:.4f}" if r["best_val_acc"] is not None else "-"
        test = f"{r['test_acc']:.4f}" if r["test_acc"] is not None else "-"
        print(f"{r['method']:<17}{r['seed']:>5}{r['trials']:>7}{r['failed']:>7}{val:>10}{test:>8}"
              f"{r['best_params'] or 0:>8}{r['best_generation'] or 0:>5}{r['wall_seconds']:>8.0f}  "
              f"{r['best_genetic_code'] or (r['best_arch_id'] or '-')[:12]}")
    failures = sorted({f for r in rows for f in r["failures"]})
    if failures:
        print("failures: " + "; ".join(failures))


def plot(summary: dict[str, dict[str, Any]], rows: list[dict[str, Any]], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, s in summary.items():
        points = [(t + 1, v) for t, v in enumerate(s["mean_best_val_so_far"]) if v is not None]
        if not points:
            continue
        line, = ax.plot(*zip(*points), label=method)
        for r in rows:  # each seed faintly behind its mean
            if r["method"] == method and r["curve"]:
                seed_points = [(t + 1, v) for t, v in enumerate(r["curve"]) if v is not None]
                ax.plot(*zip(*seed_points), color=line.get_color(), alpha=0.15, linewidth=0.8)
    seeds = len(args.seed_list)
    ax.set(xlabel="trial", ylabel="best validation accuracy so far",
           title=f"MNIST-1D, {args.epochs} epoch(s) per trial: mean of {seeds} seed(s) (faint: each seed)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per trial (default 1: see above why)")
    parser.add_argument("--population", type=int, default=10, help="genetic-cnn's and aging-evolution's")
    parser.add_argument("--concurrency", type=int, default=2, help="trials training at once (threads)")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="per-trial time limit (a guard)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated strategies")
    parser.add_argument("--project", help="store folder; again with the same one, finished trials are replayed")
    parser.add_argument("--out", default=str(ROOT / "bench"), help="folder for genetic_cnn.json and .png")
    args = parser.parse_args()
    args.seed_list = [int(s) for s in args.seeds.split(",")]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    out = Path(args.out).absolute()  # before moving into the store's folder
    out.mkdir(parents=True, exist_ok=True)
    if args.project:
        folder = Path(args.project).absolute()
        folder.mkdir(parents=True, exist_ok=True)
        os.chdir(folder)
    else:
        folder = scratch_project("genetic-cnn")
    print(f"store: {folder}  (again with --project {folder} to replay or continue)", flush=True)

    started = time.perf_counter()
    rows = []
    for seed in args.seed_list:  # seed by seed, so an early stop still leaves paired comparisons
        for method in methods:
            row = run_search(method, seed, args)
            rows.append(row)
            val = f"{row['best_val_acc']:.4f}" if row["best_val_acc"] is not None else "-"
            test = f"{row['test_acc']:.4f}" if row["test_acc"] is not None else "-"
            print(f"seed {seed} {method}: {row['trials']} trials ({row['failed']} failed), best val {val}, "
                  f"its test {test}, {row['wall_seconds']:.0f} s", flush=True)
    wall = time.perf_counter() - started

    summary = summarise(rows, methods, args.trials)
    print_table(summary, rows, args)
    print(f"\nwall time {wall:.0f} s ({wall / 60:.1f} min); store {folder}")
    config = {k: v for k, v in vars(args).items() if k != "seed_list"}
    (out / "genetic_cnn.json").write_text(json.dumps({
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "config": {**config, "seeds": args.seed_list, "methods": methods, "data": DATA,
                   "space": str(SPACE.relative_to(ROOT)), "report_test": True, "project": str(folder)},
        "wall_seconds": wall,
        "summary": summary,
        "searches": rows,
    }, indent=2) + "\n")
    plot(summary, rows, args, out / "genetic_cnn.png")
    print(f"wrote {out / 'genetic_cnn.json'} and {out / 'genetic_cnn.png'}")


if __name__ == "__main__":
    main()
