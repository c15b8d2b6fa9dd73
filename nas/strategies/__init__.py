"""Search methods behind one ask/tell protocol; `make_strategy` picks one by name."""

from __future__ import annotations

import inspect
from importlib.metadata import entry_points
from typing import Any

from nas.space import SearchSpace
from nas.strategies.base import Strategy
from nas.strategies.bayes import BayesianOptimization
from nas.strategies.codeepneat import CoDeepNEAT
from nas.strategies.evolution import AgingEvolution, LargeScaleEvolution
from nas.strategies.genetic_cnn import GeneticCNN
from nas.strategies.grid_search import GridSearch
from nas.strategies.hyperband import Hyperband
from nas.strategies.metaqnn import MetaQNN
from nas.strategies.nas_rl import NasRL
from nas.strategies.optuna_samplers import OptunaNSGA2, OptunaRandom, OptunaTPE
from nas.strategies.predictor import PredictorSearch
from nas.strategies.random_search import RandomSearch
from nas.strategies.smash import Scorer, Smash
from nas.trial import Budget

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (RandomSearch, GridSearch, BayesianOptimization, LargeScaleEvolution, AgingEvolution,
                              CoDeepNEAT, MetaQNN, NasRL, Smash, PredictorSearch, OptunaTPE,
                              OptunaRandom, OptunaNSGA2, GeneticCNN)}


ENTRY_POINT_GROUP = "nas.strategies"  # where other packages register strategies of their own


def strategy_class(name: str) -> type[Strategy]:
    """A built-in strategy, or one another package registered under the entry-point group `nas.strategies`."""
    if name in STRATEGIES:
        return STRATEGIES[name]
    if name == "pathnet":
        raise ValueError("pathnet runs a tournament of its own on shared weights, not an ask/tell strategy: run it "
                         "with `nas search --strategy pathnet` or nas.pathnet_search.run_pathnet.")
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name == name:
            return entry.load()
    plugins = sorted(e.name for e in entry_points(group=ENTRY_POINT_GROUP))
    raise ValueError(f"unknown strategy '{name}'; choose one of {sorted(STRATEGIES) + plugins} with --strategy, "
                     f"or register yours under the entry-point group '{ENTRY_POINT_GROUP}'.")


def make_strategy(name: str, space: SearchSpace, budget: Budget, seed: int = 0, **options: Any) -> Strategy:
    """The named strategy; `options` (e.g. population_size) go to its constructor."""
    cls = strategy_class(name)
    try:
        return cls(space, budget, seed=seed, **options)
    except TypeError:
        given = sorted("population (--population)" if o == "population_size" else o for o in options)
        raise ValueError(f"strategy '{name}' takes none of the options {given}; leave them out.") from None


def make_search(name: str, space: SearchSpace, budget: Budget, seed: int = 0, *, population: int | None = None,
                scheduler: str | None = None, min_epochs: int = 1, eta: int = 3,
                trials: int | None = None, concurrency: int | None = None,
                controller_lr: float | None = None, scorer: Scorer | None = None,
                candidates: int | None = None) -> Strategy:
    """The strategy a search runs: `name`, with its population size if given, inside a
    budget scheduler (`hyperband` or `successive-halving`) if one is named. `trials` goes to
    strategies whose schedule spans the search (MetaQNN's exploration), `concurrency` to
    those that learn from that many results at a time (the NAS controller's children),
    `controller_lr` to those with a learned controller, `scorer` and `candidates` (how many
    networks it scores) to those that rank networks before training any (SMASH)."""
    options: dict[str, Any] = {"population_size": population} if population else {}
    accepted = inspect.signature(strategy_class(name)).parameters
    if trials and "trials" in accepted:
        options["trials"] = trials
    if concurrency and "children" in accepted:
        options["children"] = concurrency
    if controller_lr and "learning_rate" in accepted:
        options["learning_rate"] = controller_lr
    if scorer and "scorer" in accepted:
        options["scorer"] = scorer
    if candidates and "candidates" in accepted:
        options["candidates"] = candidates
    strategy = make_strategy(name, space, budget, seed, **options)
    if scheduler:
        strategy = Hyperband(strategy, min_epochs, budget.epochs, eta,
                             successive_halving=scheduler == "successive-halving")
    return strategy


__all__ = ["ENTRY_POINT_GROUP", "STRATEGIES", "strategy_class", "AgingEvolution", "BayesianOptimization", "CoDeepNEAT", "GeneticCNN", "GridSearch", "Hyperband",
           "LargeScaleEvolution", "MetaQNN", "NasRL", "OptunaNSGA2", "OptunaRandom", "OptunaTPE", "PredictorSearch", "RandomSearch", "Smash", "Strategy", "make_search", "make_strategy"]
