"""The search flow: prepare the data, then run a `nas.api.Search` with each trial a cached
Prefect task (the Prefect runner of flows/common.py), until the trial budget is spent.

Batch-synchronous by default, so a seed fixes the whole search and re-running a killed or
finished search replays it: finished trials come back from the cache. `--async` keeps
every worker busy instead, at the price of that replay.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.common import describe, prefect_runner, prepared_data, run_flow
from nas.api import Search
from nas.build import build
from nas.checks import check_search
from nas.config import SearchConfig
from nas.data import DataMeta, load_split
from nas.lineage import LineageStore
from nas.progress import progress
from nas.provenance import provenance_tags
from nas.trial import Evaluation


def _log_best_model(store: LineageStore, parent_run_id: str, best: Evaluation, meta: DataMeta,
                    data_dir: Path) -> None:
    """The winner as an MLflow model on the search's run, loadable with mlflow.pyfunc.load_model."""
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
    current = Search(cfg, root=root, meta=meta,
                     tags={"prefect.flow_run_id": str(flow_run.id), **provenance_tags(root)})
    if cfg.from_experiment:
        logger.info("warm start: the best %d runs of experiment '%s'", current.warm_started, cfg.from_experiment)
    method = f"{cfg.strategy} + {cfg.scheduler}" if cfg.scheduler else cfg.strategy
    logger.info("searching %s with %s: %d trials of up to %d epochs, %d at a time; MLflow run %s in %s",
                meta.name, method, cfg.trials, cfg.epochs, cfg.workers, current.run_id, current.tracking_uri)

    with progress(cfg.trials, f"{method} search", "trial") as bar:
        def on_result(e: Evaluation) -> None:
            logger.info("trial %d/%d: %s", len(current.evaluations), cfg.trials, describe(e))
            if best := current.best_trial:
                bar.set_postfix(best_val=f"{best.val_acc:.4f}")
            bar.update(1)

        outcome = current.optimize(runner=prefect_runner(current.job, data_dir, cfg.workers),
                                   on_result=on_result)
    if len(outcome.evaluations) < cfg.trials:
        logger.warning("stopped after %d of %d trials: %s", len(outcome.evaluations), cfg.trials,
                       outcome.stop_reason)
    summary = current.summary()
    if (best := current.best_trial) is not None:
        if current.store.model_source(current.run_id) != best.run_id:  # a repeated search keeps its one model
            _log_best_model(current.store, current.run_id, best, meta, data_dir)
        logger.info("best: %s", describe(best))
    return summary


def checked(config: SearchConfig) -> SearchConfig:
    """The configuration once its inputs pass every check (nas.checks), its space resolved; says what auto chose."""
    result = check_search(config)
    print(result.note)
    return result.config


def run_search(config: SearchConfig) -> dict[str, Any]:
    """Check the inputs, then run the flow with as many trial threads as the configuration asks for."""
    if config.strategy == "pathnet":  # a tournament of its own on shared weights, not an ask/tell strategy
        from flows.pathnet import run_pathnet_search

        return run_pathnet_search(config)
    config = checked(config)
    return run_flow(search, config, config.to_json())
