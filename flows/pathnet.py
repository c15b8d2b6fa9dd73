"""The PathNet flow (`nas search --strategy pathnet`): one tournament on a shared fabric,
every round recorded as a trial (nas.pathnet_search).

The rounds are not Prefect tasks: each changes the fabric's weights in memory for the next,
which a task's JSON result could not carry. The search run's checkpoints are what make
the flow resumable instead of a task cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from nas.checks import check_pathnet
from nas.config import SearchConfig
from nas.pathnet import RoundRecord
from nas.pathnet_search import run_pathnet
from nas.progress import progress
from nas.provenance import provenance_tags
from nas.trial import Evaluation


@flow(name="nas-pathnet", log_prints=True)
def pathnet_search(config: dict[str, Any]) -> dict[str, Any]:
    cfg = SearchConfig.from_json(config)
    root = Path.cwd()
    logger = get_run_logger()
    logger.info("PathNet on %s: %d tournament rounds%s", cfg.data.source, cfg.trials,
                f", transferring from {cfg.init_from}" if cfg.init_from else "")
    with progress(cfg.trials, "pathnet tournament", "round") as bar:
        def on_round(r: RoundRecord, e: Evaluation) -> None:
            logger.info("round %d/%d: %s beat %s (fitness %.3f vs %.3f), val %.4f, best %.4f (run %s)", r.round + 1,
                        cfg.trials, r.parent.to_sentence(), r.paths[1 - r.winner].to_sentence(), r.fitness[r.winner],
                        r.fitness[1 - r.winner], r.winner_val_acc, r.best_val_acc, e.run_id)
            bar.set_postfix(best_val=f"{r.best_val_acc:.4f}")
            bar.update(r.round + 1 - bar.n)

        summary = run_pathnet(cfg, root, tags={"prefect.flow_run_id": str(flow_run.id), **provenance_tags(root)},
                              on_round=on_round)
    logger.info("best path %s: val %.4f after %d rounds (%d SGD steps); %s", summary["best_path"],
                summary.get("best_val_acc", float("nan")), summary["trials"], summary["steps"], summary["stop_reason"])
    return summary


def run_pathnet_search(config: SearchConfig) -> dict[str, Any]:
    """Check the inputs, then run the flow."""
    checked = check_pathnet(config)
    print(checked.note)
    return pathnet_search(checked.config.to_json())
