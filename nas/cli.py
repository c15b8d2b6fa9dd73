"""The `nas` command line.

Commands that run no flow (--help, runs, show) answer in a few seconds, so Prefect,
MLflow and torch are imported only inside the commands that need them. The search
command is the one place nas/ reaches into flows/ (lazily): the library itself never
imports Prefect.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EPILOG = """\
examples:
  nas prepare --data mnist1d
  nas search --data mnist1d --trials 30 --epochs 20
  nas search --data my.parquet --label-column target --space spaces/mlp.yaml
  nas runs --experiment mnist1d
  nas ui

Defaults come from params.yaml in the current directory; options override them.
The MLflow store defaults to sqlite:///mlflow/mlflow.db (set MLFLOW_TRACKING_URI or
--tracking-uri to use a tracking server).
"""


def _configure_environment(root: Path) -> None:
    # Prefect's database and result cache live in the project, not in the home folder,
    # so a project's cache travels with its MLflow store and `make clean` resets both.
    os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", dest="source", metavar="SOURCE",
                   help="digits (default), mnist1d, a .parquet file or an .npz file (arrays x and y)")
    p.add_argument("--label-column", help="label column of a Parquet file (default: label)")
    p.add_argument("--shape", help="example shape C,H,W or C,L for a flat file (default: inferred, flat)")
    p.add_argument("--data-dir", help="where the prepared splits go (default: data/<source name>)")
    p.add_argument("--split-seed", type=int, help="seed of the train/val/test split (default: 0)")


def _add_store_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", help="MLflow experiment (default: the data source's name)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                                          "sqlite:///mlflow/mlflow.db)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nas", description="Search neural architectures and their hyper-parameters; every trial is "
        "an MLflow run, every step a cached Prefect task.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="defaults file (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prepare", help="split a data source into train/val/test Parquet files",
                       description="Check a data source and write stratified, standardised train/val/test "
                       "Parquet splits plus meta.json (shape, classes, counts, fingerprint).")
    _add_data_options(p)

    p = sub.add_parser("search", help="run an architecture search (a Prefect flow)",
                       description="Search the space with a strategy; each trial trains a network and is "
                       "logged as an MLflow run nested under one run for the search. Re-running the same "
                       "command retrains nothing that already finished.")
    _add_data_options(p)
    p.add_argument("--space", help="search-space YAML file (default: spaces/small-cnn.yaml)")
    p.add_argument("--strategy", help="search method: random, grid, evolution (Real et al. 2017: tournaments, "
                                      "mutations, weight inheritance), aging-evolution (Real et al. 2019) or "
                                      "codeepneat (Miikkulainen et al. 2017) (default: random)")
    p.add_argument("--trials", type=int, help="how many candidates to train (default: 20)")
    p.add_argument("--population", type=int, help="population size of the evolution strategies (default: 10)")
    p.add_argument("--async", dest="asynchronous", action="store_true", default=None,
                   help="tell each finished trial at once and start the next (keeps a cluster busy; the "
                        "order then depends on timing, so a re-run does not replay exactly)")
    p.add_argument("--from-experiment", help="warm-start the strategy from this experiment's best runs, "
                                             "whatever strategy produced them")
    p.add_argument("--top-k", type=int, help="how many runs --from-experiment takes (default: 10)")
    p.add_argument("--epochs", type=int, help="training epochs per candidate (default: 20)")
    p.add_argument("--seed", type=int, help="seed of the strategy and of training (default: 0)")
    p.add_argument("--concurrency", type=int, help="candidates trained at once (default: 2)")
    p.add_argument("--max-seconds", type=float, help="per-trial time limit in seconds (default: 120)")
    p.add_argument("--max-params", type=int, help="reject networks with more parameters (default: the space's)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="training device (default: cuda when available)")
    p.add_argument("--metrics-out", default="metrics/search.json", help="summary JSON for DVC "
                                                                       "(default: metrics/search.json)")
    _add_store_options(p)

    p = sub.add_parser("runs", help="leaderboard of an experiment's trials",
                       description="The best finished trials of an experiment, by validation accuracy.")
    _add_store_options(p)
    p.add_argument("--limit", type=int, default=20, help="rows to show (default: 20)")

    p = sub.add_parser("show", help="everything recorded about one run",
                       description="Tags, parameters, metrics, artifacts and architecture of one MLflow run.")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    _add_store_options(p)

    p = sub.add_parser("lineage", help="draw an experiment's family tree to a PNG",
                       description="One node per trial, coloured by validation accuracy, an edge from each "
                       "parent to its child labelled with the mutation; the PNG is also logged to the "
                       "experiment's latest search run.")
    p.add_argument("experiment", metavar="EXPERIMENT")
    p.add_argument("--out", help="PNG path (default: lineage-EXPERIMENT.png)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: as for search)")

    p = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 against the same store",
                       description="Browse every trial: its curves, architecture, weights and parents.")
    p.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: as for search)")
    return parser


def cmd_prepare(args: argparse.Namespace) -> int:
    from nas.config import load_params
    from nas.data import parse_shape, prepare

    data = load_params(args.params).override(
        source=args.source, label_column=args.label_column, data_dir=args.data_dir,
        shape=parse_shape(args.shape) if args.shape else None, split_seed=args.split_seed).data
    out = data.resolved_dir(Path.cwd())
    meta = prepare(data.source, out, label_column=data.label_column, shape=data.shape, seed=data.split_seed)
    print(f"prepared {meta.name}: shape {meta.shape}, {len(meta.classes)} classes, "
          f"train/val/test {meta.counts['train']}/{meta.counts['val']}/{meta.counts['test']}, "
          f"fingerprint {meta.fingerprint} -> {out}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from nas.config import load_params
    from nas.data import parse_shape

    config = load_params(args.params).override(
        source=args.source, label_column=args.label_column, data_dir=args.data_dir,
        shape=parse_shape(args.shape) if args.shape else None,
        space=args.space, strategy=args.strategy, trials=args.trials, epochs=args.epochs, population=args.population,
        from_experiment=args.from_experiment, top_k=args.top_k, asynchronous=args.asynchronous,
        concurrency=args.concurrency, max_seconds=args.max_seconds, max_params=args.max_params,
        device=args.device, experiment=args.experiment, tracking_uri=args.tracking_uri, seed=args.seed,
        split_seed=args.split_seed)

    from flows.search import run_search

    summary = run_search(config)
    Path(args.metrics_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.metrics_out).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    _print_leaderboard(summary["tracking_uri"], summary["experiment"], 5)
    if summary.get("best_run_id"):
        print(f"\nbest: run {summary['best_run_id']} (architecture {summary['best_arch_id']}): "
              f"val {summary['best_val_acc']:.4f}, test {summary['best_test_acc']:.4f}, "
              f"{summary['best_params']:,} parameters")
    else:
        print("\nno trial finished successfully; see the reasons above or with `nas runs`.")
    print(f"browse: nas ui    (experiment '{summary['experiment']}', search run {summary['parent_run_id']})")
    return 0


def _print_leaderboard(tracking_uri: str | None, experiment: str, limit: int) -> None:
    from nas.lineage import LineageStore

    rows = LineageStore(tracking_uri, experiment).leaderboard(limit)
    if not rows:
        print(f"no finished trials in experiment '{experiment}' yet; run `nas search`.")
        return
    print(f"{'rank':>4}  {'run id':<32}  {'architecture':<16}  {'val':>6}  {'test':>6}  {'params':>9}  "
          f"{'secs':>6}  strategy")
    for rank, row in enumerate(rows, start=1):
        print(f"{rank:>4}  {row['run_id']:<32}  {row['arch_id']:<16}  {row['val_acc']:>6.4f}  "
              f"{row['test_acc']:>6.4f}  {int(row['params']):>9,}  {row['seconds']:>6.1f}  {row['strategy']}")


def cmd_runs(args: argparse.Namespace) -> int:
    from nas.config import load_params

    config = load_params(args.params).override(experiment=args.experiment, tracking_uri=args.tracking_uri)
    _print_leaderboard(config.tracking_uri, config.experiment_name, args.limit)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from nas.config import load_params
    from nas.lineage import LineageStore

    config = load_params(args.params).override(experiment=args.experiment, tracking_uri=args.tracking_uri)
    summary = LineageStore(config.tracking_uri, config.experiment_name).run_summary(args.run_id)
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))
        return 0
    from nas.space import Architecture

    print(f"run {summary['run_id']} ({summary['name']}): {summary['status']}, parent {summary['parent_run_id']}")
    for title, values in (("tags", summary["tags"]), ("metrics", summary["metrics"]), ("params", summary["params"])):
        print(f"\n{title}:")
        for key, value in sorted(values.items()):
            print(f"  {key:<28} {value}")
    print("\nartifacts: " + ", ".join(summary["artifacts"]))
    if summary.get("architecture"):
        print("\narchitecture:")
        print("\n".join(Architecture.from_json(summary["architecture"]["arch"]).describe()))
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from nas.config import load_params
    from nas.lineage import LineageStore
    from nas.reports import family_tree

    uri = load_params(args.params).override(tracking_uri=args.tracking_uri).tracking_uri
    store = LineageStore(uri, args.experiment)
    if not store.leaderboard(1):
        print(f"no finished trials in experiment '{args.experiment}' yet; run `nas search` first.")
        return 1
    history = store.history()
    path = family_tree(history, args.out or f"lineage-{args.experiment}.png",
                       title=f"{args.experiment}: {len(history)} trials")
    search = store.latest_search()
    if search:
        store.log_file(search, path)
    print(f"family tree of {len(history)} trials -> {path}" + (f" (logged to run {search})" if search else ""))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from nas.lineage import LineageStore

    command = LineageStore(args.tracking_uri).ui_command()
    command[command.index("--port") + 1] = str(args.port)
    print(f"MLflow UI on http://127.0.0.1:{args.port}  (Ctrl-C stops it)")
    os.execvp(command[0], command)
    return 0


COMMANDS = {"prepare": cmd_prepare, "search": cmd_search, "runs": cmd_runs, "show": cmd_show,
            "lineage": cmd_lineage, "ui": cmd_ui}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_environment(Path.cwd())
    from nas.config import ConfigError
    from nas.data import DataError
    from nas.space import ArchitectureError, SpaceError

    user_errors: tuple[type[Exception], ...] = (ConfigError, DataError, SpaceError, ArchitectureError)
    if args.command != "prepare":  # every other command talks to MLflow anyway
        from nas.lineage import LineageError

        user_errors += (LineageError,)
    try:
        return COMMANDS[args.command](args)
    except user_errors as exc:
        print(f"nas {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished trials are saved; run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
