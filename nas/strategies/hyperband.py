"""Successive halving and Hyperband (Li et al. 2018): a budget scheduler around any sampler.

The sampler (any strategy: random by default, `bayes` makes it BOHB-like) only decides
*what* to try; the scheduler decides *for how long*. A bracket trains n configurations
for a few epochs, keeps the best 1/eta, trains those eta times longer, and so on up to
`max_epochs`. Hyperband runs brackets from the most aggressive (many configurations,
first rung `min_epochs`) to plain full training, and starts over.

The sampler is told each configuration's first-rung result as it arrives, as the very
candidate it proposed, so a sampler that waits for results (evolution, CoDeepNEAT) keeps
feeding rung 0; longer rungs reach it through `observe` (BOHB's model prefers them).

A promoted configuration continues its lower rung's run (`resume_from`, a checkpoint in
the lineage store): no epoch is trained twice, and each rung is a run of its own linked
to the one before. Every candidate's schedule spans `max_epochs`, so a rung is exactly
the prefix of the full run.

    >>> from nas.space import SearchSpace
    >>> from nas.strategies.random_search import RandomSearch
    >>> from nas.trial import Budget, Evaluation
    >>> space = SearchSpace.load("spaces/small-cnn.yaml").bind((1, 8, 8), 10)
    >>> hb = Hyperband(RandomSearch(space, Budget(9), seed=0), min_epochs=1, max_epochs=9, eta=3)
    >>> [(b.budgets, b.sizes) for b in map(hb._new_bracket, range(3))]
    [([1, 3, 9], [9, 3, 1]), ([3, 9], [5, 1]), ([9], [3])]
    >>> first = hb.ask(9)
    >>> {c.budget.epochs for c in first}, hb.ask(1)[0].budget.epochs  # rung 0 waits: a new bracket opens
    ({1}, 3)
    >>> hb.tell([Evaluation(c, str(i), val_acc=i / 10, run_id=f"r{i}") for i, c in enumerate(first)])
    >>> [(c.resume_from, c.budget.epochs) for c in hb.ask(3)]  # the best third goes on
    [('r8', 3), ('r7', 3), ('r6', 3)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from nas.strategies.base import AskState, Strategy
from nas.trial import Budget, Candidate, Evaluation

SCHEDULERS = ("hyperband", "successive-halving")


@dataclass
class Bracket:
    """One run of successive halving: rung i trains sizes[i] configurations for budgets[i] epochs."""

    id: int
    budgets: list[int]
    sizes: list[int]
    rung: int = 0
    drawn: int = 0  # configurations taken from the sampler (rung 0 only)
    queue: list[Candidate] = field(default_factory=list)  # promoted, not yet asked
    waiting: int = 0  # asked in this rung, not yet told
    results: list[Evaluation] = field(default_factory=list)  # told in this rung

    @property
    def finished(self) -> bool:
        return self.rung >= len(self.budgets)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "budgets": self.budgets, "sizes": self.sizes, "rung": self.rung,
                "drawn": self.drawn, "queue": [c.to_json() for c in self.queue], "waiting": self.waiting,
                "results": [e.to_json() for e in self.results]}

    @staticmethod
    def from_json(data: dict[str, Any]) -> Bracket:
        return Bracket(**{**data, "queue": [Candidate.from_json(c) for c in data["queue"]],
                          "results": [Evaluation.from_json(e) for e in data["results"]]})


class Hyperband(Strategy):
    """Hyperband over `sampler`; with `successive_halving=True`, its most aggressive bracket over and over."""

    name = "hyperband"

    def __init__(self, sampler: Strategy, min_epochs: int, max_epochs: int, eta: int = 3,
                 successive_halving: bool = False) -> None:
        super().__init__(sampler.space, Budget(max_epochs, sampler.budget.max_seconds), seed=sampler.seed)
        if eta < 2:
            raise ValueError(f"eta={eta} must be at least 2: each rung keeps the best 1/eta.")
        if not 1 <= min_epochs <= max_epochs:
            raise ValueError(f"min_epochs={min_epochs} must be between 1 and max_epochs={max_epochs}; "
                             "set --min-epochs no larger than --epochs.")
        self.sampler = sampler
        self.min_epochs, self.max_epochs, self.eta = min_epochs, max_epochs, eta
        # s_max + 1 brackets; a ratio just under a power of eta must not lose one to rounding.
        self.s_max = int(math.floor(math.log(max_epochs / min_epochs, eta) + 1e-9))
        self.successive_halving = successive_halving
        self.brackets: list[Bracket] = []  # open ones, oldest first
        self.opened = 0
        self.configs = 0  # configurations drawn from the sampler: the next one's number
        self.origins: dict[int, Candidate] = {}  # the sampler's own candidate of each config not yet told
        self.sampler_state = AskState.READY  # what the sampler said last

    def _new_bracket(self, number: int) -> Bracket:
        s = self.s_max if self.successive_halving else self.s_max - number % (self.s_max + 1)
        n = math.ceil((self.s_max + 1) / (s + 1) * self.eta**s)
        budgets = [max(self.min_epochs, round(self.max_epochs * self.eta ** (i - s))) for i in range(s + 1)]
        sizes = [max(1, math.floor(n * self.eta ** -i)) for i in range(s + 1)]
        return Bracket(number, budgets, sizes)

    # ---- the protocol --------------------------------------------------------------

    def _propose(self, n: int) -> list[Candidate]:
        asked: list[Candidate] = []
        while len(asked) < n:
            candidate = next((c for b in self.brackets if (c := self._next(b))), None)
            if candidate is None:
                # Every open bracket waits for results: open another, so no worker idles,
                # unless the sampler itself waits or is done (a new bracket could draw nothing).
                if self.sampler_state != AskState.READY:
                    break
                self.brackets.append(self._new_bracket(self.opened))
                self.opened += 1
                continue
            asked.append(candidate)
        self.brackets = [b for b in self.brackets if not b.finished]
        if not asked and self.sampler_state == AskState.DONE and not self.brackets:
            self._finish(f"the sampler is done ({self.sampler.done_reason}) and every bracket has ended")
        return asked

    def _next(self, bracket: Bracket) -> Candidate | None:
        if bracket.finished:
            return None
        if bracket.queue:
            bracket.waiting += 1
            return bracket.queue.pop(0)
        if bracket.rung > 0 or bracket.drawn >= bracket.sizes[0]:
            return None
        if self.sampler_state == AskState.READY:
            proposal = self.sampler.ask(1)
            self.sampler_state = proposal.state
            if proposal:
                return self._first_rung(bracket, proposal[0])
        if self.sampler_state == AskState.WAIT:  # more configurations once the sampler hears of the ones out
            return None
        # The sampler is done: the rung is as big as it got.
        bracket.sizes[0] = bracket.drawn
        if not bracket.drawn:
            bracket.rung = len(bracket.budgets)
        elif not bracket.waiting:  # and complete already: nothing else would end it
            self._promote(bracket)
            return self._next(bracket)
        return None

    def _first_rung(self, bracket: Bracket, config: Candidate) -> Candidate:
        bracket.drawn += 1
        bracket.waiting += 1
        number = self.configs
        self.configs += 1
        self.origins[number] = config
        # The schedule spans max_epochs, so every rung is a prefix of the full run.
        return replace(config, hparams=replace(config.hparams, epochs=self.max_epochs),
                       budget=Budget(bracket.budgets[0], self.budget.max_seconds),
                       info={**config.info, "bracket": bracket.id, "rung": 0, "config": number})

    def _learn(self, evaluations: list[Evaluation]) -> None:
        super()._learn(evaluations)
        by_id = {b.id: b for b in self.brackets}
        for evaluation in evaluations:
            info = evaluation.candidate.info
            # The sampler hears of each configuration once, at its first rung, as the
            # candidate it proposed; longer rungs come to it as observations.
            origin = self.origins.pop(info["config"], None)
            if origin is not None:
                self.sampler.tell([replace(evaluation, candidate=origin)])
                if self.sampler_state == AskState.WAIT:
                    self.sampler_state = AskState.READY
            else:
                self.sampler.observe([evaluation])
            bracket = by_id[info["bracket"]]
            bracket.waiting -= 1
            bracket.results.append(evaluation)
            if not bracket.waiting and not bracket.queue and len(bracket.results) >= bracket.sizes[bracket.rung]:
                self._promote(bracket)
        self.brackets = [b for b in self.brackets if not b.finished]

    def _promote(self, bracket: Bracket) -> None:
        """End the bracket's rung: the best go on from their checkpoints."""
        ranked = sorted(bracket.results, key=lambda e: -e.score)  # stable: ties keep the order told
        last = bracket.rung + 1 >= len(bracket.budgets)
        keep = [] if last else [e for e in ranked[:bracket.sizes[bracket.rung + 1]] if e.ok and e.run_id]
        bracket.rung += 1
        bracket.results = []
        if last or not keep:
            bracket.rung = len(bracket.budgets)
            return
        epochs = bracket.budgets[bracket.rung]
        bracket.queue = [replace(e.candidate, budget=Budget(epochs, self.budget.max_seconds), parents=(e.run_id,),
                                 resume_from=e.run_id, inherit_from=None,
                                 info={**e.candidate.info, "rung": bracket.rung, "mutation": None})
                         for e in keep]
        bracket.sizes[bracket.rung] = len(keep)

    def warm_start(self, history: list[Evaluation]) -> None:
        self._record(history)
        self.sampler.warm_start(history)

    def report(self) -> dict[str, Any] | None:
        return self.sampler.report()  # the scheduler has nothing to show; what it samples with may

    def files(self) -> dict[str, bytes]:
        return self.sampler.files()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "sampler": self.sampler.state_dict(), "opened": self.opened,
                "brackets": [b.to_json() for b in self.brackets], "configs": self.configs,
                "origins": {str(k): c.to_json() for k, c in self.origins.items()},
                "sampler_state": self.sampler_state.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.sampler.load_state_dict(state["sampler"])
        self.opened = state["opened"]
        self.brackets = [Bracket.from_json(b) for b in state["brackets"]]
        self.configs = state["configs"]
        self.origins = {int(k): Candidate.from_json(c) for k, c in state["origins"].items()}
        self.sampler_state = AskState(state["sampler_state"])


__all__ = ["SCHEDULERS", "Bracket", "Hyperband"]
