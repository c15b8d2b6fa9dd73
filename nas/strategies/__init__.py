"""Search methods behind one ask/tell protocol; `make_strategy` picks one by name."""

from __future__ import annotations

from typing import Any

from nas.space import SearchSpace
from nas.strategies.base import Strategy
from nas.strategies.bayes import BayesianOptimization
from nas.strategies.codeepneat import CoDeepNEAT
from nas.strategies.evolution import AgingEvolution, LargeScaleEvolution
from nas.strategies.grid_search import GridSearch
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


__all__ = ["STRATEGIES", "AgingEvolution", "BayesianOptimization", "CoDeepNEAT", "GridSearch", "LargeScaleEvolution",
           "RandomSearch", "Strategy", "make_strategy"]
