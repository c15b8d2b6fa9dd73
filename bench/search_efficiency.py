"""Search methods against random search on MNIST-1D: best accuracy, trials to a threshold, epochs spent.

    python bench/search_efficiency.py [--methods random,evolution,aging-evolution,bayes,hyperband]
                                      [--seeds 0,1,2,3,4] [--trials 60] [--epochs 20] [--workers N]
                                      [--device cuda] [--out bench/results/search_efficiency.json]
    python bench/search_efficiency.py --report-only [--out FILE] [--thresholds 0.97,0.98,0.985]

On this 2-core CPU, `--device cpu --workers 2 --trials 60 --epochs 10` takes about 47
minutes for the five default methods and 5 seeds; on the CPU every number replays exactly.

Each (method, seed) is one job in a process pool; a job drives the strategy's ask/tell
loop and trains in-process, with dicts in place of the lineage store (no Prefect, no
MLflow), so it runs on a bare GPU machine. Hyperband and BOHB (Hyperband over bayes)
get random search's total epochs (trials x epochs) instead of a trial count.

Targets: a method's best validation accuracy >= random's in most seeds; Bayesian
optimisation's best test accuracy within 40 trials; fewer trials than random to reach
each --thresholds validation accuracy; Hyperband/BOHB reaching random's final best validation
accuracy within 1/3 of random's epochs (median over seeds); the reinforcement learners
(metaqnn, nas-rl) with a mean validation accuracy of their last 30 trials above random's in
at least 4 of 5 seeds (the policy learned):

    python bench/search_efficiency.py --methods random,metaqnn,nas-rl --trials 100 --epochs 5 \
        --space spaces/conv1d.yaml --workers 2 --out bench/results/rl_policy.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
import traceback
from concurrent.futures import Future
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METHODS = ("random", "evolution", "aging-evolution", "codeepneat", "bayes", "metaqnn", "nas-rl", "hyperband", "bohb")
SCHEDULED = {"hyperband": "random", "bohb": "bayes"}  # scheduler method -> its sampler
POPULATION = ("evolution", "aging-evolution", "codeepneat")
FIRST_TRIALS = 40  # the "best test accuracy within 40 trials" for Bayesian optimisation
LAST_TRIALS = 30  # a policy that learned proposes better networks late: the mean of the last 30 (failed: 0)

_data_cache: dict = {}  # per worker process: every job of that process reuses the loaded tensors


def _init_worker() -> None:
    import torch
    torch.set_num_threads(1)  # one core per job: the pool already fills the machine


def _make_strategy(method: str, space, budget, seed: int, cfg: dict):
    from nas.strategies import make_search
    sampler = SCHEDULED.get(method, method)
    return make_search(sampler, space, budget, seed, population=cfg["population"] if sampler in POPULATION else None,
                       scheduler="hyperband" if method in SCHEDULED else None, min_epochs=cfg["min_epochs"],
                       eta=cfg["eta"], trials=cfg["trials"], concurrency=cfg["children"],
                       controller_lr=cfg.get("controller_lr"))


def run_job(job: tuple[str, int, dict]) -> dict:
    """One search: ask(1) -> train -> tell until its trials (or, for schedulers, epochs) are spent."""
    method, seed, cfg = job
    record = {"method": method, "seed": seed, "trials": [], "error": None}
    started = time.perf_counter()
    try:
        from nas.build import inherited_weights
        from nas.loop import run_loop
        from nas.space import SearchSpace
        from nas.train import load_data, train
        from nas.trial import Budget
        key = (cfg["data_dir"], cfg["device"])
        data = _data_cache.get(key) or _data_cache.setdefault(key, load_data(*key))
        space = SearchSpace.load(cfg["space"]).bind(data.shape, data.num_classes).with_hparams(epochs=cfg["epochs"])
        strategy = _make_strategy(method, space, Budget(cfg["epochs"], cfg["max_seconds"]), seed, cfg)
        scheduled = method in SCHEDULED
        epoch_budget = cfg["trials"] * cfg["epochs"]
        weights, checkpoints = {}, {}  # the lineage store's part that later candidates read
        spent = 0

        def submit(cand):
            """Train in this process, one at a time: the whole runner of this benchmark."""
            future = Future()
            n = len(record["trials"]) + 1
            init = inherited_weights(weights[cand.inherit_from], cand.info.get("node_map")) \
                if cand.inherit_from in weights else None  # a failed parent left no weights
            tick = time.perf_counter()
            outcome = train(cand, data, seed=seed, device=cfg["device"], max_params=space.max_params,
                            init_weights=init, resume=checkpoints.get(cand.resume_from))
            ev = outcome.evaluation
            ev.run_id = f"{method}-{seed}-{n}"
            if outcome.weights is not None:
                weights[ev.run_id] = outcome.weights
            if outcome.checkpoint is not None:
                checkpoints[ev.run_id] = outcome.checkpoint
            nonlocal spent
            spent += ev.epochs_trained - ev.resumed_at
            record["trials"].append({
                "n": n, "ok": ev.ok, "val_acc": ev.val_acc if ev.ok else None,
                "test_acc": ev.test_acc if ev.ok else None, "params": ev.params,
                "epochs": ev.epochs_trained - ev.resumed_at, "cum_epochs": spent, "budget": cand.budget.epochs,
                "seconds": round(time.perf_counter() - tick, 3), "reason": ev.reason})
            future.set_result(ev)
            return future

        def stop():
            if cfg["deadline"] and time.time() > cfg["deadline"]:
                record["cut_short"] = True  # a lease on a borrowed machine ends: report what ran
                return "the machine's lease ends"
            return "the epoch budget is spent" if scheduled and spent >= epoch_budget else None

        # Schedulers are bounded by epochs, not trials: their trial count is only a ceiling.
        outcome = run_loop(strategy, submit, trials=epoch_budget if scheduled else cfg["trials"], stop=stop)
        record["stop"] = outcome.stop_reason
    except Exception:  # the job's trials so far are kept; the others run on
        record["error"] = traceback.format_exc()
    record["seconds"] = round(time.perf_counter() - started, 2)
    return record


# ---- the report ---------------------------------------------------------------------


def best(trials: list[dict], upto: int | None = None) -> dict | None:
    """The trial of highest validation accuracy (the earliest on ties), among the first `upto`."""
    ok = [t for t in trials[:upto] if t["ok"]]
    return max(ok, key=lambda t: t["val_acc"], default=None)


def first_reaching(trials: list[dict], level: float) -> dict | None:
    return next((t for t in trials if t["ok"] and t["val_acc"] >= level), None)


def fmt(trial: dict | None) -> str:
    return "-" if trial is None else f"{trial['val_acc']:.4f} ({trial['test_acc']:.4f})"


def report(results: dict, thresholds: list[float]) -> None:
    cfg = results["config"]
    jobs = {(j["method"], j["seed"]): j for j in results["jobs"]}
    methods = [m for m in cfg["methods"] if any(k[0] == m for k in jobs)]
    seeds = sorted({s for _, s in jobs})
    full = {k: j["trials"] for k, j in jobs.items()}
    trials = dict(full)
    others = [m for m in methods if m != "random"]
    has_random = "random" in methods
    w = max(16, *(len(m) + 1 for m in methods))
    head = f"{'seed':>4}  " + "".join(f"{m:>{w}}" for m in methods)

    # Equal budgets: a run cut short by --minutes compares on the trials (schedulers: the
    # epochs) that every method of its seed finished.
    counted = [m for m in methods if m not in SCHEDULED]
    for s in seeds:
        n = min(len(trials[(m, s)]) for m in counted if (m, s) in trials)
        epochs = trials[("random", s)][n - 1]["cum_epochs"] if has_random and n else math.inf
        for m in methods:
            if (m, s) in trials:
                trials[(m, s)] = [t for t in trials[(m, s)] if t["cum_epochs"] <= epochs] if m in SCHEDULED \
                    else trials[(m, s)][:n]
    print(f"\n1. MNIST-1D, up to {cfg['trials']} trials x {cfg['epochs']} epochs ({cfg['space']}); best validation "
          f"(its test) over the trials every method of the seed finished (schedulers: random's epochs)\n"
          f"{head}{'trials':>8}")
    top = {k: best(t) for k, t in trials.items()}
    for s in seeds:
        n = min(len(trials[(m, s)]) for m in counted if (m, s) in trials)
        print(f"{s:>4}  " + "".join(f"{fmt(top.get((m, s))):>{w}}" for m in methods) + f"{n:>8}")
    for m in methods:
        bests = [b for s in seeds if (b := top.get((m, s)))]
        wins = ""
        if has_random and m != "random":
            n = sum(1 for s in seeds if (b := top.get((m, s))) and (r := top.get(("random", s)))
                    and b["val_acc"] >= r["val_acc"])
            wins = f"; best val >= random's in {n} of {len(seeds)} seeds"
        if bests:
            tests = [b["test_acc"] for b in bests]
            print(f"   {m}: test of best-val network max {max(tests):.4f}, mean {statistics.mean(tests):.4f}{wins}")
    if "bayes" in methods and has_random:
        print(f"   within the first {FIRST_TRIALS} trials, best validation (its test):")
        for s in seeds:
            print(f"{s:>4}  random {fmt(best(trials.get(('random', s), []), FIRST_TRIALS))}  "
                  f"bayes {fmt(best(trials.get(('bayes', s), []), FIRST_TRIALS))}")
        bayes40 = [b["test_acc"] for s in seeds if (b := best(trials.get(("bayes", s), []), FIRST_TRIALS))]
        if bayes40:
            print(f"   bayes: test of best-val network within {FIRST_TRIALS} trials max {max(bayes40):.4f}, "
                  f"mean {statistics.mean(bayes40):.4f}")

    for threshold in thresholds:  # several, so that no single convenient one tells the story
        print(f"\n2. trials (cumulative epochs) to reach validation accuracy {threshold:g}\n{head}")
        reached = {k: first_reaching(t, threshold) for k, t in trials.items()}
        for s in seeds:
            cells = [(f"{r['n']} ({r['cum_epochs']} ep)" if (r := reached.get((m, s))) else "never") for m in methods]
            print(f"{s:>4}  " + "".join(f"{c:>{w}}" for c in cells))
        if has_random:
            def n_of(m, s):
                return r["n"] if (r := reached.get((m, s))) else math.inf
            for m in others:
                fewer = sum(1 for s in seeds if n_of(m, s) < n_of("random", s))
                same = sum(1 for s in seeds if n_of(m, s) == n_of("random", s))
                print(f"   {m}: fewer trials than random in {fewer} of {len(seeds)} seeds (as many in {same})")

    if has_random and others:
        print(f"\n3. mean validation accuracy of the last {LAST_TRIALS} trials (a failed one counts 0): "
              f"did the policy learn?\n{head}")
        def late(m, s):
            rows = trials.get((m, s), [])[-LAST_TRIALS:]
            return statistics.mean(t["val_acc"] if t["ok"] else 0.0 for t in rows) if rows else math.nan
        for s in seeds:
            print(f"{s:>4}  " + "".join(f"{late(m, s):>{w}.4f}" for m in methods))
        for m in others:
            above = sum(1 for s in seeds if late(m, s) > late("random", s))
            print(f"   {m}: above random's in {above} of {len(seeds)} seeds")

    scheduled = [m for m in methods if m in SCHEDULED]
    if scheduled and has_random:
        print("\n4. epochs until the scheduler's best validation first reaches random's final best, "
              "as a fraction of random's epochs (target <= 1/3)")
        for m in scheduled:
            fractions = []
            for s in seeds:
                # Only these two compete here, so each keeps every trial it finished.
                rnd, own = full.get(("random", s), []), full.get((m, s), [])
                target = best(rnd)
                total = rnd[-1]["cum_epochs"] if rnd else 0
                hit = first_reaching(own, target["val_acc"]) if target else None
                fraction = hit["cum_epochs"] / total if hit and total else math.inf
                fractions.append(fraction)
                where = f"{hit['cum_epochs']} of {total} epochs = {fraction:.3f}" if hit else "not reached"
                print(f"   {m} seed {s}: random's best {target['val_acc'] if target else float('nan'):.4f}: {where}")
            median = statistics.median(fractions) if fractions else math.inf
            print(f"   {m}: median {'not reached' if math.isinf(median) else f'{median:.3f}'}")

    print("\n5. wall time per job (seconds)\n" + f"{'seed':>4}  " + "".join(f"{m:>{w}}" for m in methods))
    for s in seeds:
        print(f"{s:>4}  " + "".join(f"{jobs[(m, s)]['seconds'] if (m, s) in jobs else '-':>{w}}" for m in methods))
    print(f"   jobs together {sum(j['seconds'] for j in jobs.values()):.0f} s; whole run {results['elapsed']:.0f} s "
          f"with {cfg['workers']} workers on {cfg['device']}")
    for j in results["jobs"]:
        if j["error"]:
            print(f"\nJOB FAILED: {j['method']} seed {j['seed']} after {len(j['trials'])} trials\n{j['error']}")


# ---- the command line -------------------------------------------------------------------


def ensure_data(data_dir: str) -> None:
    if (Path(data_dir) / "meta.json").exists():
        return
    if importlib.util.find_spec("mnist1d") is None:
        sys.exit(f"no prepared data in {data_dir}, and the mnist1d package is not installed here: run "
                 f"`nas prepare --data mnist1d` where it is, and copy that folder to {data_dir}.")
    from nas.data import prepare
    prepare("mnist1d", data_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data/mnist1d")
    parser.add_argument("--methods", default="random,evolution,aging-evolution,bayes,hyperband",
                        help=f"comma list from {','.join(METHODS)}")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--min-epochs", type=int, default=None, help="first rung; default ceil(epochs/27)")
    parser.add_argument("--eta", type=int, default=3)
    parser.add_argument("--space", default="spaces/small-cnn.yaml")
    parser.add_argument("--population", type=int, default=10)
    parser.add_argument("--children", type=int, default=2, help="nas-rl: results per controller update")
    parser.add_argument("--controller-lr", type=float, default=None,
                        help="nas-rl: Adam's learning rate (default: scaled to the trials, learning_rate_for)")
    parser.add_argument("--device", default=None, help="default cuda when available, else cpu")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--out", default="bench/results/search_efficiency.json")
    parser.add_argument("--thresholds", default="0.97,0.98,0.985",
                        help="validation accuracies for the trials-to-threshold table, comma-separated")
    parser.add_argument("--max-seconds", type=float, default=300)
    parser.add_argument("--minutes", type=float, default=None,
                        help="stop asking for trials after this many minutes and report what finished")
    parser.add_argument("--report-only", action="store_true", help="print the report of an existing --out")
    args = parser.parse_args()
    thresholds = [float(t) for t in args.thresholds.split(",")]
    if args.report_only:
        report(json.loads(Path(args.out).read_text()), thresholds)
        return

    methods = args.methods.split(",")
    if unknown := sorted(set(methods) - set(METHODS)):
        parser.error(f"unknown methods {unknown}; choose from {','.join(METHODS)}")
    if args.device is None:
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    # ceil(epochs/27): with eta 3, four rungs when epochs allow it, and never below one epoch.
    args.min_epochs = args.min_epochs or max(1, math.ceil(args.epochs / args.eta**3))
    ensure_data(args.data_dir)
    cfg = {k: v for k, v in vars(args).items() if k not in ("report_only", "minutes")}
    cfg["deadline"] = time.time() + 60 * args.minutes if args.minutes else None
    cfg.update(methods=methods, seeds=[int(s) for s in args.seeds.split(",")])
    # Slow methods first, so the pool's last wave is not one long job alone.
    jobs = [(m, s, cfg) for m in sorted(methods, key=lambda m: m not in ("bayes", "bohb")) for s in cfg["seeds"]]
    cfg["workers"] = workers = max(1, min(args.workers, len(jobs)))

    started, records = time.perf_counter(), []
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    # spawn: CUDA cannot be used in forked children, and fresh processes share no torch state.
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
        for rec in pool.imap_unordered(run_job, jobs):
            records.append(rec)
            b = best(rec["trials"])
            print(f"{rec['method']:>16} seed {rec['seed']}: best val {b['val_acc'] if b else float('nan'):.4f} "
                  f"in {len(rec['trials'])} trials, {rec['seconds']:.0f} s{'  FAILED' if rec['error'] else ''}"
                  f"{'  (cut short)' if rec.get('cut_short') else ''}", flush=True)
            results = {"config": cfg, "elapsed": time.perf_counter() - started,
                       "jobs": sorted(records, key=lambda r: (methods.index(r["method"]), r["seed"]))}
            Path(args.out).write_text(json.dumps(results, indent=1))  # after each job: a killed run keeps them
    report(results, thresholds)


if __name__ == "__main__":
    main()
