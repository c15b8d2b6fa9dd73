"""The `nas` command line.

Commands that run no flow (--help, runs, show) answer in a few seconds, so Prefect,
MLflow and torch are imported only inside the commands that need them. The search
command is the one place nas/ reaches into flows/ (lazily): the library itself never
imports Prefect.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

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


class _Parser(argparse.ArgumentParser):
    """A usage error in one line that points at --help, not the whole usage of a command with thirty options."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}; see `{self.prog} --help`.\n")


def _configure_environment(root: Path) -> None:
    # Prefect's database and result cache live in the project, not in the home folder,
    # so a project's cache travels with its MLflow store and `make clean` resets both.
    os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # A fresh Prefect home's temporary API server needs about 20 s here to create its
    # database, longer on a busy machine; Prefect's default patience is 20 s.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    # Against a tracking server MLflow prints a "View run" line per run; the log names every run already.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # Logging or loading a model downloads a few small files, each with a progress bar of its own.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", dest="source", metavar="SOURCE",
                   help="digits (default), mnist1d (mnist1d:SEED: a variant drawn with another generator seed), "
                        "adding (the adding problem; adding:L for length L), "
                        "a .parquet file or an .npz file (arrays x and y)")
    p.add_argument("--label-column", help="label column of a Parquet file (default: label)")
    p.add_argument("--shape", help="example shape C,H,W or C,L for a flat file (default: inferred, flat)")
    p.add_argument("--data-dir", help="where the prepared splits go (default: data/<source name>)")
    p.add_argument("--split-seed", type=int, help="seed of the train/val/test split (default: 0)")


