"""The refine flow: tune the training recipe of a search's best architectures, then train the winner.

For each of the top-k architectures of a search, a grid or Bayesian search over its
learning rate, weight decay, batch size and epochs; every setting is a run nested under
that architecture's own search run. The best setting on validation accuracy (the search's
own result included, so refinement never makes things worse; a result earned with
inherited weights is re-scored from scratch first) is trained on train+val with its full
budget and `refine.ensemble` seeds, each logged as an MLflow model, and their average as
the final model. The test split is left to `evaluate`.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.common import describe, prefect_group_runner, prefect_runner, prepared_data, run_flow
from nas.config import ConfigError, RefineConfig, SearchConfig
from nas.data import load_split
from nas.lineage import KIND_FINAL, LineageStore, resolve_tracking_uri
from nas.ids import digest
from nas.loop import Schedule, Submit, run_loop, schedules_from_json, schedules_to_json
from nas.progress import progress
from nas.provenance import provenance_tags
from nas.refine import (as_refinement, final_candidate, refinement_space, refinement_strategy, rescoring,
                        top_architectures)
from nas.runner import TrialJob, small_data, trial_setting
from nas.space import SearchSpace
from nas.train import with_validation
from nas.trial import Evaluation, ranked


def _comparable(base: Evaluation, submit: Submit, logger: logging.Logger, source: str | None) -> Evaluation:
    """The search's own result for this architecture, as refinement can compare it.

    A score earned with a parent's inherited weights would not be reproduced by training
    the same recipe from scratch (or from the search's transfer `source`, where refinement
    starts too), so such an architecture is re-scored that way first.
    """
    if base.candidate.inherit_from in (None, source):
        return base
    logger.info("refine %s: its search score %.4f came with weights inherited from run %s; re-scoring it from "
                "scratch", base.arch_id, base.val_acc, base.candidate.inherit_from)
    rescored = rescoring(base, source)
    result = submit(rescored).result()
    return replace(result, candidate=rescored)


def _schedule_file(arch_id: str, rcfg: RefineConfig, seed: int) -> str:
    """Where the search run keeps the loop's schedule of one architecture's refinement (see nas.loop),
    so that a rerun at another --concurrency asks the same settings and trains none again."""
    return f"loop/refine-{arch_id}-{digest({'method': rcfg.method, 'hparams': rcfg.hparams, 'seed': seed})}.json"


@flow(name="nas-refine", log_prints=True)
def refine(config: dict[str, Any], refine_config: dict[str, Any], search_run_id: str) -> dict[str, Any]:
    cfg, rcfg = SearchConfig.from_json(config), RefineConfig.from_json(refine_config)
    root = Path.cwd()
    logger = get_run_logger()
    logging.getLogger("prefect.task_runs").setLevel(logging.WARNING)
    data_dir = cfg.data.resolved_dir(root)
    meta = prepared_data(cfg, data_dir)
    tracking_uri = resolve_tracking_uri(cfg.tracking_uri, root)
    store = LineageStore(tracking_uri, cfg.experiment_name, root)
    store.ensure()
    bases = top_architectures(store.trials_of(search_run_id), rcfg.top_k)
    source = store.run_summary(search_run_id)["tags"].get("nas.transfer_from")  # refinement starts there too
    if not bases:
        raise ConfigError(f"search run {search_run_id} has no successful trial in experiment "
                          f"'{cfg.experiment_name}' to refine; pass --search-run with a search that finished some "
                          "trials (and --experiment, if it is another experiment's).")
    space = SearchSpace.load(cfg.space).bind(meta.shape, len(meta.classes))
    tags = {"prefect.flow_run_id": str(flow_run.id), "nas.search_run": search_run_id, **provenance_tags(root)}
    setting = trial_setting(cfg, meta, space)  # refinement trials are scored as the search's were (folds)
    logger.info("refining the %d best architectures of search %s: %s search over %s, %d settings each",
                len(bases), search_run_id, rcfg.method, sorted(rcfg.hparams), rcfg.trials)

    results: list[Evaluation] = []
    with progress(len(bases) * rcfg.trials, f"{rcfg.method} refinement", "setting") as bar:
        for base in bases:
            job = TrialJob(setting, cfg.experiment_name, tracking_uri, base.run_id, f"refine-{rcfg.method}",
                           tags=tags, measure_test=False, dataset=meta.to_json(), cuda_graphs=cfg.cuda_graphs)
            submit = prefect_runner(job, data_dir, cfg.workers)
            results.append(_comparable(base, submit, logger, source))
            strategy = refinement_strategy(rcfg.method, refinement_space(space, base.candidate.arch,
                                                                         base.candidate.hparams, rcfg.hparams),
                                           base, cfg.seed, cfg.max_seconds)
            # Each setting trains for the epochs it names, as a child of the architecture's run; with
            # `batched`, the settings of a round that share batch size and epochs train as one network.
            child = functools.partial(as_refinement, base=base, max_seconds=cfg.max_seconds, source=source)
            grouped = prefect_group_runner(job, data_dir, cfg.workers) if rcfg.batched else None
            schedule_file = _schedule_file(base.arch_id, rcfg, cfg.seed)
            # One loop per file, kept in the form a search keeps its loops' schedules.
            schedule = (schedules_from_json(store.read_bytes(search_run_id, schedule_file)) or [Schedule()])[0]

            def told(evaluation: Evaluation) -> None:  # run_loop returns before the next architecture's turn
                logger.info("refine %s: %s", base.arch_id, describe(evaluation))
                store.log_bytes(search_run_id, schedule_file, schedules_to_json([schedule]))
                results.append(evaluation)
                bar.set_postfix(best_val=f"{max(e.val_acc or 0.0 for e in results):.4f}")
                bar.update(1)

            run_loop(strategy, lambda c: submit(child(c)), trials=rcfg.trials, concurrency=cfg.workers,
                     submit_group=(lambda cs: grouped([child(c) for c in cs])) if grouped else None,
                     on_result=told, schedule=schedule)
            store.abandon_dead_trials(base.run_id)  # a killed attempt's settings this run no longer asks for

    winner = ranked(results)[0]  # full ties: the search's own run, listed first
    finals = [final_candidate(winner, source, member, small_data(meta)) for member in range(rcfg.ensemble)]
    logger.info("winner: %s with %s; training it on train+val for %d epochs with %d seed%s", winner.arch_id,
                winner.candidate.hparams.to_json(), finals[0].budget.epochs, len(finals),
                "s, averaged as the final model" if len(finals) > 1 else "")
    final_setting = replace(setting, data_fingerprint=with_validation(meta.fingerprint), folds=1)  # trained once
    final_job = TrialJob(final_setting, cfg.experiment_name,
                         tracking_uri, winner.run_id, "final", tags=tags, kind=KIND_FINAL, measure_test=False,
                         log_model=True, cuda_graphs=cfg.cuda_graphs)
    submit = prefect_runner(final_job, data_dir, cfg.workers)
    trained = [future.result() for future in [submit(final) for final in finals]]
    failed = [t.reason for t in trained if not t.ok]
    if failed:
        raise RuntimeError(f"the final training of {winner.arch_id} failed: {failed[0]}")
    final_runs = [t.run_id for t in trained]
    example, _ = load_split(data_dir, "val")
    model_uri = store.log_ensemble(final_runs, example[:4])
    return {
        "experiment": cfg.experiment_name, "tracking_uri": tracking_uri, "data_dir": str(data_dir),
        "search_run_id": search_run_id,
        "refined_architectures": len(bases), "refine_trials": len(results) - len(bases),
        "rescored": sum(bool(b.candidate.inherit_from) for b in bases),
        "winner_run_id": winner.run_id, "winner_val_acc": winner.val_acc, "arch_id": winner.arch_id,
        "hparams": winner.candidate.hparams.to_json(), "final_run_id": final_runs[0], "final_run_ids": final_runs,
        "model_uri": model_uri,
    }


def run_refine(config: SearchConfig, refine_config: RefineConfig, search_run_id: str) -> dict[str, Any]:
    """Refine a search; `config` is the search's own (LineageStore.search_config), so data and space match."""
    return run_flow(refine, config, config.to_json(), refine_config.to_json(), search_run_id)
