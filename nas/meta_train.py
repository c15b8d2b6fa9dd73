"""Meta-training recorded in the lineage store: one run of kind `learned-optimizer` per setting.

`nas meta-train` (flows/meta_train.py) trains the LSTM optimiser of `nas.learned_opt` on a
family of small tasks and logs it as a run: its settings as params, the meta-loss as a
metric per iteration, the optimiser as `LEARNED_OPTIMIZER_FILE`. A space file (or
`--optimizer`) then names it as `learned:<run id>`, and every trial that uses it reads it
from the store (`nas.runner.learned_optimizer`), so the trial key holds the run id.

The same settings give the same run: a repeated command finds the finished one and
trains nothing. A meta-training killed (kill -9) or interrupted (Ctrl-C) leaves its run
unfinished with a checkpoint every LOG_EVERY iterations; the next attempt continues that
run from it and ends with the same optimiser as an uninterrupted one.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from nas.ids import digest
from nas.learned_opt import meta_train, task_family, to_bytes
from nas.lineage import KIND_LEARNED_OPTIMIZER, LEARNED_OPTIMIZER_FILE, LineageStore

LOG_EVERY = 10  # meta-iterations between logged meta-loss points (the mean over them) and checkpoints
VALIDATION_SEEDS = 1000  # validation task i has seed VALIDATION_SEEDS + i: never a training task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetaTrainSettings:
    """What the learned optimiser is trained on and how: the task family, then truncated BPTT."""

    source: str = "mnist1d"  # the data set the family's tasks draw their rows from (mnist1d or digits)
    tasks: int = 10  # training tasks: seeds 0..tasks-1 of the family (held-out tasks use other seeds)
    rows: int = 512  # rows per task
    hidden: tuple[int, ...] = (20,)  # the tasks' MLP hidden layers
    iterations: int = 200  # meta-iterations, each `batch` fresh optimisees trained for `horizon` steps
    unroll: int = 5  # steps per truncation of back-propagation through the optimisation
    horizon: int = 100  # optimisee steps per meta-iteration
    meta_lr: float = 1e-3  # Adam's learning rate on the optimiser's weights, annealed to 0
    batch: int = 2  # optimisees per meta-gradient
    validation: int = 5  # held-out tasks that pick the best optimiser seen (the paper's early stopping)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.source not in ("mnist1d", "digits"):
            raise ValueError(f"meta-training draws its tasks from mnist1d or digits, not '{self.source}'.")
        for name in ("tasks", "rows", "iterations", "unroll", "horizon", "batch"):
            if not (type(getattr(self, name)) is int and getattr(self, name) >= 1):
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer.")
        if self.horizon % self.unroll:
            raise ValueError(f"horizon={self.horizon} must be a multiple of unroll={self.unroll}, so every "
                             "truncation is as long as the others.")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "hidden": list(self.hidden)}

    @property
    def key(self) -> str:
        return digest({"learned-optimizer": self.to_json()})


def learned_optimizer_run(store: LineageStore, settings: MetaTrainSettings,
                          on_iteration: Callable[[int, float], None] | None = None) -> tuple[str, bool]:
    """The run id of the optimiser meta-trained with `settings`, and whether it was trained now
    (False: a finished run with these settings was in the store)."""
    found = store.finished_run_of(KIND_LEARNED_OPTIMIZER, settings.key)
    if found:
        return found, False
    store.ensure()
    # One meta-training per setting at a time: an unfinished run is an attempt that was killed or
    # interrupted, and this one goes on in it from its last checkpoint.
    run_id = store.reopen_run_of(KIND_LEARNED_OPTIMIZER, settings.key)
    resume = store.checkpoint(run_id, required=False) if run_id else None
    if run_id is None:
        run_id = store.start_run_of(KIND_LEARNED_OPTIMIZER, f"learned-optimizer-{settings.key[:8]}",
                                    {"nas.run_key": settings.key, "nas.data": settings.source})
        store.log_result(run_id, {}, {f"nas.meta.{k}": str(v) for k, v in settings.to_json().items()})
    if resume is not None:
        store.log_result(run_id, {}, {"nas.resumed_at": str(len(resume["curve"]))})
        log.info("meta-training run %s continues from its checkpoint at iteration %d of %d", run_id,
                 len(resume["curve"]), settings.iterations)

    def saved(state: dict[str, Any]) -> None:
        curve = state["curve"]  # its last window: LOG_EVERY iterations, or fewer at the end
        window = curve[(len(curve) - 1) // LOG_EVERY * LOG_EVERY:]
        store.log_step(run_id, len(curve) - 1, {"meta_loss": statistics.fmean(window)})
        store.log_checkpoint(run_id, state)

    try:
        def family(seeds: range) -> list:
            return task_family(settings.source, list(seeds), rows=settings.rows, hidden=settings.hidden)

        net, curve = meta_train(family(range(settings.tasks)), iterations=settings.iterations,
                                unroll=settings.unroll, horizon=settings.horizon, meta_lr=settings.meta_lr,
                                seed=settings.seed, batch=settings.batch, anneal=True, on_iteration=on_iteration,
                                validate=family(range(VALIDATION_SEEDS, VALIDATION_SEEDS + settings.validation)),
                                checkpoint_every=LOG_EVERY, on_checkpoint=saved, resume=resume)
    except KeyboardInterrupt:
        store.interrupt_run(run_id)
        raise
    except BaseException as exc:
        store.fail_trial(run_id, f"{type(exc).__name__}: {exc}")
        raise
    last = statistics.fmean(curve[-LOG_EVERY:])
    store.finish_run_of(run_id, {LEARNED_OPTIMIZER_FILE: to_bytes(net)},
                        {"meta_loss_first": curve[0], "meta_loss_last": last})
    log.info("learned optimiser %s: meta-loss %.4f -> %.4f over %d iterations", run_id, curve[0], last, len(curve))
    return run_id, True