def _add_store_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", help="MLflow experiment (default: the data source's name)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                                          "sqlite:///mlflow/mlflow.db)")


def _add_search_options(p: argparse.ArgumentParser) -> None:
    _add_data_options(p)
    p.add_argument("--space", help="search-space YAML file, or auto (the default): a space chosen from the "
                                   "data's shape, images -> 2-D convolutions, signals C,L -> 1-D convolutions, flat "
                                   "vectors -> perceptrons and 1-D convolutions over the features")
    p.add_argument("--strategy", help="search method: random, grid, evolution (Real et al. 2017: tournaments, "
                                      "mutations, weight inheritance), aging-evolution (Real et al. 2019), "
                                      "codeepneat (Miikkulainen et al. 2017), metaqnn (Baker et al. 2017: "
                                      "Q-learning over layers), nas-rl (Zoph and Le 2017: an LSTM controller "
                                      "trained with REINFORCE, one update per --concurrency results), smash "
                                      "(Brock et al. 2018: one hypernetwork scores many networks, the best "
                                      "--trials train), bayes (Gaussian-process Bayesian optimisation, expected "
                                      "improvement), predictor (White et al. 2021: an MLP ensemble predicts accuracy "
                                      "from the encoding, Thompson sampling picks; see --warm-start-predictor) or "
                                      "Optuna's samplers as peers: optuna-tpe, optuna-random, optuna-nsga2 (accuracy "
                                      "and size), genetic-cnn (Xie and Yuille 2017: each stage's connections a "
                                      "binary string, evolved by roulette, crossover and mutation; "
                                      "spaces/genetic-cnn.yaml), pathnet (Fernando et al. 2017: paths through a "
                                      "shared fabric of modules evolved by binary tournaments, --trials rounds; "
                                      "with --init-from an earlier PathNet search, its best path is frozen and "
                                      "reused; spaces/pathnet.yaml) (default: random)")
    p.add_argument("--trials", type=int, help="how many candidates to train (default: 20); with --scheduler, "
                                              "how many runs (each rung of a candidate is one)")
    p.add_argument("--scheduler", choices=["hyperband", "successive-halving"],
                   help="train candidates for a few epochs, continue only the best 1/eta from their checkpoints "
                        "(Li et al. 2018); the strategy picks what to try. --strategy bayes makes it BOHB-like")
    p.add_argument("--min-epochs", type=int, help="the scheduler's shortest rung in epochs (default: 1); "
                                                  "--epochs is the longest")
    p.add_argument("--eta", type=int, help="the scheduler keeps the best 1/eta of each rung (default: 3)")
    p.add_argument("--population", type=int, help="population size of the evolution strategies (default: 10)")
    p.add_argument("--async", dest="asynchronous", action="store_true", default=None,
                   help="tell each finished trial at once and start the next (keeps a cluster busy; the "
                        "order then depends on timing, and the search run records it so that a re-run or "
                        "resume replays it)")
    p.add_argument("--from-experiment", help="warm-start the strategy from this experiment's best runs, "
                                             "whatever strategy produced them")
    p.add_argument("--top-k", type=int, help="how many runs --from-experiment takes (default: 10)")
    p.add_argument("--controller-lr", type=float,
                   help="nas-rl: the controller's Adam learning rate (default: scaled to --trials so that the "
                        "controller learns within them, 0.01 up to about 200 trials; the paper's 6e-4 "
                        "is for 12,800 networks)")
    p.add_argument("--smash-steps", type=int,
                   help="smash: hypernetwork training steps, one batch of a new network each (default: 12000, "
                        "about 3 minutes on 2 cores)")
    p.add_argument("--smash-candidates", type=int,
                   help="smash: networks scored with generated weights before the best --trials train "
                        "(default: 500)")
    p.add_argument("--warm-start-predictor", action="store_true", default=None,
                   help="predictor (and any strategy that learns from history): first learn from every successful "
                        "run of the store on the same data, whatever experiment and method produced it")
    p.add_argument("--init-from", metavar="RUN_OR_EXPERIMENT",
                   help="transfer: every candidate starts from this run's weights (an experiment: its best run), "
                        "perhaps trained on other data; each tensor whose node and shape match is taken")
    p.add_argument("--epochs", type=int, help="training epochs per candidate (default: 20; 100 on a table of under 1000 "
                                                 "rows, where an epoch is a few optimiser steps)")
    p.add_argument("--optimizer", help="train every candidate with this optimizer instead of the space's choice: "
                                       "sgd, adam, adamw, or learned:RUN_ID, an LSTM optimiser of `nas meta-train`")
    p.add_argument("--seed", type=int, help="seed of the strategy and of training (default: 0)")
    p.add_argument("--concurrency", type=int, help="candidates trained at once (default: 2 on a CPU; on a GPU as "
                                                   "many as its free memory holds, at most 32)")
    p.add_argument("--workers", dest="dask_workers", type=int,
                   help="train trials on a local Dask cluster of N worker processes on loopback, started for "
                        "this command and stopped after it (default: threads of this process)")
    p.add_argument("--cluster", help="train trials on the workers of a running Dask cluster, by its scheduler's "
                                     "address, e.g. tcp://10.0.0.5:8786; --concurrency defaults to its worker "
                                     "threads, or to its GPUs where workers declare them (--resources GPU=1), one "
                                     "trial per GPU (README: a cluster)")
    p.add_argument("--max-seconds", type=float, help="per-trial time limit in seconds (default: 120)")
    p.add_argument("--max-params", type=int, help="reject networks with more parameters (default: the space's)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="training device (default: cuda when available)")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false", default=None,
                   help="train eagerly on CUDA instead of replaying each step as a CUDA graph (slower; to rule "
                        "the graphs out when a network misbehaves on the GPU only)")
    p.add_argument("--cv", type=int, help="score each trial by stratified K-fold cross-validation over train+val "
                                          "(default: 5 folds below 1000 rows, else the hold-out validation split; "
                                          "1 forces hold-out)")
    p.add_argument("--report-test", action="store_true", default=None,
                   help="measure every trial on the test split too (for benchmarks); by default only `nas "
                        "evaluate` reads it, once")
    p.add_argument("--plots-dir", default="plots", help="CSV files for `dvc plots` (default: plots)")
    _add_store_options(p)


def _add_benchmark_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--benchmark", metavar="TABLE",
                   help="answer trials by lookup in a table built by `nas bench build` (e.g. "
                        "bench/mnist1d.parquet) instead of training: the space, data and epochs are the table's, "
                        "nothing is recorded in MLflow, and a thousand trials take seconds")


def _add_pipeline_options(p: argparse.ArgumentParser) -> None:
    """What a search through to a registered model takes: the search's options, refinement's, the model's name."""
    _add_search_options(p)
    _add_refine_options(p, prefix="refine-")
    p.add_argument("--model-name", help="Model Registry name (default: params.yaml evaluate.model_name, else "
                                        "nas-<experiment>)")


