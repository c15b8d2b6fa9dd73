"""Prefect task: meta-train the LSTM optimiser and record it as a run (nas.meta_train)."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from nas.lineage import LineageStore
from nas.meta_train import LOG_EVERY, MetaTrainSettings, learned_optimizer_run
from nas.threads import using_threads


@task(name="meta-train", retries=0)
def meta_train_optimizer(settings: dict[str, Any], tracking_uri: str | None, experiment: str) -> dict[str, Any]:
    # The store is the cache: the same settings find their finished run (see learned_optimizer_run).
    logger = get_run_logger()
    meta = MetaTrainSettings(**{**settings, "hidden": tuple(settings["hidden"])})

    first = True

    def progress(iteration: int, loss: float) -> None:
        nonlocal first
        if first and iteration > 0:
            logger.info("an interrupted meta-training of these settings continues from its checkpoint at iteration "
                        "%d", iteration)
        first = False
        if (iteration + 1) % (LOG_EVERY * 5) == 0:
            logger.info("meta-iteration %d/%d: meta-loss %.4f", iteration + 1, meta.iterations, loss)

    with using_threads(1):  # the optimisees are tiny: a second thread costs more in contention than it computes
        run_id, trained = learned_optimizer_run(LineageStore(tracking_uri, experiment), meta, progress)
    return {"run_id": run_id, "trained": trained, "optimizer": f"learned:{run_id}"}
