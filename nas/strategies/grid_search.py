"""Grid search: every sentence of the space's layout, smallest networks first.

The grid of a layer-list space grows fast; `SearchSpace.grid_size()` says how large it
is, and a small space file (few choices per attribute) makes grid search practical.

    >>> from nas.space import SearchSpace
    >>> from nas.trial import Budget
    >>> space = SearchSpace.load("spaces/mlp.yaml").bind((20,), 3)
    >>> grid = GridSearch(space, Budget(epochs=5))
    >>> [len(c.arch.nodes) for c in grid.ask(2)]
    [4, 4]
"""

from __future__ import annotations

import itertools
from typing import Any

from nas.strategies.base import Strategy
from nas.trial import Candidate


class GridSearch(Strategy):
    name = "grid"
    adaptive = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._grid = self.space.enumerate()
        self._position = 0  # grid points consumed, so a restored state skips ahead

    def _propose(self, n: int) -> list[Candidate]:
        candidates: list[Candidate] = []
        while len(candidates) < n:
            point = next(self._grid, None)
            if point is None:
                self._finish(f"all {self._position} points of the grid were proposed")
                break
            self._position += 1
            if self._fresh(*point):
                candidates.append(self._candidate(*point))
        return candidates

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "position": self._position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._position = state["position"]
        self._grid = itertools.islice(self.space.enumerate(), self._position, None)
