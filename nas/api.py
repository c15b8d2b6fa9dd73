"""The Python API: create or load a search by name and store, run it, read what it found.

In the spirit of `optuna.create_study(...).optimize(...)`, for notebooks and scripts
that want no CLI and no orchestrator: trials train in threads of this process and land
in the same lineage store as `nas search` (the CLI and flows use the Prefect runner
instead; both drive the one loop of `nas.loop`).

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

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.config import DataConfig, SearchConfig
from nas.data import prepare
from nas.lineage import LineageStore, resolve_tracking_uri
from nas.loop import LoopOutcome, run_loop, time_limit
from nas.runner import ThreadRunner, TrialJob
from nas.space import SearchSpace
from nas.strategies import Strategy, make_search
from nas.train import pick_device
from nas.trial import Budget, Evaluation, TrialSetting

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Search", "create_search", "load_search"]


class Search:
    """One search in a lineage store: an MLflow experiment's search run and its strategy.

    Calling `optimize` again continues with the same strategy (it remembers what it was
    told); a new `Search` of the same configuration replays the earlier trials from the
    store without training them again.
    """

    def __init__(self, config: SearchConfig, strategy: type[Strategy] | None = None,
                 root: Path | None = None) -> None:
        self.config = config
        self.root = (root or Path.cwd()).absolute()
        self.tracking_uri = resolve_tracking_uri(config.tracking_uri, self.root)
        self.store = LineageStore(self.tracking_uri, config.experiment_name, self.root)
        self.data_dir = config.data.resolved_dir(self.root)
        data = config.data  # prepared every time: it is quick, and a changed file must not go unnoticed
        self.meta = prepare(data.source, self.data_dir, label_column=data.label_column, shape=data.shape,
                            seed=data.split_seed)
        self.space = (SearchSpace.load(config.space).bind(self.meta.shape, len(self.meta.classes))
                      .with_hparams(epochs=config.epochs))
        budget = Budget(config.epochs, config.max_seconds)
        if strategy is None:
            self.strategy = make_search(config.strategy, self.space, budget, seed=config.seed,
                                        population=config.population, scheduler=config.scheduler,
                                        min_epochs=config.min_epochs, eta=config.eta)
        else:
            self.strategy = strategy(self.space, budget, seed=config.seed)
        self.store.ensure()
        self.run_id = self.store.start_search(config.to_json(), Path(config.space), self.meta.fingerprint,
                                              identity=config.identity())
        self.setting = TrialSetting(self.meta.fingerprint, config.seed, pick_device(config.device).type,
                                    config.max_params or self.space.max_params)
        self.evaluations: list[Evaluation] = []

    def optimize(self, n_trials: int | None = None, timeout: float | None = None) -> LoopOutcome:
        """Run up to `n_trials` more trials (default: the configuration's `trials`), for at most
        `timeout` seconds of asking; trials started before the time is up still finish."""
        cfg = self.config
        job = TrialJob(self.setting, cfg.experiment_name, self.tracking_uri, self.run_id, self.strategy.name)
        with ThreadRunner(self.data_dir, job, cfg.concurrency) as runner:
            outcome = run_loop(self.strategy, runner, trials=n_trials or cfg.trials, concurrency=cfg.concurrency,
                               asynchronous=cfg.asynchronous, stop=time_limit(timeout) if timeout else None)
        self.evaluations += outcome.evaluations
        best = self.best_trial
        summary: dict[str, Any] = {"trials": len(self.evaluations), "stop_reason": outcome.stop_reason}
        if best is not None:
            summary.update(best_run_id=best.run_id, best_val_acc=best.val_acc)
        self.store.finish_search(self.run_id, summary)
        return outcome

    @property
    def best_trial(self) -> Evaluation | None:
        """The successful trial of highest validation accuracy (the earlier one on ties)."""
        return max((e for e in self.evaluations if e.ok), key=lambda e: e.score, default=None)

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


def create_search(name: str, *, data: str = "digits", tracking_uri: str | None = None,
                  strategy: str | type[Strategy] = "random", root: Path | None = None, **options: Any) -> Search:
    """A search named `name` (its MLflow experiment) on `data`; `options` are `SearchConfig` fields
    (space, trials, epochs, seed, concurrency, scheduler, population, ...)."""
    custom = None if isinstance(strategy, str) else strategy
    config = SearchConfig(data=DataConfig(source=data), experiment=name, tracking_uri=tracking_uri,
                          strategy=strategy if custom is None else custom.name, **options)
    return Search(config, custom, root)


def load_search(name: str, *, tracking_uri: str | None = None, root: Path | None = None,
                strategy: type[Strategy] | None = None) -> Search:
    """The latest search of experiment `name`, with the configuration it ran with."""
    store = LineageStore(tracking_uri, name, root)
    run_id = store.latest_search()
    if run_id is None:
        raise LookupError(f"experiment '{name}' has no search in the store at {store.tracking_uri}; create one "
                          "with create_search, or list the experiments with `nas ui`.")
    config = SearchConfig.from_json(store.search_config(run_id))
    return Search(replace(config, tracking_uri=store.tracking_uri), strategy, root)


