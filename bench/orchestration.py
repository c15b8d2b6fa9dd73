"""Orchestration overhead and cache speed of the search flow.

Trains the same 20 candidates (random search, fixed seed, one at a time) twice: by direct
`train` calls and through the `search` flow (Prefect tasks, MLflow runs, weights and
artifacts); then repeats the flow with nothing changed. Prefect's temporary API server
is started by a warm-up flow first, so its start-up (4-10 s once per process) is not
counted against either run; the CLI-level numbers of `bench/default_run.py` include it.

    python bench/orchestration.py [--trials 20] [--epochs 40] [--space spaces/cnn.yaml]

Targets: flow / direct <= 1.05 at about 2 s per candidate; repeat / first <= 0.03.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import scratch_project, stopwatch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=40, help="40 gives about 2 s per candidate here")
    parser.add_argument("--space", default="spaces/cnn.yaml")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    folder = scratch_project("orchestration")

    import torch

    from flows.search import run_search
    from nas.config import DataConfig, SearchConfig
    from nas.data import prepare
    from nas.space import SearchSpace
    from nas.strategies import RandomSearch
    from nas.train import load_data, train
    from nas.trial import Budget

    data_dir = folder / "data" / "digits"
    meta = prepare("digits", data_dir)
    config = SearchConfig(data=DataConfig(data_dir=str(data_dir)), space=args.space, trials=args.trials,
                          epochs=args.epochs,
                          seed=args.seed, concurrency=1, experiment="overhead", max_seconds=None)
    run_search(SearchConfig(data=config.data, trials=1, epochs=1, concurrency=1, experiment="warm-up"))

    # The flow's candidates, drawn the same way the flow draws them.
    space = SearchSpace.load(config.space).bind(meta.shape, len(meta.classes)).with_hparams(epochs=args.epochs)
    candidates = RandomSearch(space, Budget(args.epochs, None), seed=args.seed).ask(args.trials)
    torch.set_num_threads(1)  # what the flow gives each trial on this 2-core machine
    times: dict[str, float] = {}
    with stopwatch(times, "direct"):
        data = load_data(data_dir)
        direct = [train(c, data, seed=args.seed, max_params=space.max_params).evaluation for c in candidates]
    with stopwatch(times, "flow"):
        first = run_search(config)
    with stopwatch(times, "repeat"):
        again = run_search(config)

    from nas.lineage import LineageStore

    flowed = {e.trial_key: e for e in LineageStore(first["tracking_uri"], "overhead").history()}
    same = all(flowed[e.trial_key].val_acc == e.val_acc for e in direct)
    n = args.trials
    print(f"{n} candidates, {args.epochs} epochs each, one at a time, digits, 1 torch thread per trial")
    print(f"direct train calls : {times['direct']:7.2f} s  ({1000 * times['direct'] / n:6.0f} ms per candidate)")
    print(f"search flow        : {times['flow']:7.2f} s  ({1000 * times['flow'] / n:6.0f} ms per candidate)")
    print(f"flow / direct      : {times['flow'] / times['direct']:7.3f}   (target <= 1.05); overhead "
          f"{1000 * (times['flow'] - times['direct']) / n:.0f} ms per candidate")
    print(f"repeated flow      : {times['repeat']:7.2f} s  = {times['repeat'] / times['flow']:.3f} of the first "
          f"run (target <= 0.03)")
    print(f"training time inside: direct {sum(e.seconds for e in direct):.2f} s, flow "
          f"{sum(flowed[e.trial_key].seconds for e in direct):.2f} s")
    print(f"same metrics in flow and direct: {same}; same best on repeat: "
          f"{first['best_run_id'] == again['best_run_id']}")


if __name__ == "__main__":
    main()
