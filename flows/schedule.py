"""Scheduled searches: `nas serve` serves this flow as a Prefect deployment on a cron or
interval schedule, from a long-lived process against a Prefect server.

Each firing continues the experiment: the same search with `more_trials` more trials than the
experiment's latest search, so the trials already in the store come back without training
(the same seed replays them) and only the new ones train. If the best validation accuracy
beat the store's best before the firing, the winner is refined and registered (the
`champion` alias moves); otherwise nothing is registered and the log says so.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from prefect import flow, get_run_logger

from flows.common import trial_runner
from flows.pipeline import evaluate
from flows.refine import refine
from flows.search import search
from nas.config import ConfigError, SearchConfig
from nas.ids import digest
from nas.lineage import LineageStore


# Set by `nas serve` in the serving process, whose flow runs inherit it: the digest of the parameters
# the deployment was created with.
SERVED_PARAMETERS = "NAS_SERVED_PARAMETERS"


def served_digest(parameters: dict[str, Any]) -> str:
    return digest(parameters)


@flow(name="nas-scheduled-search", log_prints=True)
def scheduled_search(config: dict[str, Any], refine_config: dict[str, Any], model_name: str | None = None,
                     more_trials: int = 50) -> dict[str, Any]:
    # A flow run of the deployment can be created with any parameters through the Prefect API; they choose
    # the store, the cluster and the folders this process writes, so only the served ones are run.
    served = os.environ.get(SERVED_PARAMETERS)
    given = {"config": config, "refine_config": refine_config, "model_name": model_name, "more_trials": more_trials}
    if served is not None and served != served_digest(given):
        raise ConfigError("this deployment runs only the parameters `nas serve` created it with; to change them, "
                          "stop `nas serve` and start it again with other options.")
    logger = get_run_logger()
    cfg = SearchConfig.from_json(config)
    store = LineageStore(cfg.tracking_uri, cfg.experiment_name)
    latest = store.latest_search()
    so_far = SearchConfig.from_json(store.search_config(latest)).trials if latest else 0
    before = store.best(1)
    cfg = replace(cfg, trials=so_far + more_trials)
    logger.info("continuing experiment '%s': %d trials so far, %d more", cfg.experiment_name, so_far, more_trials)
    searched = search.with_options(task_runner=trial_runner(cfg))(cfg.to_json())
    if before and searched.get("best_val_acc", 0.0) <= before[0].val_acc:
        logger.info("no improvement on the store's best val %.4f (run %s): nothing refined or registered",
                    before[0].val_acc, before[0].run_id)
        return {"search": searched, "improved": False}
    refined = refine.with_options(task_runner=trial_runner(cfg))(cfg.to_json(), refine_config,
                                                                  searched["parent_run_id"])
    return {"search": searched, "refine": refined, "final": evaluate(refined, model_name), "improved": True}
