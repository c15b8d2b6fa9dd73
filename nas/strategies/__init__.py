"""Search methods behind one ask/tell protocol; `make_strategy` picks one by name."""

from __future__ import annotations

from typing import Any

from nas.space import SearchSpace
from nas.strategies.base import Strategy
from nas.strategies.bayes import BayesianOptimization
from nas.strategies.codeepneat import CoDeepNEAT
from nas.strategies.evolution import AgingEvolution, LargeScaleEvolution
from nas.strategies.grid_search import GridSearch
from nas.strategies.hyperband import Hyperband
from nas.strategies.random_search import RandomSearch
from nas.trial import Budget

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (RandomSearch, GridSearch, BayesianOptimization, LargeScaleEvolution, AgingEvolution,
                              CoDeepNEAT)}


def make_strategy(name: str, space: SearchSpace, budget: Budget, seed: int = 0, **options: Any) -> Strategy:
    """The named strategy; `options` (e.g. population_size) go to its constructor."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy '{name}'; choose one of {sorted(STRATEGIES)} with --strategy.")
    try:
        return STRATEGIES[name](space, budget, seed=seed, **options)
    except TypeError:
        raise ValueError(f"strategy '{name}' takes no option among {sorted(options)}.") from None


def make_search(name: str, space: SearchSpace, budget: Budget, seed: int = 0, *, population: int | None = None,
                scheduler: str | None = None, min_epochs: int = 1, eta: int = 3) -> Strategy:
    """The strategy a search runs: `name`, with its population size if given, inside a
    budget scheduler (`hyperband` or `successive-halving`) if one is named."""
    strategy = make_strategy(name, space, budget, seed, **({"population_size": population} if population else {}))
    if scheduler:
        strategy = Hyperband(strategy, min_epochs, budget.epochs, eta,
                             successive_halving=scheduler == "successive-halving")
    return strategy


__all__ = ["STRATEGIES", "AgingEvolution", "BayesianOptimization", "CoDeepNEAT", "GridSearch", "Hyperband",
           "LargeScaleEvolution", "RandomSearch", "Strategy", "make_search", "make_strategy"]
