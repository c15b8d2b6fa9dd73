"""Gaussian-process Bayesian optimisation with expected improvement.

A Gaussian process (constant * Matern 5/2 + white noise) regresses validation accuracy on
the space's fixed-length encoding of every result told so far. The first proposals are
random samples of the space; after that each proposal maximises expected improvement over
a candidate pool: fresh random samples plus mutations of the best finished networks, so
the search can both explore and refine what already works.

    >>> from nas.space import SearchSpace
    >>> from nas.trial import Budget, Evaluation
    >>> space = SearchSpace.load("spaces/small-cnn.yaml").bind((1, 8, 8), 10)
    >>> search = BayesianOptimization(space, Budget(epochs=5), seed=0, initial=4, pool_size=32)
    >>> first = search.ask(4)
    >>> [c.info["proposal"] for c in first]
    ['random', 'random', 'random', 'random']
    >>> search.tell([Evaluation(c, trial_key=str(i), val_acc=0.2 * i) for i, c in enumerate(first)])
    >>> batch = search.ask(3)  # three parallel workers: the constant liar keeps them apart
    >>> [c.info["proposal"] for c in batch]
    ['model', 'model', 'model']
    >>> len({(c.arch.arch_id, c.hparams) for c in [*first, *batch]})
    7
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from nas.space import Architecture, HParams, SearchSpace
from nas.space.mutations import NotApplicable, allowed_mutations, mutate
from nas.strategies.base import Strategy, proposal_key
from nas.trial import Budget, Candidate, Evaluation

XI = 0.01  # expected-improvement margin, in accuracy units: a little exploration


class BayesianOptimization(Strategy):
    """GP-EI over the space's encoding; batches by the constant liar with the worst score.

    Until `initial` results usable by the model are told, and while all their scores are
    equal (nothing to learn from), proposals are random samples, as when the GP fails.
    Then each ask draws a pool of `pool_size` random samples plus `mutations_per_point`
    mutations of each of the `top_points` best finished networks, and proposes the pool
    members of highest expected improvement that were never proposed or told before.

    Batches (`ask(n)`, n > 1) use the constant liar (Ginsbourger et al. 2010) with the
    lie = the worst score observed (CL-min): after each pick the point joins the data with
    that pessimistic score and the GP is refitted with its kernel frozen, so the next pick
    moves away from it instead of repeating it.

    Failed trials count as the worst finished score (0.0 if none finished): the model learns
    to avoid them without the -1 of `Evaluation.score` dominating its scale. Results that
    are not valid in this space (warm starts from another experiment) are kept out of the
    model but never proposed again. The GP is rebuilt from `history` at every ask, so the
    base class's `state_dict` is the whole state.
    """

    name = "bayes"

    def __init__(self, space: SearchSpace, budget: Budget, seed: int = 0, initial: int = 5,
                 pool_size: int = 256, mutations_per_point: int = 8, top_points: int = 4,
                 mutations: tuple[str, ...] | None = None) -> None:
        super().__init__(space, budget, seed=seed)
        if initial < 1:
            raise ValueError(f"initial={initial} must be at least 1: the model needs a result to learn from.")
        if pool_size < 1:
            raise ValueError(f"pool_size={pool_size} must be at least 1: it is how many random networks "
                             "each ask scores with the model (256 is a good default).")
        if mutations_per_point < 0 or top_points < 0:
            raise ValueError(f"mutations_per_point={mutations_per_point} and top_points={top_points} must not "
                             "be negative; use 0 to draw the pool from random samples only.")
        self.initial = initial
        self.pool_size = pool_size
        self.mutations_per_point = mutations_per_point
        self.top_points = top_points
        self.mutations = allowed_mutations(mutations)  # which mutations make pool members

    def _propose(self, n: int) -> list[Candidate]:
        usable = self._usable()
        x, y = self._data(usable)
        # Equal scores (a single result, or only failures) rank nothing: the model would
        # pick an arbitrary pool member, so say honestly that the proposal is random.
        gp = self._fit(x, y) if len(usable) >= self.initial and np.ptp(y) > 0 else None
        if gp is None:
            return self._sample_fresh(n, proposal="random")
        candidates = self._model(n, gp, x, y, usable)
        if len(candidates) < n:
            self._finish("no network of the candidate pool was left unproposed: the space looks exhausted")
        return candidates

    def _usable(self) -> list[Evaluation]:
        """The results the model learns from: valid in this space, of one budget.

        Under a budget scheduler results come at several budgets; as in BOHB (Falkner et
        al. 2018) the model fits the largest budget with enough results to fit, since
        short runs rank networks only roughly.
        """
        valid = [e for e in self.history if self.space.is_valid(e.candidate.arch, e.candidate.hparams)]
        budgets = sorted({_trained(e) for e in valid}, reverse=True)
        for epochs in budgets:
            at = [e for e in valid if _trained(e) == epochs]
            if len(at) >= self.initial:
                return at
        return [e for e in valid if _trained(e) == budgets[-1]] if budgets else []

    # ---- the model -----------------------------------------------------------------

    def _data(self, usable: list[Evaluation]) -> tuple[np.ndarray, np.ndarray]:
        finished = [e.val_acc for e in usable if e.ok and e.val_acc is not None]
        poor = min(finished, default=0.0)
        x = np.array([self.space.encode(e.candidate.arch, e.candidate.hparams) for e in usable])
        y = np.array([e.val_acc if e.ok and e.val_acc is not None else poor for e in usable], dtype=float)
        return x, y

    def _fit(self, x: np.ndarray, y: np.ndarray, kernel: Any = None) -> Any:
        """A fitted GP, or None when it cannot be fitted (the caller falls back to random)."""
        # Imported here: scikit-learn's GP stack costs about a second, which every other
        # strategy and the CLI should not pay.
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

        if kernel is None:
            # Isotropic: a length scale per coordinate of a several-hundred-long encoding
            # cannot be learnt from a few dozen results.
            kernel = (ConstantKernel(1.0, (1e-3, 1e3)) * Matern(1.0, (1e-2, 1e2), nu=2.5)
                      + WhiteKernel(1e-2, (1e-6, 1e0)))
            gp = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=2,
                                          random_state=self.seed % 2**32)
        else:  # constant liar: same hyper-parameters, only the data changes
            gp = GaussianProcessRegressor(kernel, normalize_y=True, optimizer=None)
        try:
            with warnings.catch_warnings():
                # Bounds hit on tiny or constant data are expected, not the user's problem.
                warnings.simplefilter("ignore", ConvergenceWarning)
                return gp.fit(x, y)
        except (ValueError, np.linalg.LinAlgError):
            return None

    # ---- proposals -----------------------------------------------------------------

    def _pool(self, usable: list[Evaluation]) -> list[tuple[Architecture, HParams]]:
        pool = [self.space.sample(self.rng) for _ in range(self.pool_size)]
        finished = [e for e in usable if e.ok and e.val_acc is not None]
        # sorted() is stable, so equal scores keep history order and the pool stays deterministic.
        for parent in sorted(finished, key=lambda e: -e.score)[:self.top_points]:
            for _ in range(self.mutations_per_point):
                try:
                    child = mutate(self.space, parent.candidate.arch, parent.candidate.hparams, self.rng,
                                   allowed=self.mutations)
                except NotApplicable:
                    break  # no mutation at all applies to this parent
                pool.append((child.arch, child.hparams))
        unique = {proposal_key(a, h): (a, h) for a, h in pool}
        return [ah for key, ah in unique.items() if key not in self.proposed]

    def _model(self, n: int, gp: Any, x: np.ndarray, y: np.ndarray, usable: list[Evaluation]) -> list[Candidate]:
        pool = self._pool(usable)
        encoded = np.array([self.space.encode(a, h) for a, h in pool])
        lie = float(y.min())
        candidates: list[Candidate] = []
        while len(candidates) < n and pool:
            ei = expected_improvement(gp, encoded, float(y.max()))
            best = int(np.argmax(ei))  # ties: the earliest pool member
            arch, hparams = pool.pop(best)
            self._fresh(arch, hparams)  # always fresh (the pool was filtered): this claims it
            candidates.append(self._candidate(arch, hparams, info={
                "proposal": "model", "expected_improvement": float(ei[best])}))
            x, y = np.vstack([x, encoded[best]]), np.append(y, lie)
            encoded = np.delete(encoded, best, axis=0)
            if len(candidates) < n and pool:
                gp = self._fit(x, y, kernel=gp.kernel_)
                if gp is None:  # the lie made the data degenerate: fill the batch at random
                    return candidates + self._sample_fresh(n - len(candidates), proposal="random")
        return candidates


def _trained(evaluation: Evaluation) -> int:
    """The budget a result was measured at: a scheduler tells a first rung as the sampler's own
    (full-budget) candidate, so the epochs actually trained say it; a run that trained none, at its budget."""
    return evaluation.epochs_trained or evaluation.candidate.budget.epochs


def expected_improvement(gp: Any, x: np.ndarray, best: float, xi: float = XI) -> np.ndarray:
    """E[max(f(x) - best - xi, 0)] under the GP's posterior at each row of x."""
    from scipy.special import ndtr

    mean, std = gp.predict(x, return_std=True)
    improvement = mean - best - xi
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(std > 0, improvement / std, 0.0)
    ei = improvement * ndtr(z) + std * np.exp(-0.5 * z**2) / np.sqrt(2 * np.pi)
    return np.where(std > 0, ei, np.maximum(improvement, 0.0))


__all__ = ["BayesianOptimization", "expected_improvement"]