def _add_refine_options(p: argparse.ArgumentParser, prefix: str = "") -> None:
    p.add_argument(f"--{prefix}method", dest="refine_method", choices=["grid", "bayes"],
                   help="how to search the training settings (default: grid)")
    p.add_argument(f"--{prefix}top-k", dest="refine_top_k", type=int,
                   help="how many of the search's best architectures to refine (default: 2)")
    p.add_argument(f"--{prefix}trials", dest="refine_trials", type=int,
                   help="training settings tried per architecture (default: 4)")
    p.add_argument(f"--{prefix}ensemble", dest="refine_ensemble", type=int,
                   help="seeds of the winner trained on train+val and averaged as the final model (default: 3; "
                        "1: one network)")
    p.add_argument(f"--{prefix}batched", dest="refine_batched", action="store_true", default=None,
                   help="train a round's settings that share batch size and epochs as one vmapped network; "
                        "faster only when more settings share a shape than --concurrency trains at once")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nas", description="Search neural architectures and their hyper-parameters; every trial is "
        "an MLflow run, every step a cached Prefect task.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", help="defaults file (default: ./params.yaml where it exists, else built-in "
                        "defaults); a file named here must exist")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prepare", help="split a data source into train/val/test Parquet files",
                       description="Check a data source and write stratified, standardised train/val/test "
                       "Parquet splits plus meta.json (shape, classes, counts, fingerprint).")
    _add_data_options(p)

    p = sub.add_parser("search", help="run an architecture search (a Prefect flow)",
                       description="Search the space with a strategy; each trial trains a network and is "
                       "logged as an MLflow run nested under one run for the search. Re-running the same "
                       "command retrains nothing that already finished.")
    _add_search_options(p)
    _add_benchmark_option(p)
    p.add_argument("--metrics-out", default="metrics/search.json", help="summary JSON for DVC "
                                                                       "(default: metrics/search.json)")

    p = sub.add_parser("refine", help="tune the training settings of a search's best architectures",
                       description="Take the top-k architectures of a search, search their learning rate, weight "
                       "decay, batch size and epochs (params.yaml `refine`), train the winner on train+val with a few "
                       "seeds and log their average as an MLflow model. Runs are children of each architecture's "
                       "search run.")
    _add_data_options(p)
    p.add_argument("--search-run", help="the search to refine (default: --from-summary, else the experiment's "
                                        "latest search)")
    p.add_argument("--from-summary", help="a search summary JSON (nas search --metrics-out) naming the search")
    _add_refine_options(p)
    p.add_argument("--seed", type=int, help="seed of the refinement search and training (default: 0)")
    p.add_argument("--concurrency", type=int, help="settings trained at once (default: 2 on a CPU; on a GPU as "
                                                   "many as its free memory holds, at most 32)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="training device (default: cuda when available)")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false", default=None,
                   help="train eagerly on CUDA instead of replaying each step as a CUDA graph (slower; to rule "
                        "the graphs out when a network misbehaves on the GPU only)")
    p.add_argument("--metrics-out", default="metrics/refine.json", help="summary JSON (default: metrics/refine.json)")
    _add_store_options(p)

    p = sub.add_parser("evaluate", help="measure the refined model on the test split and register it",
                       description="Load the refined model with mlflow.pyfunc.load_model, measure its test accuracy "
                       "(the only look at the test split), and register it in the MLflow Model Registry.")
    p.add_argument("--from-summary", default="metrics/refine.json",
                   help="the refine summary JSON (default: metrics/refine.json)")
    p.add_argument("--model-name", help="Model Registry name (default: params.yaml evaluate.model_name, else "
                                        "nas-<experiment>)")
    p.add_argument("--metrics-out", default="metrics/final.json", help="result JSON (default: metrics/final.json)")

    p = sub.add_parser("pipeline", help="prepare, search, refine, evaluate and register in one flow",
                       description="The whole pipeline, as `make run` runs it: every step a cached Prefect task or "
                       "subflow. Writes metrics/search.json, metrics/refine.json, metrics/final.json and the "
                       "plots CSVs.")
    _add_pipeline_options(p)

    p = sub.add_parser("serve", help="serve a scheduled search: a Prefect deployment on a cron or interval schedule",
                       description="Register the deployment nas-scheduled-search/NAME on the Prefect server that "
                       "PREFECT_API_URL names (`nas server` starts one) and run its flow runs as they come due, until "
                       "Ctrl-C (which pauses the schedule). Each run continues the experiment with --more-trials "
                       "trials (those already in the store come back without training), then refines and registers "
                       "the winner if the search beat the store's best.")
    _add_pipeline_options(p)
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--every", type=float, metavar="SECONDS", help="run every SECONDS seconds, e.g. 86400")
    when.add_argument("--cron", help='run on a cron schedule, e.g. "0 2 * * *" for 02:00 every night')
    p.add_argument("--more-trials", type=int, default=50, help="trials each run adds to the experiment (default: 50)")
    p.add_argument("--name", help="the deployment's name (default: the experiment's)")

    p = sub.add_parser("report", help="draw a search's trajectory and Pareto front to PNGs",
                       description="Best-so-far validation accuracy over trials, and accuracy against parameter "
                       "count with the Pareto front marked; both PNGs are also logged to the search's run.")
    p.add_argument("experiment", metavar="EXPERIMENT")
    p.add_argument("--search-run", help="which search (default: the experiment's latest)")
    p.add_argument("--out-dir", default="reports", help="folder for the PNGs (default: reports)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: as for search)")

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

    p = sub.add_parser("server", help="run a Prefect server and an MLflow tracking server for repeated commands",
                       description="Start a Prefect API server and an MLflow tracking server (in front of the same "
                       "store) on 127.0.0.1, print the two exports that point other nas commands at them, and keep "
                       "both until Ctrl-C. Commands then skip starting a temporary Prefect server each time. Logs go "
                       "to PREFECT_HOME (default .prefect).")
    p.add_argument("--prefect-port", type=int, default=4200, help="Prefect API and UI port (default: 4200)")
    p.add_argument("--mlflow-port", type=int, default=5000, help="MLflow tracking server and UI port (default: 5000)")
    p.add_argument("--tracking-uri", help="the store the MLflow server serves: a SQLite file (default: as for search) "
                                          "or a database server such as postgresql://USER@127.0.0.1:5432/mlflow "
                                          "(its password in PGPASSWORD or ~/.pgpass, never on the command line)")

    p = sub.add_parser("bench", help="the tabular benchmark: build it (train a finite space once)",
                       description="`nas bench build` trains every network of a finite space at each fidelity "
                       "(epochs) and seed and writes one Parquet table; `nas search --benchmark TABLE` then answers "
                       "trials by lookup, so a thousand-trial search takes seconds.")
    bench = p.add_subparsers(dest="bench_command", required=True, metavar="ACTION")
    b = bench.add_parser("build", help="train the space's grid and write the table (a Prefect flow; resumable)")
    b.add_argument("--space", default="spaces/bench-mnist1d.yaml", help="a finite space file (default: "
                                                                         "spaces/bench-mnist1d.yaml, 624 networks)")
    b.add_argument("--data", dest="source", default="mnist1d", help="data source (default: mnist1d)")
    b.add_argument("--fidelities", default="4,12", help="epochs at which each network is measured, the largest "
                                                       "spanning the learning-rate schedule (default: 4,12)")
    b.add_argument("--seeds", default="0,1", help="training seeds, comma-separated; scores are averaged over them, "
                                                  "and the seeds a table at --out already holds are kept, not "
                                                  "trained again (default: 0,1)")
    b.add_argument("--out", default="bench/mnist1d.parquet", help="the table (default: bench/mnist1d.parquet)")

    p = sub.add_parser("predictor", help="the performance predictor: fit it on the store's trials",
                       description="`nas predictor fit` fits the predictor of --strategy predictor (an ensemble of "
                       "small MLPs on the space's encoding, as in BANANAS) on an experiment's successful trials, or "
                       "with --everywhere on every trial of the store on the same data, whatever method produced "
                       "it; it logs the model as a run of kind predictor with its held-out Kendall tau.")
    predictor = p.add_subparsers(dest="predictor_command", required=True, metavar="ACTION")
    f = predictor.add_parser("fit", help="fit on the store's trials and log the model with its held-out tau")
    _add_store_options(f)
    f.add_argument("--everywhere", action="store_true",
                   help="learn from every experiment's trials on the experiment's data, not its own alone")
    f.add_argument("--seed", type=int, default=0, help="seed of the fit and of the held-out split (default: 0)")

    p = sub.add_parser("meta-train", help="train an LSTM optimiser that searches can use (learning to learn)",
                       description="Learning to learn (Andrychowicz et al. 2016): a coordinatewise two-layer LSTM "
                       "learns to optimise small MLPs on subsets of a data set, by truncated back-propagation "
                       "through their unrolled training (a Prefect flow). It is logged as an MLflow run; a search "
                       "uses it with --optimizer learned:RUN_ID or `optimizer: [adam, learned:RUN_ID]` in a space "
                       "file's hparams. The same settings find the finished run instead of training again, and "
                       "continue an interrupted one (Ctrl-C, kill -9) from its last checkpoint.")
    p.add_argument("--data", dest="source", choices=["mnist1d", "digits"], default="mnist1d",
                   help="data set the training tasks draw their rows from (default: mnist1d)")
    p.add_argument("--tasks", type=int, default=10, help="training tasks, each a row subset and an initialisation "
                                                         "(default: 10)")
    p.add_argument("--iterations", type=int, default=200, help="meta-iterations (default: 200)")
    p.add_argument("--unroll", type=int, default=5, help="optimisee steps per truncation (default: 5)")
    p.add_argument("--horizon", type=int, default=100, help="optimisee steps per meta-iteration, a multiple of "
                                                            "--unroll (default: 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of meta-training (default: 0)")
    p.add_argument("--experiment", default="learned-optimizers",
                   help="MLflow experiment of the run (default: learned-optimizers)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: as for search)")

    p = sub.add_parser("gc", help="purge deleted runs for good",
                       description="A trial attempt whose process died is tagged abandoned and deleted (its "
                       "files at once); this removes such runs from the database too, with `mlflow gc`.")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: as for search)")
    return parser


