"""Final refinement: tune the training recipe of a search's best architectures.

A search compares architectures under one short, shared recipe. Refinement takes the
top k distinct architectures and searches their learning rate, weight decay, batch size
and epochs (grid or Bayesian), judged on validation accuracy alone. The flow then trains
the winner on train+val with a few seeds, averaged as the final model, and evaluation
touches the test split once.

    >>> import random
    >>> from nas.space import SearchSpace
    >>> space = SearchSpace.load("spaces/small-cnn.yaml").bind((1, 8, 8), 10)
    >>> arch, hparams = space.sample(random.Random(0))
    >>> tuning = refinement_space(space, arch, hparams, {"lr": [1e-3, 1e-2], "epochs": [30]})
    >>> sorted({(h.lr, h.epochs) for a, h in tuning.enumerate() if a == arch})
    [(0.001, 30), (0.01, 30)]
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

from nas.space import Architecture, HParams, SearchSpace
from nas.space.domain import Domain, SpaceError
from nas.strategies import BayesianOptimization, GridSearch, Strategy
from nas.transfer import transferred
from nas.trial import Budget, Candidate, Evaluation, ranked

REFINED = ("lr", "weight_decay", "batch_size", "epochs")
EPOCHS = 30  # each setting's training when the domains leave epochs out, unless the search trained longer
# On breast cancer's 455 train+val rows the winning linear network's recipe (100 epochs) made
# 2, 3, 3, 3 and 3 test errors over five seeds; at 300 epochs 2, 2, 2, 3 and 2, as logistic regression.
SMALL_DATA_FINAL_EPOCHS = 3


@dataclass(frozen=True)
class OneArchitecture(SearchSpace):
    """A space holding a single architecture: every sample, grid point and mutation keeps it."""

    arch: Architecture | None = None

    def sample_arch(self, rng: random.Random) -> Architecture:
        return self.arch

    def grid_size(self) -> int:
        return len(self._choices(self.hparams))

    def enumerate(self) -> Iterator[tuple[Architecture, HParams]]:
        for values in self._choices(self.hparams):
            yield self.arch, HParams(**values)


def refinement_space(space: SearchSpace, arch: Architecture, hparams: HParams,
                     domains: dict[str, Any]) -> OneArchitecture:
    """`space` reduced to `arch`, with the refined hyper-parameters' domains from `domains`.

    The rest (optimizer, initialisation) stays as the search chose it for this network.
    Without an `epochs` domain a setting trains EPOCHS, or the search's epochs if more: a
    search's short training is its proxy, and refinement must not cut what a small table
    needed (it trains 100 epochs: nas.runner.with_epochs).
    """
    unknown = set(domains) - set(REFINED)
    if unknown:
        raise SpaceError(f"refine.hparams names {sorted(unknown)}; refinement tunes {list(REFINED)}. "
                         "Remove the others from params.yaml.")
    pinned = {name: Domain(choices=(value,)) for name, value in asdict(hparams).items()}
    domains = {"epochs": [max(EPOCHS, hparams.epochs)], **domains}
    parsed = {name: Domain.parse(raw, f"params.yaml refine.hparams.{name}") for name, raw in domains.items()}
    fields_ = {f: getattr(space, f) for f in space.__dataclass_fields__}
    return OneArchitecture(**{**fields_, "hparams": {**pinned, **parsed}, "arch": arch})


def top_architectures(history: list[Evaluation], k: int) -> list[Evaluation]:
    """The best finished run of each of the k best distinct architectures, as `ranked` orders
    them (ties: the earlier run)."""
    best: dict[str, Evaluation] = {}
    for e in ranked(history):
        best.setdefault(e.arch_id, e)
    return list(best.values())[:k]


def refinement_strategy(method: str, space: OneArchitecture, base: Evaluation, seed: int,
                        max_seconds: float | None) -> Strategy:
    """Grid or Bayesian search over `space`, told the search's own result for this architecture first."""
    budget = Budget(max(space.hparams["epochs"].values()), max_seconds)
    if method == "grid":
        strategy: Strategy = GridSearch(space, budget, seed=seed)
    else:  # mutations other than the learning rate's would change the architecture
        strategy = BayesianOptimization(space, budget, seed=seed, initial=2, mutations=("alter-learning-rate",))
    strategy.warm_start([base])
    return strategy


def as_refinement(candidate: Candidate, base: Evaluation, max_seconds: float | None,
                  source: str | None = None) -> Candidate:
    """A child of the architecture's search run, trained for the epochs its own settings name,
    from the run the search transferred its candidates from (`source`), if it did."""
    refined = replace(candidate, budget=Budget(candidate.hparams.epochs, max_seconds), parents=(base.run_id,))
    return transferred(refined, source) if source else refined


def final_candidate(winner: Evaluation, source: str | None = None, member: int = 0,
                    small_data: bool = False) -> Candidate:
    """The winner's network and recipe, to train on train+val, with no per-trial time limit:
    the winner met the limit on fewer rows, and stopping its final training would throw the
    refinement away. Each `member` of the final ensemble has a training seed of its own.

    On `small_data` (nas.runner.small_data) the final networks train SMALL_DATA_FINAL_EPOCHS
    times the recipe's epochs: seconds there, and the recipe's epochs were a search budget
    that leaves even a linear network short of its optimum.
    """
    hparams = winner.candidate.hparams
    if small_data:
        hparams = replace(hparams, epochs=hparams.epochs * SMALL_DATA_FINAL_EPOCHS)
    final = Candidate(winner.candidate.arch, hparams, Budget(hparams.epochs), parents=(winner.run_id,),
                      nonce=member or None)
    return transferred(final, source) if source else final


def rescoring(base: Evaluation, source: str | None = None) -> Candidate:
    """The base's own recipe trained without its parent's weights (from the search's transfer
    source, if it had one): what its search score would be without inheritance."""
    fresh = replace(base.candidate, inherit_from=None, parents=(base.run_id,),
                    info={**base.candidate.info, "node_map": None, "refine": "rescored from scratch"})
    return transferred(fresh, source) if source else fresh
