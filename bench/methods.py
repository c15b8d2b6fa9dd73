"""Every search method on the project's tabular benchmark: regret against trials over many seeds.

    python bench/methods.py [--table bench/mnist1d.parquet] [--seeds 20] [--trials 200] [--concurrency 4]
                            [--out bench]

Each method searches the table (`nas.benchmark.BenchmarkTable`: trials answered by lookup)
once per seed, in batches of --concurrency trials (as with that many workers; it also
spares the model-based methods three refits in four). After t trials, of the network with
the best validation accuracy among the first t: test regret = the table's best test
accuracy minus its test accuracy, both averaged over the table's seeds (what a user who
picks by validation gets); validation regret = the best validation accuracy of the table
seed the search saw minus its own (how fast the search finds the top of what it
optimises; nas.benchmark). The test regret of a search that finds its validation optimum
is not zero: that floor is printed and drawn too. Writes regret.csv and regret_val.csv
(median regret per method and trial, for `dvc plots`), regret.png (medians with quartile
bands, both regrets) and methods.json, and prints the median regrets at 25/50/100/200 trials.

It also measures the predictor alone: fitted on 100 random networks of the table, its
Kendall tau on all the others, beside a Gaussian process on the same encodings.

Targets (issue 13): the predictor's tau >= 0.6 after 100 pairs; median regret at 100
trials of the predictor-guided search <= 0.5 x Optuna TPE's and <= random search's at 200.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METHODS = {  # label: (strategy, options)
    "random": ("random", {}),
    "aging-evolution": ("aging-evolution", {}),
    "bayes": ("bayes", {}),
    "predictor": ("predictor", {}),
    "optuna-tpe": ("optuna-tpe", {}),
    "optuna-random": ("optuna-random", {}),
    "hyperband": ("random", {"scheduler": "hyperband", "min_epochs": 4}),  # random sampling, rungs of 4 and 12 epochs
}
CHECKPOINTS = (25, 50, 100, 200)
REGRETS = ("test", "val")


def run_method(table_path: str, label: str, seed: int, trials: int,
               concurrency: int) -> tuple[str, int, dict[str, list[float]], float]:
    """One search of the table: its test and validation regret after every trial, and the seconds it took."""
    import torch

    from nas.benchmark import BenchmarkTable

    torch.set_num_threads(1)  # one search per process, as many processes as cores
    table = BenchmarkTable(table_path)
    strategy, options = METHODS[label]
    started = time.perf_counter()
    outcome = table.search(strategy, seed=seed, trials=trials, concurrency=concurrency, **options)
    curves = {}
    for on in REGRETS:
        curve = table.regret_curve(outcome.evaluations, on, seed)
        curves[on] = curve + [curve[-1]] * (trials - len(curve))  # a strategy that ran dry keeps its last regret
    return label, seed, curves, time.perf_counter() - started


def predictor_tau(table, seeds: int, pairs: int = 100) -> dict[str, float]:
    """Median Kendall tau on held-out networks of the table (a BenchmarkTable) after `pairs`
    training pairs: the ensemble and a GP."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import Matern, WhiteKernel

    from nas.predictor import Predictor, kendall_tau

    encodings = {r["key"]: r["encoding"] for r in table.rows.values()}
    val = table.scores("val")  # one target per network: its validation accuracy averaged over the table's seeds
    x, y = np.array([encodings[key] for key in val]), np.array(list(val.values()))
    taus: dict[str, list[float]] = {"ensemble": [], "gp": []}
    warnings.filterwarnings("ignore", category=ConvergenceWarning)  # a noise level at its bound is fine here
    for seed in range(seeds):
        order = np.random.default_rng(seed).permutation(len(y))
        fit, held = order[:pairs], order[pairs:]
        ensemble = Predictor.fit(x[fit], y[fit], seed=seed)
        taus["ensemble"].append(kendall_tau(ensemble.predict(x[held])[0], y[held]))
        gp = GaussianProcessRegressor(Matern(nu=2.5) + WhiteKernel(), normalize_y=True, random_state=seed)
        taus["gp"].append(kendall_tau(gp.fit(x[fit], y[fit]).predict(x[held]), y[held]))
    return {name: float(np.median(values)) for name, values in taus.items()}


