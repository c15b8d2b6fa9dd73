"""The search flow: prepare the data, then run the ask -> train -> tell loop (`nas.loop`)
with each trial a cached Prefect task, until the trial budget is spent.

Batch-synchronous by default, so a seed fixes the whole search and re-running a killed or
finished search replays it: finished trials come back from the cache. `--async` keeps
every worker busy instead, at the price of that replay.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from tqdm import tqdm

from flows.common import describe, prefect_runner, prepared_data, thread_runner
from nas.build import build
from nas.config import ConfigError, SearchConfig
from nas.data import BUILTINS, DataError, DataMeta, load_split, source_name
from nas.lineage import LineageStore, resolve_tracking_uri
from nas.loop import run_loop
from nas.provenance import provenance_tags
from nas.runner import TrialJob
from nas.space import SearchSpace
from nas.strategies import make_search, strategy_class
from nas.strategies.hyperband import SCHEDULERS
from nas.train import pick_device
from nas.trial import Budget, Evaluation, TrialSetting


def _best(evaluations: list[Evaluation]) -> Evaluation | None:
    # max() keeps the first of equal scores: the earlier run wins ties, as in the leaderboard.
    return max((e for e in evaluations if e.ok), key=lambda e: e.score, default=None)


def _log_best_model(store: LineageStore, parent_run_id: str, best: Evaluation, meta: DataMeta,
                    data_dir: Path) -> None:
    """The winner as an MLflow model on the search's run, loadable with mlflow.pytorch.load_model."""
    model = build(best.candidate.arch, meta.shape, len(meta.classes))
    model.load_state_dict(store.weights(best.run_id))
    model.eval()
    example = load_split(data_dir, "test")[0][:4]
    store.log_model(parent_run_id, model, example, source_run_id=best.run_id)


@flow(name="nas-search", log_prints=True)
def search(config: dict[str, Any]) -> dict[str, Any]:
    cfg = SearchConfig.from_json(config)
    root = Path.cwd()
    logger = get_run_logger()
    # One line per trial comes from this flow; Prefect's per-task lines would only repeat it.
    logging.getLogger("prefect.task_runs").setLevel(logging.WARNING)
    data_dir = cfg.data.resolved_dir(root)
    meta = prepared_data(cfg, data_dir)
    space = (SearchSpace.load(cfg.space).bind(meta.shape, len(meta.classes)).with_hparams(epochs=cfg.epochs))
    tracking_uri = resolve_tracking_uri(cfg.tracking_uri, root)
    store = LineageStore(tracking_uri, cfg.experiment_name, root)
    store.ensure()  # create the database and experiment once, before trial threads race to do it
    context_tags = {"prefect.flow_run_id": str(flow_run.id), **provenance_tags(root)}
    parent = store.start_search(cfg.to_json(), Path(cfg.space), meta.fingerprint, tags=context_tags,
                                identity=cfg.identity())
    strategy = make_search(cfg.strategy, space, Budget(cfg.epochs, cfg.max_seconds), seed=cfg.seed,
                           population=cfg.population, scheduler=cfg.scheduler, min_epochs=cfg.min_epochs, eta=cfg.eta)
    if cfg.from_experiment:
        seeds = LineageStore(tracking_uri, cfg.from_experiment, root).best(cfg.top_k)
        strategy.warm_start(seeds)
        logger.info("warm start: the best %d runs of experiment '%s'", len(seeds), cfg.from_experiment)
    method = f"{cfg.strategy} + {cfg.scheduler}" if cfg.scheduler else cfg.strategy
    logger.info("searching %s with %s: %d trials of up to %d epochs, %d at a time; MLflow run %s in %s",
                meta.name, method, cfg.trials, cfg.epochs, cfg.concurrency, parent, tracking_uri)
    setting = TrialSetting(meta.fingerprint, cfg.seed, pick_device(cfg.device).type,
                           cfg.max_params or space.max_params)
    job = TrialJob(setting, cfg.experiment_name, tracking_uri, parent, cfg.strategy, tags=context_tags)

    told: list[Evaluation] = []
    with tqdm(total=cfg.trials, desc=f"{method} search", unit="trial", dynamic_ncols=True) as bar:
        def on_result(e: Evaluation) -> None:
            told.append(e)
            logger.info("trial %d/%d: %s", len(told), cfg.trials, describe(e))
            bar.update(1)
            if best := _best(told):
                bar.set_postfix(best_val=f"{best.val_acc:.4f}")

        outcome = run_loop(strategy, prefect_runner(job, data_dir, cfg.concurrency), trials=cfg.trials,
                           concurrency=cfg.concurrency, asynchronous=cfg.asynchronous, on_result=on_result)
    evaluations = outcome.evaluations
    if len(evaluations) < cfg.trials:
        logger.warning("stopped after %d of %d trials: %s", len(evaluations), cfg.trials, outcome.stop_reason)

    best = _best(evaluations)  # of this search: a warm start's runs belong to their own experiment
    summary: dict[str, Any] = {
        "experiment": cfg.experiment_name, "parent_run_id": parent, "tracking_uri": tracking_uri,
        "trials": len(evaluations), "failed": sum(not e.ok for e in evaluations),
        "stop_reason": outcome.stop_reason,
    }
    if best is not None:
        summary.update(best_run_id=best.run_id, best_arch_id=best.arch_id, best_val_acc=best.val_acc,
                       best_test_acc=best.test_acc, best_params=best.params)
        if store.model_source(parent) != best.run_id:  # a repeated search keeps its one model
            _log_best_model(store, parent, best, meta, data_dir)
        logger.info("best: %s", describe(best))
    store.finish_search(parent, summary)
    return summary


def preflight(config: SearchConfig) -> None:
    """Reject a malformed space, an unknown strategy or a missing data file before any flow starts."""
    SearchSpace.load(config.space)
    try:
        cls = strategy_class(config.strategy)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if config.scheduler and config.scheduler not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler '{config.scheduler}'; choose one of {list(SCHEDULERS)} with "
                          "--scheduler, or leave it out to train every candidate for --epochs.")
    if config.scheduler and config.min_epochs > config.epochs:
        raise ConfigError(f"--min-epochs {config.min_epochs} exceeds --epochs {config.epochs}: the scheduler's "
                          "first rung must be no longer than its last.")
    if config.population and "population_size" not in inspect.signature(cls).parameters:
        raise ConfigError(f"--population applies to population-based strategies; '{config.strategy}' has none.")
    if config.from_experiment and not LineageStore(config.tracking_uri, config.from_experiment).leaderboard(1):
        raise ConfigError(f"--from-experiment '{config.from_experiment}' has no finished runs in this store; "
                          "check the name with `nas runs --experiment NAME` or `nas ui`.")
    source_name(config.data.source)
    if config.data.source not in BUILTINS and not Path(config.data.source).is_file():
        raise DataError(f"data file {config.data.source} does not exist; --data takes digits, mnist1d, "
                        "or the path of a .parquet or .npz file.")


def run_search(config: SearchConfig) -> dict[str, Any]:
    """Check the inputs, then run the flow with as many trial threads as the configuration asks for."""
    preflight(config)
    return search.with_options(task_runner=thread_runner(config.concurrency))(config.to_json())
