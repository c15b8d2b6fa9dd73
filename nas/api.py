"""The Python API: create or load a search by name and store, run it, read what it found.

In the spirit of `optuna.create_study(...).optimize(...)`, for notebooks and scripts
that want no CLI and no orchestrator: trials train in threads of this process and land
in the same lineage store as `nas search`. The search flow uses this same `Search`, handing
`optimize` the Prefect runner instead; either way the one loop of `nas.loop` runs.

    >>> search = create_search("digits-notebook", data="digits", trials=4, epochs=2,
    ...                        tracking_uri="sqlite:////tmp/nas-doc/mlflow.db")  # doctest: +SKIP
    >>> search.optimize(n_trials=4).stop_reason                                 # doctest: +SKIP
    'the trial budget of 4 is spent'
    >>> search.best_trial.val_acc, len(search.trials_dataframe())               # doctest: +SKIP
    (0.97..., 4)

A strategy of your own is any `nas.strategies.Strategy` subclass: pass the class as
`strategy=`, or register it under the entry-point group `nas.strategies` so that
`--strategy NAME` finds it too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.config import DataConfig, SearchConfig
from nas.data import DataMeta, feature_columns, prepare
from nas.hyper import STEPS, OneShotScorer
from nas.lineage import LineageStore, resolve_tracking_uri
from nas.loop import LoopOutcome, Schedule, Submit, run_loop, schedules_from_json, schedules_to_json, time_limit
from nas.runner import ThreadRunner, TrialJob, trial_setting, with_epochs
from nas.space import SearchSpace, resolve_space
from nas.space.architecture import learned_run
from nas.strategies import Strategy, make_search
from nas.strategies.smash import SCORES_FILE, read_scores
from nas.transfer import transfer_source, transferring
from nas.trial import Budget, Evaluation, ranked

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Search", "create_search", "load_search"]

WARM_START_FILE = "predictor/warm_start.json"  # the run ids a --warm-start-predictor search learned from
SCHEDULE_FILE = "loop/schedule.json"  # per `optimize` call, the order results were told and at what concurrency


class Search:
    """One search in a lineage store: an MLflow experiment's search run and its strategy.

    Calling `optimize` again continues with the same strategy (it remembers what it was
    told); a new `Search` of the same configuration replays the earlier trials from the
    store without training them again.
    """

    def __init__(self, config: SearchConfig, strategy: type[Strategy] | None = None, root: str | Path | None = None,
                 meta: DataMeta | None = None, tags: dict[str, str] | None = None) -> None:
        """`meta`: data already prepared (the flow's cached task), else it is prepared here;
        `tags` go on the search run and every trial run (the flow's Prefect ids and provenance)."""
        self.config = config
        self.root = Path(root or Path.cwd()).absolute()
        self.tracking_uri = resolve_tracking_uri(config.tracking_uri, self.root)
        self.store = LineageStore(self.tracking_uri, config.experiment_name, self.root)
        self.data_dir = config.data.resolved_dir(self.root)
        data = config.data  # prepared every time: it is quick, and a changed file must not go unnoticed
        self.meta = meta or prepare(data.source, self.data_dir, label_column=data.label_column, shape=data.shape,
                                    seed=data.split_seed)
        # "auto" becomes a file before anything records or loads the space; the note says why that one
        columns = feature_columns(data.source, data.label_column)
        space, self.space_note = resolve_space(config.space, self.meta.shape, columns)
        self.config = config = with_epochs(replace(config, space=space), self.meta)
        self.space = bound_space(config, self.meta)
        for optimizer in self.space.hparam_domain("optimizer").values():
            if learned := learned_run(optimizer):
                self.store.learned_optimizer(learned)  # a wrong run id fails here, not in every trial
        budget = Budget(config.epochs, config.max_seconds)
        self.run_id: str | None = None
        if strategy is None:
            # SMASH's scorer trains its hypernetwork lazily, at the first ask, and not again for a
            # search whose run already holds the scores.
            scorer = OneShotScorer(self.space, str(self.data_dir), steps=config.smash_steps or STEPS,
                                   seed=config.seed, device=config.device, earlier=self._logged_scores)
            self.strategy = make_search(config.strategy, self.space, budget, seed=config.seed,
                                        population=config.population, scheduler=config.scheduler,
                                        min_epochs=config.min_epochs, eta=config.eta, trials=config.trials,
                                        concurrency=config.workers, controller_lr=config.controller_lr,
                                        scorer=scorer, candidates=config.smash_candidates)
        else:
            self.strategy = strategy(self.space, budget, seed=config.seed)
        # Resolved once: an experiment's best run may change, this search's source may not.
        self.transfer_from = transfer_source(config.init_from, self.tracking_uri, self.root) \
            if config.init_from else None
        self.warm_started = 0
        if config.from_experiment:
            seeds = LineageStore(self.tracking_uri, config.from_experiment, self.root).best(config.top_k)
            self.strategy.warm_start(seeds)
            self.warm_started = len(seeds)
        self.store.ensure()  # the database and experiment, once, before trial threads race to create them
        identity, search_tags = config.identity(), dict(tags or {})
        if self.transfer_from:  # the run, not the name: a search from another best run is another search
            identity["init_from"] = search_tags["nas.transfer_from"] = self.transfer_from
        self.run_id = self.store.start_search(config.to_json(), Path(config.space), self.meta.fingerprint,
                                              tags=search_tags, identity=identity)
        if config.warm_start_predictor:
            earlier = self._store_history()
            self.strategy.warm_start(earlier)
            self.warm_started += len(earlier)
        self.job = TrialJob(trial_setting(config, self.meta, self.space), config.experiment_name, self.tracking_uri,
                            self.run_id, config.strategy, tags=dict(tags or {}), measure_test=config.report_test,
                            dataset=self.meta.to_json(), cuda_graphs=config.cuda_graphs)
        self.evaluations: list[Evaluation] = []
        self.logged_files: set[str] = set()  # strategy files already on the search run
        self.stop_reason: str | None = None
        # Kept so that a rerun or resume asks what this search asked, whatever its concurrency (nas.loop).
        self.schedules = schedules_from_json(self.store.read_bytes(self.run_id, SCHEDULE_FILE))
        self.optimized = 0  # calls of optimize so far

    def optimize(self, n_trials: int | None = None, timeout: float | None = None, runner: Submit | None = None,
                 on_result: Callable[[Evaluation], None] | None = None) -> LoopOutcome:
        """Run up to `n_trials` more trials (default: the configuration's `trials`), for at most
        `timeout` seconds of asking (trials started before then still finish), then record the
        summary on the search run. `runner` defaults to threads of this process."""
        cfg = self.config

        if self.optimized == len(self.schedules):
            self.schedules.append(Schedule())
        schedule = self.schedules[self.optimized]
        self.optimized += 1

        def told(evaluation: Evaluation) -> None:  # kept as told, so a progress bar can read best_trial
            self.evaluations.append(evaluation)
            self._log_strategy_state()
            self.store.log_bytes(self.run_id, SCHEDULE_FILE, schedules_to_json(self.schedules))
            if on_result is not None:
                on_result(evaluation)

        self._log_strategy_state()

        try:
            with ExitStack() as stack:
                if runner is None:
                    runner = stack.enter_context(ThreadRunner(self.data_dir, self.job, cfg.workers))
                if self.transfer_from:
                    runner = transferring(runner, self.transfer_from)
                outcome = run_loop(self.strategy, runner, trials=n_trials or cfg.trials, concurrency=cfg.workers,
                                   asynchronous=cfg.asynchronous, stop=time_limit(timeout) if timeout else None,
                                   on_result=told, schedule=schedule)
        except BaseException as error:  # what was told is still the search's, for refinement and a rerun
            self.stop_reason = f"{type(error).__name__}: {error}"
            try:
                self._record("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
            except Exception as unrecorded:  # the store itself may be what failed: the first error matters
                logging.getLogger(__name__).warning("the search run %s could not be closed: %s", self.run_id,
                                                    unrecorded)
            raise
        self.stop_reason = outcome.stop_reason
        self._record("FINISHED")
        return outcome

    def _record(self, status: str) -> None:
        """The search run's results (the runs of what it told) and summary; then it ends with `status`."""
        self.store.abandon_dead_trials(self.run_id)
        self.store.log_told(self.run_id, [e.run_id for e in self.evaluations if e.run_id])
        self.store.finish_search(self.run_id, self.summary(), status)

    def _log_strategy_state(self) -> None:
        """The strategy's state on the search run, as it changes: its report (e.g. MetaQNN's
        Q-table) and its files (e.g. each version of the NAS controller's weights)."""
        report = self.strategy.report()
        if report is not None:
            self.store.log_report(self.run_id, report)
        for name, data in self.strategy.files().items():
            if name not in self.logged_files:
                self.store.log_bytes(self.run_id, name, data)
                self.logged_files.add(name)

    def _store_history(self) -> list[Evaluation]:
        """Every successful trial of the store on this data but this search's own. The run ids
        are kept on the search run, so a rerun warm-starts from the same set and replays."""
        recorded = self.store.read_bytes(self.run_id, WARM_START_FILE)
        if recorded is not None:
            return self.store.evaluations(json.loads(recorded))
        found = self.store.trained_on(self.meta.fingerprint, besides=self.run_id)
        self.store.log_bytes(self.run_id, WARM_START_FILE, json.dumps([e.run_id for e in found]).encode())
        return found

    def _logged_scores(self) -> dict[str, float] | None:
        return read_scores(self.store.read_bytes(self.run_id, SCORES_FILE)) if self.run_id else None

    def summary(self) -> dict[str, Any]:
        """What the search run records and `nas search` prints: counts, why it stopped, the best trial."""
        summary: dict[str, Any] = {
            "experiment": self.config.experiment_name, "parent_run_id": self.run_id,
            "tracking_uri": self.tracking_uri, "trials": len(self.evaluations),
            "failed": sum(not e.ok for e in self.evaluations), "stop_reason": self.stop_reason or "not started",
        }
        if self.transfer_from:
            summary["transfer_from"] = self.transfer_from
        if (best := self.best_trial) is not None:
            summary.update(best_run_id=best.run_id, best_arch_id=best.arch_id, best_val_acc=best.val_acc,
                           best_params=best.params)
            if best.test_acc is not None:  # measured only under report_test; the search run's metrics take numbers
                summary["best_test_acc"] = best.test_acc
        return summary

    @property
    def best_trial(self) -> Evaluation | None:
        """The first of `nas.trial.ranked`: highest validation accuracy, then lowest validation loss
        (among cross-validated scores within a standard error of the best), of this search only: a
        warm start's runs belong to their own experiment."""
        return next(iter(ranked(self.evaluations)), None)

    def trials(self) -> list[Evaluation]:
        """This search's trials as recorded in the store, oldest first (earlier sessions' included)."""
        return self.store.trials_of(self.run_id)

    def trials_dataframe(self) -> pd.DataFrame:
        """One row per recorded trial: ids, status, scores, size, time, lineage."""
        import pandas as pd

        return pd.DataFrame([{
            "run_id": e.run_id, "arch_id": e.arch_id, "status": e.status.value, "val_acc": e.val_acc,
            "test_acc": e.test_acc, "params": e.params, "seconds": e.seconds, "epochs": e.epochs_trained,
            "budget": e.candidate.budget.epochs, "generation": e.candidate.generation,
            "parents": list(e.candidate.parents), "reason": e.reason,
        } for e in self.trials()])

    def lineage(self) -> dict[str, list[str]]:
        """Run id -> the run ids of its parents, for every recorded trial of this search."""
        return {e.run_id: list(e.candidate.parents) for e in self.trials() if e.run_id}


def bound_space(config: SearchConfig, meta: DataMeta) -> SearchSpace:
    """The configuration's space file for this data, its epochs (and optimizer, if given) pinned to the configuration's."""
    return SearchSpace.load(config.space).bind(meta.shape, len(meta.classes)).with_hparams(
        epochs=config.epochs, optimizer=config.optimizer)


def create_search(name: str, *, data: str = "digits", tracking_uri: str | None = None,
                  strategy: str | type[Strategy] = "random", root: str | Path | None = None, **options: Any) -> Search:
    """A search named `name` (its MLflow experiment) on `data`; `options` are `SearchConfig` fields
    (space, trials, epochs, seed, concurrency, scheduler, population, ...)."""
    custom = None if isinstance(strategy, str) else strategy
    config = SearchConfig(data=DataConfig(source=data), experiment=name, tracking_uri=tracking_uri,
                          strategy=strategy if custom is None else custom.name, **options)
    return Search(config, custom, root)


def load_search(name: str, *, tracking_uri: str | None = None, root: str | Path | None = None,
                strategy: type[Strategy] | None = None) -> Search:
    """The latest search of experiment `name`, with the configuration it ran with."""
    store = LineageStore(tracking_uri, name, Path(root) if root else None)
    run_id = store.latest_search()
    if run_id is None:
        raise LookupError(f"experiment '{name}' has no search in the store at {store.tracking_uri}; create one "
                          "with create_search, or list the experiments with `nas ui`.")
    config = SearchConfig.from_json(store.search_config(run_id))
    return Search(replace(config, tracking_uri=store.tracking_uri), strategy, root)


