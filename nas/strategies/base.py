"""The ask/tell protocol every search method implements.

A strategy only writes sentences of the space and reads results: it never trains, never
touches MLflow, and owns a seeded RNG. Given the same seed and the same results told in
the same order it proposes the same candidates, so re-running a killed search replays it
and every finished trial is a cache hit.

The contract, which `nas.loop` relies on:

- `ask(n)` returns an `Asked`: up to n candidates (READY), or none with a word on why:
  WAIT (results it asked for are pending; ask again after telling them) or DONE (it
  will never propose again; `reason` says why). Never an ambiguous empty list.
- `tell(evaluations)` receives exactly the candidates `ask` returned, each once, with its
  result, whether it was trained now or came from a cache or the lineage store.
- `observe(evaluations)` hears extra results about candidates already told (a budget
  scheduler's longer rungs); `warm_start(history)` hears other searches' results.

Subclasses implement `_propose(n)` (a plain list) and `_learn(evaluations)`; the base
class keeps the bookkeeping (what is pending, when it is done) in one place.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

from nas.space import Architecture, HParams, SearchSpace
from nas.ids import digest
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


class AskState(str, Enum):
    READY = "ready"  # candidates to train
    WAIT = "wait"  # nothing until pending results are told
    DONE = "done"  # nothing ever again


@dataclass(frozen=True)
class Asked(Sequence[Candidate]):
    """What `ask` returns: candidates, or why there are none. Iterates over its candidates."""

    candidates: tuple[Candidate, ...] = ()
    state: AskState = AskState.READY
    reason: str | None = None

    def __getitem__(self, index):  # type: ignore[override]
        return self.candidates[index]

    def __len__(self) -> int:
        return len(self.candidates)

    def __iter__(self) -> Iterator[Candidate]:
        return iter(self.candidates)

    @property
    def waiting(self) -> bool:
        return self.state == AskState.WAIT

    @property
    def done(self) -> bool:
        return self.state == AskState.DONE


class ProtocolError(RuntimeError):
    """A strategy or a loop broke the ask/tell contract: a bug, not a user error."""


class Strategy(ABC):
    """Base class: subclasses implement `_propose`, and `_learn` when they learn from results."""

    name: ClassVar[str]
    # Whether proposals depend on the results told; False (random, grid) lets the loop ask ahead,
    # so a subclass of those that learns from results sets it back to True.
    adaptive: ClassVar[bool] = True

    def __init__(self, space: SearchSpace, budget: Budget, seed: int = 0) -> None:
        self.space = space
        self.budget = budget
        self.seed = seed
        self.rng = random.Random(seed)
        self.history: list[Evaluation] = []
        self.proposed: set[str] = set()
        self.pending = 0  # candidates asked and not yet told
        self.done_reason: str | None = None  # set once the strategy will never propose again

    # ---- the protocol --------------------------------------------------------------

    def ask(self, n: int) -> Asked:
        """Up to n new candidates, or WAIT, or DONE with a reason."""
        if n < 1:
            raise ValueError(f"ask(n) needs n >= 1, got {n}.")
        if self.done_reason is not None:
            return Asked(state=AskState.DONE, reason=self.done_reason)
        candidates = tuple(self._propose(n))
        self.pending += len(candidates)
        if candidates:
            return Asked(candidates)
        if self.done_reason is None and not self.pending:
            # Nothing pending can change its mind, and a strategy is deterministic.
            self.done_reason = f"{self.name} has nothing more to propose"
        if self.done_reason is not None:
            return Asked(state=AskState.DONE, reason=self.done_reason)
        return Asked(state=AskState.WAIT)

    def tell(self, evaluations: list[Evaluation]) -> None:
        """The results of candidates this strategy asked, each exactly once."""
        if len(evaluations) > self.pending:
            raise ProtocolError(f"{self.name} was told {len(evaluations)} results with only {self.pending} "
                                "candidates pending: tell only what ask returned, once.")
        self.pending -= len(evaluations)
        self._learn(evaluations)

    def observe(self, evaluations: list[Evaluation]) -> None:
        """Further results of candidates already told, e.g. their longer rungs under Hyperband."""
        self.history.extend(evaluations)

    def warm_start(self, history: list[Evaluation]) -> None:
        """Learn from earlier results, e.g. the lineage store's, as if they had been told."""
        self._learn(history)

    def done(self) -> bool:
        return self.done_reason is not None

    # ---- what subclasses decide ----------------------------------------------------

    @abstractmethod
    def _propose(self, n: int) -> list[Candidate]:
        """Up to n new candidates; none means: waiting for results, or done (call `_finish`)."""

    def _learn(self, evaluations: list[Evaluation]) -> None:
        self._record(evaluations)

    def _finish(self, reason: str) -> None:
        """Declare the strategy exhausted: every later ask says DONE with this reason."""
        self.done_reason = self.done_reason or reason

    def _record(self, evaluations: list[Evaluation]) -> None:
        """Remember results as told; subclasses that learn differently from a warm start call it alone."""
        self.history.extend(evaluations)
        for evaluation in evaluations:
            self.proposed.add(proposal_key(evaluation.candidate.arch, evaluation.candidate.hparams))

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seed": self.seed,
            "rng": _json_rng_state(self.rng),
            "history": [e.to_json() for e in self.history],
            "proposed": sorted(self.proposed),
            "pending": self.pending,
            "done_reason": self.done_reason,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"state of strategy '{state.get('name')}' cannot be loaded into '{self.name}'.")
        self.seed = state["seed"]
        self.rng = _rng_from_json(state["rng"])
        self.history = [Evaluation.from_json(e) for e in state["history"]]
        self.proposed = set(state["proposed"])
        self.pending = int(state.get("pending", 0))
        self.done_reason = state.get("done_reason")

    def report(self) -> dict[str, Any] | None:
        """A small JSON state for people to read in the MLflow UI (e.g. a Q-table), or None."""
        return None

    def files(self) -> dict[str, bytes]:
        """Files of the strategy's state for the search run, by name (e.g. controller weights);
        a name is logged once, so a new state takes a new name."""
        return {}

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
        """Up to n random samples never proposed before; fewer means the space ran dry (and finishes it)."""
        candidates: list[Candidate] = []
        misses = 0
        while len(candidates) < n and misses < MAX_DUPLICATE_DRAWS:
            arch, hparams = self.space.sample(self.rng)
            if self._fresh(arch, hparams):
                candidates.append(self._candidate(arch, hparams, info=dict(info)))
            else:
                misses += 1
        if len(candidates) < n:
            # A small space runs dry: stop asking instead of looping forever on duplicates.
            self._finish(f"{MAX_DUPLICATE_DRAWS} draws in a row repeated earlier proposals: the space "
                         f"'{self.space.name}' looks exhausted")
        return candidates

    def _candidate(self, arch: Architecture, hparams: HParams, **lineage: Any) -> Candidate:
        return Candidate(arch=arch, hparams=hparams, budget=self.budget, **lineage)
