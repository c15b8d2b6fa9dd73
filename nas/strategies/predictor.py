"""Predictor-guided search: BANANAS (White et al. 2021) over the space's encoding.

BANANAS fits an ensemble of small neural networks that predicts a network's accuracy
from an encoding of its architecture, draws a pool of candidates by mutating the best
networks found so far, ranks the pool by independent Thompson sampling over the
ensemble's mean and spread, and trains the top of the ranking; every result refits the
ensemble. Here the encoding is `SearchSpace.encode` (graph and training
hyper-parameters), the ensemble is `nas.predictor.Predictor`, and half the pool are
fresh random samples so the search can still leave the neighbourhood of its first
winners. Until `initial` results are known the proposals are random samples.

The predictor learns from every successful result in `history`, warm-start results of
other searches included (the lineage store: "a predictor can train on all of it"), so a
search can start already informed; results of another space are skipped and counted.

    >>> from concurrent.futures import Future
    >>> from nas.loop import run_loop
    >>> from nas.space import SearchSpace
    >>> from nas.trial import Budget, Evaluation
    >>> space = SearchSpace.load("spaces/mlp.yaml").bind((20,), 3)
    >>> def instant(candidate):  # "trains" in no time: wider first layers score higher
    ...     future = Future()
    ...     future.set_result(Evaluation(candidate, "key", val_acc=candidate.arch.nodes[2].get("units") / 256))
    ...     return future
    >>> search = PredictorSearch(space, Budget(1), seed=0, initial=4, pool=32)
    >>> outcome = run_loop(search, instant, trials=8, concurrency=4)
    >>> [e.candidate.info["proposal"] for e in outcome.evaluations]
    ['random', 'random', 'random', 'random', 'model', 'model', 'model', 'model']
    >>> sorted(outcome.evaluations[-1].candidate.info)
    ['predicted', 'proposal', 'uncertainty']
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nas.ids import derive_seed
from nas.predictor import Predictor
from nas.space import Architecture, HParams, SearchSpace
from nas.space.mutations import NotApplicable, mutate
from nas.strategies.base import Strategy, proposal_key
from nas.trial import Budget, Candidate, Evaluation

TOP_PARENTS = 10  # the best results the pool's mutations start from, as BANANAS's "top" networks
DRAWS_PER_SLOT = 4  # tries per wanted pool member before a small space is taken as worn out


class PredictorSearch(Strategy):
    """BANANAS-style search: an MLP ensemble predicts accuracy, Thompson sampling picks.

    Each ask after the first `initial` results refits the predictor on the usable results
    (seeded by the strategy's seed and the number of results, so a rerun refits the same
    model), draws a pool of `pool` never-proposed networks, half mutations of the
    `TOP_PARENTS` best results and half random samples, and proposes the `n` best of the
    pool by Thompson sampling. The model is rebuilt from `history` at every ask, so the
    base class's `state_dict` is the whole state.
    """

    name = "predictor"

    def __init__(self, space: SearchSpace, budget: Budget, seed: int = 0, initial: int = 10, pool: int = 200,
                 members: int = 5) -> None:
        super().__init__(space, budget, seed=seed)
        if initial < 2:
            raise ValueError(f"initial={initial} must be at least 2: the predictor needs two results to rank.")
        if pool < 1:
            raise ValueError(f"pool={pool} must be at least 1: it is how many networks each ask ranks "
                             "with the predictor (200 is a good default).")
        if members < 1:
            raise ValueError(f"members={members} must be at least 1; 5 (BANANAS's ensemble) gives an uncertainty.")
        self.initial = initial
        self.pool = pool
        self.members = members
        self.skipped = 0  # results the last ask left out: not valid in this space (another experiment's)
        self._encodings: dict[str, list[float] | None] = {}  # by proposal key; derived, so not in state_dict

    # ---- the protocol --------------------------------------------------------------

    def _propose(self, n: int) -> list[Candidate]:
        usable, x = self.training_set()
        if len(usable) < self.initial:
            return self._sample_fresh(n, proposal="random")
        y = np.array([e.val_acc for e in usable], dtype=float)
        # The seed follows the results, not the global RNG: the same results refit the same model.
        predictor = Predictor.fit(x, y, seed=derive_seed(self.seed, f"predictor:{len(self.history)}"),
                                  members=self.members)
        pool = self._pool(usable)
        if not pool:
            return self._sample_fresh(n, proposal="random")  # finishes the search if the space is dry
        mean, std = predictor.predict(np.array([self.space.encode(a, h) for a, h, _ in pool]))
        candidates: list[Candidate] = []
        thompson = np.random.default_rng(self.rng.getrandbits(64))
        chosen = np.zeros(len(pool), dtype=bool)
        for _ in range(min(n, len(pool))):
            # Independent Thompson sampling (BANANAS's acquisition): one Gaussian draw per pool
            # member around the ensemble's mean with its spread, redrawn for every slot so a batch
            # spreads over what the model is unsure of. Drawing one of the few members per slot
            # instead would give only `members` distinct rankings for any batch size.
            draw = mean + thompson.standard_normal(len(pool)) * std
            best = int(np.argmax(np.where(chosen, -np.inf, draw)))  # ties: the earliest pool member
            chosen[best] = True
            arch, hparams, parent = pool[best]
            self._fresh(arch, hparams)  # the pool holds only unproposed networks: this claims it
            candidates.append(self._candidate(
                arch, hparams, parents=(parent,) if parent else (),
                info={"proposal": "model", "predicted": float(mean[best]), "uncertainty": float(std[best])}))
        if len(candidates) < n:
            # A pool smaller than the batch means the space is nearly dry: random fills or finishes.
            candidates += self._sample_fresh(n - len(candidates), proposal="random")
        return candidates

    def report(self) -> dict[str, Any] | None:
        return {"skipped_results": self.skipped}

    # ---- the data ------------------------------------------------------------------

    def training_set(self) -> tuple[list[Evaluation], np.ndarray]:
        """The successful results valid in this space, of one budget, and their encodings.

        Under a budget scheduler results come at several budgets; as in BOHB (Falkner et
        al. 2018) the model fits the largest budget with at least `initial` results (all
        budgets together until one has), since short runs rank networks only roughly.
        """
        usable: list[Evaluation] = []
        rows: list[list[float]] = []
        self.skipped = 0
        for evaluation in self.history:
            if not evaluation.ok or evaluation.val_acc is None:
                continue  # failures have no accuracy to learn; they are never proposed again anyway
            row = self._encode(evaluation.candidate.arch, evaluation.candidate.hparams)
            if row is None:
                self.skipped += 1
                continue
            usable.append(evaluation)
            rows.append(row)
        epochs = [e.epochs_trained or e.candidate.budget.epochs for e in usable]
        for level in sorted(set(epochs), reverse=True):
            keep = [i for i, e in enumerate(epochs) if e == level]
            if len(keep) >= self.initial:
                return [usable[i] for i in keep], np.array([rows[i] for i in keep])
        return usable, np.array(rows)

    def _encode(self, arch: Architecture, hparams: HParams) -> list[float] | None:
        """The network's encoding, or None when it is not valid in this space; cached, since every
        ask re-reads the whole history (a warm start from the lineage store can be thousands)."""
        key = proposal_key(arch, hparams)
        if key not in self._encodings:
            try:
                self.space.validate(arch, hparams)
                self._encodings[key] = self.space.encode(arch, hparams)
            except ValueError:  # ArchitectureError, SpaceError: a network of another space
                self._encodings[key] = None
        return self._encodings[key]

    def _pool(self, usable: list[Evaluation]) -> list[tuple[Architecture, HParams, str | None]]:
        """Up to `pool` distinct, never-proposed (arch, hparams, parent run id): half mutations
        of the best results, the rest random samples (all of it when nothing mutates)."""
        members: dict[str, tuple[Architecture, HParams, str | None]] = {}

        def add(arch: Architecture, hparams: HParams, parent: str | None) -> None:
            key = proposal_key(arch, hparams)
            if key not in self.proposed:
                members.setdefault(key, (arch, hparams, parent))

        # sorted() is stable, so equal scores keep history order and the pool stays deterministic.
        parents = sorted(usable, key=lambda e: -e.score)[:TOP_PARENTS]
        wanted = self.pool // 2
        for attempt in range(wanted * DRAWS_PER_SLOT):
            if len(members) >= wanted or not parents:
                break
            parent = parents[attempt % len(parents)]
            try:  # mutate() only returns children the space accepts
                child = mutate(self.space, parent.candidate.arch, parent.candidate.hparams, self.rng)
            except NotApplicable:
                parents.remove(parent)  # nothing applies to it, now or later
                continue
            add(child.arch, child.hparams, parent.run_id)
        for _ in range((self.pool - len(members)) * DRAWS_PER_SLOT):
            if len(members) >= self.pool:
                break
            add(*self.space.sample(self.rng), None)
        return list(members.values())


__all__ = ["PredictorSearch"]
