"""The meta-training flow (`nas meta-train`): an LSTM optimiser that searches can then use
as `optimizer: learned:<run id>` (see nas.meta_train)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from tasks.meta_train import meta_train_optimizer


@flow(name="nas-meta-train", log_prints=True)
def meta_train_flow(settings: dict[str, Any], tracking_uri: str | None = None,
                    experiment: str = "learned-optimizers") -> dict[str, Any]:
    result = meta_train_optimizer(settings, tracking_uri, experiment)
    get_run_logger().info("%s the learned optimiser %s; use it with `--optimizer %s` or in a space file's "
                          "hparams.optimizer", "trained" if result["trained"] else "found", result["run_id"],
                          result["optimizer"])
    return result
