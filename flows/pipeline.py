"""From raw data to a registered model: prepare -> search -> refine -> evaluate -> register.

Each step is a cached Prefect task or a subflow of cached tasks, so re-running the
pipeline redoes only what changed. `evaluate` loads the final model exactly as a user
would (mlflow.pyfunc.load_model) and measures the test split, the only time the
pipeline looks at it; `register` then files that model in the MLflow Model Registry with
its lineage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.common import prefect_api_for_workers, trial_runner
from flows.refine import refine
from flows.search import checked, search
from nas.config import RefineConfig, SearchConfig
from nas.provenance import provenance_tags
from tasks.evaluate import evaluate_model, register_model


@flow(name="nas-evaluate", log_prints=True)
def evaluate(refined: dict[str, Any], model_name: str | None = None) -> dict[str, Any]:
    """Measure the refined model (the refine flow's summary) on the test split, then register it."""
    where = dict(tracking_uri=refined["tracking_uri"], experiment=refined["experiment"])
    measured = evaluate_model(refined["model_uri"], refined["final_run_id"], data_dir=refined["data_dir"], **where)
    lineage = {"nas.arch_id": refined["arch_id"], "nas.search_run": refined["search_run_id"],
               "nas.arch_run": refined["winner_run_id"], "nas.hparams": json.dumps(refined["hparams"]),
               "nas.test_acc": f"{measured['test_acc']:.6f}", **provenance_tags(Path.cwd())}
    registered = register_model(refined["model_uri"], model_name or f"nas-{refined['experiment']}",
                                refined["final_run_id"], tags=lineage, **where)
    get_run_logger().info("test accuracy %.4f on %d examples; registered as %s", measured["test_acc"],
                          measured["test_examples"], registered["registered_uri"])
    return {**measured, **registered, "final_run_id": refined["final_run_id"], "arch_id": refined["arch_id"],
            "experiment": refined["experiment"], "model_uri": refined["model_uri"]}


@flow(name="nas-pipeline", log_prints=True)
def pipeline(config: dict[str, Any], refine_config: dict[str, Any], model_name: str | None = None) -> dict[str, Any]:
    cfg = SearchConfig.from_json(config)
    searched = search.with_options(task_runner=trial_runner(cfg))(config)
    refined = refine.with_options(task_runner=trial_runner(cfg))(config, refine_config, searched["parent_run_id"])
    final = evaluate(refined, model_name)
    return {"search": searched, "refine": refined, "final": final}


def run_pipeline(config: SearchConfig, refine_config: RefineConfig, model_name: str | None = None) -> dict[str, Any]:
    config = checked(config)
    with prefect_api_for_workers(config):  # the subflows run their tasks where the configuration says
        return pipeline(config.to_json(), refine_config.to_json(), model_name)