def cmd_prepare(args: argparse.Namespace) -> int:
    from nas.data import prepare

    data = _search_config(args).data
    out = data.resolved_dir(Path.cwd())
    meta = prepare(data.source, out, label_column=data.label_column, shape=data.shape, seed=data.split_seed)
    print(f"prepared {meta.name}: shape {meta.shape}, {len(meta.classes)} classes, "
          f"train/val/test {meta.counts['train']}/{meta.counts['val']}/{meta.counts['test']}, "
          f"fingerprint {meta.fingerprint} -> {out}")
    return 0


def _search_config(args: argparse.Namespace):
    """params.yaml's search configuration with the options this command was given."""
    from dataclasses import fields

    from nas.config import DataConfig, SearchConfig, load_params
    from nas.data import parse_shape

    # Every configuration field the command has an option for (the data source's is --data).
    names = [f.name for f in fields(SearchConfig) + fields(DataConfig) if f.name not in ("data", "shape")]
    options = {name: getattr(args, name, None) for name in names}
    shape = getattr(args, "shape", None)
    return load_params(args.params).override(shape=parse_shape(shape) if shape else None, **options)


def _store(args: argparse.Namespace):
    """The lineage store this command's options (or params.yaml) name."""
    from nas.lineage import LineageStore

    config = _search_config(args)
    return LineageStore(config.tracking_uri, config.experiment_name)


