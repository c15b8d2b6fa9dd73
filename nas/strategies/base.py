"""The ask/tell protocol every search method implements.

A strategy only writes sentences of the space and reads results: it never trains, never
touches MLflow, and owns a seeded RNG. Given the same seed and the same results told in
the same order it proposes the same candidates, so re-running a killed search replays it
and every finished trial is a cache hit.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from nas.space import Architecture, HParams, SearchSpace
from nas.space.architecture import digest
from nas.trial import Budget, Candidate, Evaluation

# Duplicate draws in a row after which random sampling takes the space as exhausted.
MAX_DUPLICATE_DRAWS = 1000


def _json_rng_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _rng_from_json(state: list) -> random.Random:
    rng = random.Random()
    rng.setstate((state[0], tuple(state[1]), state[2]))
    return rng


def proposal_key(arch: Architecture, hparams: HParams) -> str:
    """Identity of a proposal regardless of budget: the same network with the same training."""
    return digest({"graph": arch.to_json(), "hparams": hparams.to_json()})


class Strategy(ABC):
    """Base class: subclasses implement `ask`, and `tell` when they learn from results."""

    name: ClassVar[str]

    def __init__(self, space: SearchSpace, budget: Budget, seed: int = 0) -> None:
        self.space = space
        self.budget = budget
        self.seed = seed
        self.rng = random.Random(seed)
        self.history: list[Evaluation] = []
        self.proposed: set[str] = set()
        self._exhausted = False  # set by strategies whose supply of proposals can run out

    @abstractmethod
    def ask(self, n: int) -> list[Candidate]:
        """Up to n new candidates (fewer, or none, when the strategy has nothing left)."""

    def tell(self, evaluations: list[Evaluation]) -> None:
        self._record(evaluations)

    def _record(self, evaluations: list[Evaluation]) -> None:
        """Remember results as told; subclasses that learn differently from a warm start call it alone."""
        self.history.extend(evaluations)
        for evaluation in evaluations:
            self.proposed.add(proposal_key(evaluation.candidate.arch, evaluation.candidate.hparams))

    def done(self) -> bool:
        return self._exhausted

    def warm_start(self, history: list[Evaluation]) -> None:
        """Learn from earlier results, e.g. the lineage store's, as if they had been told."""
        self.tell(history)

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seed": self.seed,
            "rng": _json_rng_state(self.rng),
            "history": [e.to_json() for e in self.history],
            "proposed": sorted(self.proposed),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"state of strategy '{state.get('name')}' cannot be loaded into '{self.name}'.")
        self.seed = state["seed"]
        self.rng = _rng_from_json(state["rng"])
        self.history = [Evaluation.from_json(e) for e in state["history"]]
        self.proposed = set(state["proposed"])

    @property
    def best(self) -> Evaluation | None:
        finished = [e for e in self.history if e.ok]
        return max(finished, key=lambda e: e.score, default=None)

    def _fresh(self, arch: Architecture, hparams: HParams) -> bool:
        """Claim a proposal; False if this strategy proposed or was told it before."""
        key = proposal_key(arch, hparams)
        if key in self.proposed:
            return False
        self.proposed.add(key)
        return True

    def _sample_fresh(self, n: int, **info: Any) -> list[Candidate]:
        """Up to n random samples never proposed before; fewer means the space ran dry."""
        candidates: list[Candidate] = []
        misses = 0
        while len(candidates) < n and misses < MAX_DUPLICATE_DRAWS:
            arch, hparams = self.space.sample(self.rng)
            if self._fresh(arch, hparams):
                candidates.append(self._candidate(arch, hparams, info=dict(info)))
            else:
                misses += 1
        return candidates

    def _candidate(self, arch: Architecture, hparams: HParams, **lineage: Any) -> Candidate:
        return Candidate(arch=arch, hparams=hparams, budget=self.budget, **lineage)
