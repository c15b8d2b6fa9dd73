"""Search methods behind one ask/tell protocol; `make_strategy` picks one by name."""

from __future__ import annotations

from nas.space import SearchSpace
from nas.strategies.base import Strategy
from nas.strategies.grid_search import GridSearch
from nas.strategies.random_search import RandomSearch
from nas.trial import Budget

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (RandomSearch, GridSearch)}


def make_strategy(name: str, space: SearchSpace, budget: Budget, seed: int = 0) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy '{name}'; choose one of {sorted(STRATEGIES)} with --strategy.")
    return STRATEGIES[name](space, budget, seed=seed)


__all__ = ["STRATEGIES", "GridSearch", "RandomSearch", "Strategy", "make_strategy"]