def _refine_config(args: argparse.Namespace):
    from dataclasses import replace

    from nas.config import load_refine_params

    given = dict(method=getattr(args, "refine_method", None), top_k=getattr(args, "refine_top_k", None),
                 trials=getattr(args, "refine_trials", None), batched=getattr(args, "refine_batched", None),
                 ensemble=getattr(args, "refine_ensemble", None))
    return replace(load_refine_params(args.params), **{k: v for k, v in given.items() if v is not None})


def _model_name(args: argparse.Namespace) -> str | None:
    from nas.config import load_model_name

    return args.model_name or load_model_name(args.params)


def _write_json(path: str | Path, value: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def _report_search(summary: dict, plots_dir: str) -> None:
    from nas.lineage import LineageStore
    from nas.reports import write_plot_data

    store = LineageStore(summary["tracking_uri"], summary["experiment"])
    write_plot_data(store.trials_of(summary["parent_run_id"]), plots_dir)
    _print_leaderboard(store, 5)
    if summary.get("best_run_id"):
        test = summary.get("best_test_acc")  # measured by `nas evaluate`, or by trials under --report-test
        print(f"\nbest: run {summary['best_run_id']} (architecture {summary['best_arch_id']}): "
              f"val {summary['best_val_acc']:.4f}" + ("" if test is None else f", test {test:.4f}") +
              f", {summary['best_params']:,} parameters")
    else:
        print("\nno trial finished successfully; see the reasons above or with `nas runs`.")


def cmd_search(args: argparse.Namespace) -> int:
    from flows.search import run_search

    config = _search_config(args)
    if args.benchmark:
        return _benchmark_search(args, config)
    summary = run_search(config)
    if summary["trials"] < config.trials:
        print(f"stopped after {summary['trials']} of {config.trials} trials: {summary['stop_reason']}")
    _write_json(args.metrics_out, summary)
    _report_search(summary, args.plots_dir)
    print(f"browse: nas ui    (experiment '{summary['experiment']}', search run {summary['parent_run_id']})")
    return 0


def _benchmark_search(args: argparse.Namespace, config) -> int:
    import time

    from nas.benchmark import BenchmarkTable

    table = BenchmarkTable(args.benchmark)
    started = time.perf_counter()
    outcome = table.search(config.strategy, seed=config.seed, trials=config.trials, concurrency=config.workers,
                           asynchronous=config.asynchronous, population=config.population,
                           scheduler=config.scheduler, min_epochs=config.min_epochs, eta=config.eta,
                           controller_lr=config.controller_lr)
    found = outcome.evaluations
    best = max((e for e in found if e.ok), key=lambda e: e.rank_key, default=None)
    summary = {"benchmark": args.benchmark, "strategy": config.strategy, "seed": config.seed, "trials": len(found),
               "failed": sum(not e.ok for e in found), "stop_reason": outcome.stop_reason,
               "simulated_seconds": sum(e.seconds for e in found),
               "wall_seconds": time.perf_counter() - started, "best_possible_test_acc": table.best()}
    if best is not None:
        summary.update(best_arch_id=best.arch_id, best_val_acc=best.val_acc, best_test_acc=table.score_of(best),
                       regret=table.regret_curve(found, seed=config.seed)[-1], regret_floor=table.floor(config.seed))
    _write_json(args.metrics_out, summary)
    print(f"{config.strategy} on {args.benchmark}: {len(found)} lookups in {summary['wall_seconds']:.1f} s "
          f"(training them took {summary['simulated_seconds']:.0f} s); {outcome.stop_reason}")
    if best is not None:
        print(f"best by validation: {best.arch_id} val {best.val_acc:.4f}, test {summary['best_test_acc']:.4f} "
              f"averaged over the table's {len(table.meta.seeds)} seeds (the table's best "
              f"{summary['best_possible_test_acc']:.4f}: regret {summary['regret']:.4f}; a search that found "
              f"its validation optimum would have {summary['regret_floor']:.4f})")
    return 0


def _search_run(args: argparse.Namespace, store) -> str:
    from nas.config import ConfigError

    if args.search_run:
        return args.search_run
    if args.from_summary:
        try:
            return json.loads(Path(args.from_summary).read_text())["parent_run_id"]
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"cannot read the search run from {args.from_summary} ({exc}); pass the JSON that "
                              "`nas search --metrics-out` wrote, or --search-run RUN_ID.") from None
    latest = store.latest_search()
    if latest is None:
        raise ConfigError(f"experiment '{store.experiment}' has no search to refine; run `nas search` first.")
    return latest