def write_outputs(out: Path, curves: dict[str, dict[str, np.ndarray]], floor: float) -> None:
    """curves[on][label]: seeds x trials regrets; floor: the median test regret of perfect searches."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(REGRETS), figsize=(12, 4.5), sharey=True)
    for ax, on in zip(axes, REGRETS):
        labels = list(curves[on])
        medians = {label: np.median(c, axis=0) for label, c in curves[on].items()}
        trials = len(next(iter(medians.values())))
        with open(out / ("regret.csv" if on == "test" else f"regret_{on}.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["trial", *labels])
            for t in range(trials):
                writer.writerow([t + 1, *(f"{medians[label][t]:.5f}" for label in labels)])
        steps = np.arange(1, trials + 1)
        for label, c in curves[on].items():
            line, = ax.plot(steps, medians[label], label=label)
            ax.fill_between(steps, *np.percentile(c, [25, 75], axis=0), color=line.get_color(), alpha=0.12)
        seeds = len(next(iter(curves[on].values())))
        if on == "test":
            ax.axhline(floor, color="grey", linestyle="--", label="a perfect search (median)")
        ax.set(xscale="log", xlabel="trials", ylabel=f"{on} regret (median, quartiles)",
               title=f"{'test' if on == 'test' else 'validation'} regret, {seeds} seeds")
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "regret.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", default="bench/mnist1d.parquet")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4, help="trials per batch (default: 4)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated labels")
    parser.add_argument("--out", default="bench", help="folder for regret.csv, regret.png, methods.json")
    args = parser.parse_args()
    labels = args.methods.split(",")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    curves = {on: {label: [[]] * args.seeds for label in labels} for on in REGRETS}
    seconds: dict[str, float] = dict.fromkeys(labels, 0.0)
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        jobs = [pool.submit(run_method, args.table, label, seed, args.trials, args.concurrency)
                for label in labels for seed in range(args.seeds)]
        for job in jobs:
            label, seed, regrets, took = job.result()
            for on in REGRETS:
                curves[on][label][seed] = regrets[on]
            seconds[label] += took
    arrays = {on: {label: np.array(c) for label, c in by_label.items()} for on, by_label in curves.items()}
    from nas.benchmark import BenchmarkTable

    table = BenchmarkTable(args.table)
    floor = float(np.median([table.floor(seed) for seed in range(args.seeds)]))
    write_outputs(out, arrays, floor)

    tau = predictor_tau(table, args.seeds)
    at = {on: {label: {t: float(np.median(a[:, t - 1])) for t in CHECKPOINTS if t <= args.trials}
               for label, a in by_label.items()} for on, by_label in arrays.items()}
    for on in REGRETS:
        print(f"median {on} regret over {args.seeds} seeds (table {args.table}, batches of {args.concurrency}); "
              "seconds per search")
        print(f"{'method':<20}" + "".join(f"{t:>9}" for t in at[on][labels[0]]) + f"{'s/search':>10}")
        for label in labels:
            print(f"{label:<20}" + "".join(f"{v:>9.4f}" for v in at[on][label].values()) +
                  f"{seconds[label] / args.seeds:>10.2f}")
    print(f"a search that finds its validation optimum has median test regret {floor:.4f}: below it, a method "
          "scores better on test only by stopping short of what it optimises")
    print(f"predictor: Kendall tau on held-out networks after 100 pairs, median of {args.seeds} draws: "
          f"ensemble {tau['ensemble']:.3f}, Gaussian process {tau['gp']:.3f} (target >= 0.6)")
    checks = {"tau >= 0.6": tau["ensemble"] >= 0.6}
    if {"predictor", "optuna-tpe", "random"} <= set(labels) and args.trials >= 200:
        for on in REGRETS:
            mine, tpe, rand = at[on]["predictor"][100], at[on]["optuna-tpe"][100], at[on]["random"][200]
            checks[f"{on}: predictor@100 <= 0.5 x optuna-tpe@100"] = mine <= 0.5 * tpe
            checks[f"{on}: predictor@100 <= random@200"] = mine <= rand
    for name, ok in checks.items():
        print(f"  {name}: {'yes' if ok else 'NO'}")
    (out / "methods.json").write_text(json.dumps({
        "median_regret": {on: {label: {str(t): v for t, v in d.items()} for label, d in by_label.items()}
                          for on, by_label in at.items()},
        "test_regret_floor": floor, "kendall_tau": tau, "targets": checks}, indent=2) + "\n")


if __name__ == "__main__":
    main()
