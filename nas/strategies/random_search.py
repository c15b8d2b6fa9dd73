"""Random search (Bergstra and Bengio, 2012): independent samples of the space.

    >>> import random
    >>> from nas.space import SearchSpace
    >>> from nas.trial import Budget
    >>> space = SearchSpace.load("spaces/cnn.yaml").bind((1, 8, 8), 10)
    >>> first = RandomSearch(space, Budget(epochs=5), seed=1).ask(3)
    >>> [c.arch.arch_id for c in first] == [c.arch.arch_id for c in RandomSearch(space, Budget(5), seed=1).ask(3)]
    True
"""

from __future__ import annotations

from nas.strategies.base import Strategy
from nas.trial import Candidate


class RandomSearch(Strategy):
    name = "random"
    adaptive = False

    def _propose(self, n: int) -> list[Candidate]:
        return self._sample_fresh(n)