def _print_refined(refined: dict) -> None:
    print(f"refined {refined['refined_architectures']} architectures with {refined['refine_trials']} settings; "
          f"winner {refined['arch_id']} (val {refined['winner_val_acc']:.4f}) with {refined['hparams']}, "
          f"trained on train+val as run{'s' * (len(refined['final_run_ids']) > 1)} "
          f"{', '.join(refined['final_run_ids'])}")


def _print_final(final: dict) -> None:
    print(f"test accuracy {final['test_acc']:.4f} on {final['test_examples']} examples; registered as "
          f"{final['registered_uri']}, alias {final['champion_uri']} (load it with mlflow.pyfunc.load_model)")


def cmd_refine(args: argparse.Namespace) -> int:
    from flows.refine import run_refine
    from nas.config import SearchConfig

    store = _store(args)
    search_run = _search_run(args, store)
    # The search's own data, space and seed, so the architectures are refined where they were found.
    recorded = SearchConfig.from_json(store.search_config(search_run))
    config = recorded.override(tracking_uri=store.tracking_uri, concurrency=args.concurrency, device=args.device,
                               cuda_graphs=args.cuda_graphs, data_dir=args.data_dir)
    refined = run_refine(config, _refine_config(args), search_run)
    _write_json(args.metrics_out, refined)
    _print_refined(refined)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from flows.pipeline import evaluate
    from nas.config import ConfigError

    try:
        refined = json.loads(Path(args.from_summary).read_text())
        missing = sorted({"model_uri", "final_run_id", "data_dir", "tracking_uri", "experiment"} - set(refined))
        if missing:
            raise ValueError(f"it lacks {missing}")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the refine summary {args.from_summary} ({exc}); run `nas refine` first, "
                          "or pass --from-summary with the JSON it wrote.") from None
    final = evaluate(refined, _model_name(args))
    _write_json(args.metrics_out, final)
    _print_final(final)
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from flows.pipeline import run_pipeline

    result = run_pipeline(_search_config(args), _refine_config(args), _model_name(args))
    for name in ("search", "refine", "final"):
        _write_json(Path("metrics") / f"{name}.json", result[name])
    _report_search(result["search"], args.plots_dir)
    _print_refined(result["refine"])
    _print_final(result["final"])
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from nas.reports import pareto_plot, trajectory_plot

    store = _store(args)
    search = args.search_run or store.latest_search()
    if search is None:
        print(f"experiment '{args.experiment}' has no search yet; run `nas search --experiment {args.experiment}`.")
        return 1
    history = store.trials_of(search)
    title = f"{args.experiment}: search {search[:8]}, {len(history)} trials"
    out = Path(args.out_dir)
    paths = [trajectory_plot(history, out / f"trajectory-{args.experiment}.png", title),
             pareto_plot(history, out / f"pareto-{args.experiment}.png", title)]
    for path in paths:
        store.log_file(search, path)
    print(f"{len(history)} trials -> " + ", ".join(map(str, paths)) + f" (logged to run {search})")
    return 0


def _print_leaderboard(store, limit: int) -> None:
    rows = store.leaderboard(limit)
    if not rows:
        print(f"no finished trials in experiment '{store.experiment}' yet; run `nas search`.")
        return
    print(f"{'rank':>4}  {'run id':<32}  {'architecture':<16}  {'val':>6}  {'test':>6}  {'params':>9}  "
          f"{'secs':>6}  {'strategy':<16}  Prefect flow run")
    for rank, row in enumerate(rows, start=1):
        test = "-" if row["test_acc"] is None else f"{row['test_acc']:.4f}"  # refinement leaves test alone
        print(f"{rank:>4}  {row['run_id']:<32}  {row['arch_id']:<16}  {row['val_acc']:>6.4f}  "
              f"{test:>6}  {int(row['params']):>9,}  {row['seconds']:>6.1f}  {row['strategy']:<16}  "
              f"{row['flow_run'] or '-'}")


