"""What the flows share: the prepared data, trial threads and how a result reads in the log."""

from __future__ import annotations

import os
from pathlib import Path

from prefect.task_runners import ThreadPoolTaskRunner

from nas.config import SearchConfig
from nas.data import DataError, DataMeta, read_meta
from nas.trial import Evaluation
from tasks.prepare import prepare_data


def describe(e: Evaluation) -> str:
    if not e.ok:
        return f"{e.arch_id} failed: {e.reason}"
    test = f" test {e.test_acc:.4f}" if e.test_acc is not None else ""
    return f"{e.arch_id} val {e.val_acc:.4f}{test} ({e.params:,} params, {e.seconds:.1f}s, run {e.run_id})"


def torch_threads(concurrency: int) -> int:
    """Torch threads per trial worker.

    Trials share the cores, and each also needs one for Python-side work (Prefect, MLflow,
    batching); torch gets the rest. More threads than that only add contention.
    """
    return max(1, (os.cpu_count() or 1) // concurrency - 1)


def _fingerprint_on_disk(data_dir: Path) -> str | None:
    try:
        return read_meta(data_dir).fingerprint
    except DataError:
        return None


def prepared_data(cfg: SearchConfig, data_dir: Path) -> DataMeta:
    """The prepare task's result, redone when the cache remembers files that are gone or replaced."""
    options = dict(source=cfg.data.source, out_dir=str(data_dir), label_column=cfg.data.label_column,
                   shape=list(cfg.data.shape) if cfg.data.shape else None, seed=cfg.data.split_seed)
    meta = DataMeta.from_json(prepare_data(**options))
    if _fingerprint_on_disk(data_dir) != meta.fingerprint:
        meta = DataMeta.from_json(prepare_data.with_options(refresh_cache=True)(**options))
    return meta


def thread_runner(concurrency: int) -> ThreadPoolTaskRunner:
    """Trials as threads of this process, `concurrency` at a time (Prefect's default is unbounded)."""
    return ThreadPoolTaskRunner(max_workers=concurrency)