def cmd_runs(args: argparse.Namespace) -> int:
    _print_leaderboard(_store(args), args.limit)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    summary = _store(args).run_summary(args.run_id)
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
        arch = Architecture.from_json(summary["architecture"]["arch"])
        print("\narchitecture:")
        print("\n".join(arch.describe()))
        for node in arch.nodes:
            if node.op == "cell":
                from nas.reports import draw_cell
                from nas.space.cell import cell_spec

                spec = cell_spec(node.attr_dict)
                path = Path(f"cell-{summary['run_id'][:8]}.png")
                path.write_bytes(draw_cell(spec))
                print(f"\ncell: {spec.describe()}\n  drawn -> {path}")
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from nas.reports import family_tree

    store = _store(args)
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
    command = _store(args).ui_command()
    command[command.index("--port") + 1] = str(args.port)
    print(f"MLflow UI on http://127.0.0.1:{args.port}  (Ctrl-C stops it)")
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # GenAI job workers: none needed here
    os.execvp(command[0], command)
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    from nas.lineage import ARTIFACTS_DIR, DEFAULT_STORE_DIR
    from nas.servers import client_exports, serve, server_secret, services

    store = _store(args)
    if store.artifact_dir is not None:  # a SQLite file: migrate it once, before a server and a client race for it
        store.ensure()
    # A database server (PostgreSQL) is migrated by the MLflow server itself; artifacts go where they would
    # beside a SQLite store, and clients send them through the server.
    artifacts = store.artifact_dir or Path.cwd() / DEFAULT_STORE_DIR / ARTIFACTS_DIR
    home = Path(os.environ["PREFECT_HOME"])
    secret = server_secret(home)
    wanted = services(store.tracking_uri, artifacts, args.prefect_port, args.mlflow_port, home, secret)
    # Clients reach the database through the server only, so the lookups' indexes are made here, on its tables.
    return serve(wanted, client_exports(args.prefect_port, args.mlflow_port, secret), on_ready=store.add_indexes)


def cmd_serve(args: argparse.Namespace) -> int:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from flows.schedule import SERVED_PARAMETERS, scheduled_search, served_digest
    from flows.search import checked
    from nas.config import ConfigError

    if args.more_trials < 1 or (args.every is not None and not args.every > 0):
        raise ConfigError("--more-trials and --every must be positive: each run adds trials, every so many seconds.")
    if not PREFECT_API_URL.value():
        raise ConfigError("a schedule needs a Prefect server that outlives this command, and PREFECT_API_URL is not "
                          "set: run `nas server` in another terminal, export the two lines it prints, then run "
                          "`nas serve` again.")
    with get_client(sync_client=True) as client:
        if (problem := client.api_healthcheck()) is not None:
            raise ConfigError(f"no Prefect server answers at PREFECT_API_URL={PREFECT_API_URL.value()} ({problem}); "
                              "start it (`nas server` prints the address to export) or correct the variable.")
    config = checked(_search_config(args))
    name = args.name or config.experiment_name
    print(f"serving nas-scheduled-search/{name}: {args.more_trials} more trials of {config.strategy} on "
          f"'{config.experiment_name}' " + (f"every {args.every:g} s" if args.every else f"at cron '{args.cron}'")
          + "; Ctrl-C stops serving and pauses the schedule")
    # limit=1: a firing continues from the one before, so a late firing waits rather than overlapping it.
    parameters = {"config": config.to_json(), "refine_config": _refine_config(args).to_json(),
                  "model_name": _model_name(args), "more_trials": args.more_trials}
    os.environ[SERVED_PARAMETERS] = served_digest(parameters)  # the flow runs this process starts refuse others
    scheduled_search.serve(name=name, interval=args.every, cron=args.cron, limit=1,
                           tags=["nas", config.experiment_name], parameters=parameters)
    return 0


def _int_list(text: str, option: str) -> list[int]:
    from nas.config import ConfigError

    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise ConfigError(f"{option} takes comma-separated whole numbers such as 4,12; got '{text}'.")
    return values


def cmd_bench(args: argparse.Namespace) -> int:
    from flows.bench import build_benchmark
    from nas.config import ConfigError
    from nas.space import SearchSpace

    fidelities, seeds = _int_list(args.fidelities, "--fidelities"), _int_list(args.seeds, "--seeds")
    if min(fidelities) < 1:
        raise ConfigError(f"--fidelities are epochs, each at least 1; got '{args.fidelities}'.")
    SearchSpace.load(args.space)  # a malformed file is a one-paragraph error here, not a flow failure
    summary = build_benchmark(args.space, args.source, args.out, fidelities, seeds)
    print(f"{summary['table']}: {summary['networks']} networks, {summary['rows']} rows, best test accuracy "
          f"{summary['best_test_acc']:.4f}, {summary['train_seconds']:.0f} s of training")
    return 0


def cmd_predictor(args: argparse.Namespace) -> int:
    import numpy as np

    from nas.api import bound_space
    from nas.config import ConfigError, SearchConfig
    from nas.data import prepare
    from nas.predictor import Predictor, held_out_tau
    from nas.strategies.predictor import PredictorSearch
    from nas.trial import Budget

    store = _store(args)
    search_run = store.latest_search()
    if search_run is None:
        raise ConfigError(f"experiment '{store.experiment}' has no search to learn from; run `nas search` first, or "
                          "name another with --experiment.")
    config = SearchConfig.from_json(store.search_config(search_run))  # its space and data, as the search had them
    data = config.data
    meta = prepare(data.source, data.resolved_dir(Path.cwd()), label_column=data.label_column, shape=data.shape,
                   seed=data.split_seed)
    learner = PredictorSearch(bound_space(config, meta), Budget(config.epochs), initial=2)
    learner.warm_start(store.trained_on(meta.fingerprint) if args.everywhere else store.history())
    usable, x = learner.training_set()  # exactly what a predictor-guided search would learn from
    if len(usable) < 10:
        raise ConfigError(f"only {len(usable)} successful trials of the space {Path(config.space).name} to learn "
                          "from (at least 10 are needed to hold 30% out); run more trials first, or add "
                          "--everywhere to learn from the whole store's.")
    y = np.array([e.val_acc for e in usable])
    tau = held_out_tau(x, y, seed=args.seed)
    model = Predictor.fit(x, y, seed=args.seed)
    run_id = store.log_predictor(model.to_bytes(), {"kendall_tau": tau, "pairs": len(usable)}, {
        "nas.data_fp": meta.fingerprint, "nas.space": Path(config.space).name,
        "nas.predictor.learned_from": "store" if args.everywhere else store.experiment})
    print(f"predictor fitted on {len(usable)} trials ({learner.skipped} of other spaces skipped); Kendall tau on "
          f"a held-out 30%: {tau:.3f}; logged as run {run_id} of experiment '{store.experiment}'")
    return 0


def cmd_meta_train(args: argparse.Namespace) -> int:
    from flows.meta_train import meta_train_flow
    from nas.config import ConfigError
    from nas.meta_train import MetaTrainSettings

    try:
        settings = MetaTrainSettings(source=args.source, tasks=args.tasks, iterations=args.iterations,
                                     unroll=args.unroll, horizon=args.horizon, seed=args.seed)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    result = meta_train_flow(settings.to_json(), _search_config(args).tracking_uri, args.experiment)
    print(f"learned optimiser {'trained' if result['trained'] else 'already trained'}: run {result['run_id']} of "
          f"experiment '{args.experiment}'; use it with --optimizer {result['optimizer']}")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    return subprocess.run(_store(args).gc_command()).returncode


COMMANDS = {"prepare": cmd_prepare, "search": cmd_search, "refine": cmd_refine, "evaluate": cmd_evaluate,
            "pipeline": cmd_pipeline, "report": cmd_report, "runs": cmd_runs, "show": cmd_show,
            "lineage": cmd_lineage, "ui": cmd_ui, "server": cmd_server, "serve": cmd_serve, "bench": cmd_bench,
            "predictor": cmd_predictor, "meta-train": cmd_meta_train, "gc": cmd_gc}


class _WithoutTraceback(logging.Filter):
    """Drops the traceback from log records of the given exception types."""

    def __init__(self, errors: tuple[type[Exception], ...]) -> None:
        super().__init__()
        self.errors = errors

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], self.errors):
            record.exc_info, record.exc_text = None, None
        return True


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_environment(Path.cwd())
    from nas.servers import end_children_at_death

    end_children_at_death()  # no temporary Prefect server outlives a command killed with kill -9
    from nas.config import ConfigError
    from nas.data import DataError
    from nas.space import ArchitectureError, SpaceError
    from nas.secrets import redact
    from nas.trial import TrialInterrupted

    user_errors: tuple[type[Exception], ...] = (ConfigError, DataError, SpaceError, ArchitectureError)
    if args.command != "prepare":  # every other command talks to MLflow anyway
        from nas.lineage import LineageError

        user_errors += (LineageError,)
    # A user error raised inside a flow: Prefect logs it with its traceback as the flow fails;
    # the message alone is what the user needs (and this function prints it again, last).
    no_traceback = _WithoutTraceback((*user_errors, TrialInterrupted, FloatingPointError))
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(no_traceback)
    try:
        return COMMANDS[args.command](args)
    except user_errors as exc:
        print(f"nas {args.command}: {redact(str(exc))}", file=sys.stderr)
        return 2
    except TrialInterrupted as exc:  # the environment stopped a training the flow cannot do without (the final)
        print(f"nas {args.command}: {exc} Finished trials are saved; run the same command again to resume.",
              file=sys.stderr)
        return 1
    except FloatingPointError as exc:  # a training that diverged; the message says what to change
        print(f"nas {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: finished trials are saved; run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
