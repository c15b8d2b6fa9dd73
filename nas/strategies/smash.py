"""SMASH (Brock et al. 2018): rank many networks by one hypernetwork, train only the best.

At the first ask the strategy samples `candidates` distinct networks of the space and
hands them to its scorer, which trains one hypernetwork on the search's data and scores
each network by its validation accuracy with generated weights (`nas.hyper`; the
strategy itself never trains). It then proposes the networks best score first: the
search's `--trials` are the top k, each an ordinary trial tagged `nas.smash_score` and
`nas.smash_rank`. The scores are a table on the search run (`smash/scores.csv`), beside the
hypernetwork's weights and training curve.

SMASH ranks architectures: the hypernetwork sees every network with one training setting
(the project's defaults, nearest to what the space allows). Each candidate then trains
with settings drawn from the space, as random search draws them, and refinement tunes the
winner's.

    >>> from nas.space import SearchSpace
    >>> from nas.trial import Budget
    >>> space = SearchSpace.load("spaces/mlp.yaml").bind((20,), 3)
    >>> def fewest_nodes(archs, hparams):  # a scorer: any function of the networks
    ...     return [-len(a.nodes) for a in archs]
    >>> first = Smash(space, Budget(epochs=2), scorer=fewest_nodes, candidates=20).ask(2)
    >>> [c.info["smash_rank"] for c in first], len(first[0].arch.nodes) <= len(first[1].arch.nodes)
    ([1, 2], True)
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

from nas.space import Architecture, HParams, SearchSpace
from nas.strategies.base import MAX_DUPLICATE_DRAWS, Strategy
from nas.trial import Budget, Candidate

CANDIDATES = 500
SCORES_FILE = "smash/scores.csv"

Scorer = Callable[[list[Architecture], HParams], list[float]]


def read_scores(table: bytes | None) -> dict[str, float] | None:
    """arch id -> score, from a search run's scores table (None when there is none)."""
    if table is None:
        return None
    return {row["arch_id"]: float(row["score"]) for row in csv.DictReader(io.StringIO(table.decode()))}


class Smash(Strategy):
    name = "smash"

    def __init__(self, space: SearchSpace, budget: Budget, seed: int = 0, scorer: Scorer | None = None,
                 candidates: int = CANDIDATES) -> None:
        super().__init__(space, budget, seed)
        if candidates < 1:
            raise ValueError(f"smash needs at least one candidate to score, got candidates={candidates}.")
        self.scorer, self.candidates = scorer, candidates
        self.hparams = space.nearest_hparams(HParams())
        self.ranking: list[tuple[Architecture, HParams, float]] | None = None  # best first, once scored
        self.position = 0  # how far down the ranking proposals have gone

    def _propose(self, n: int) -> list[Candidate]:
        if self.ranking is None:
            self.ranking = self._rank()
        proposals: list[Candidate] = []
        while len(proposals) < n and self.position < len(self.ranking):
            arch, hparams, score = self.ranking[self.position]
            self.position += 1
            if self._fresh(arch, hparams):
                proposals.append(self._candidate(arch, hparams,
                                                 info={"smash_score": round(score, 4), "smash_rank": self.position}))
        if self.position == len(self.ranking):
            self._finish(f"all {len(self.ranking)} scored candidates were proposed")
        return proposals

    def _rank(self) -> list[tuple[Architecture, HParams, float]]:
        if self.scorer is None:
            raise ValueError("smash scores its candidates with a hypernetwork trained on the search's data, and "
                             "was given no scorer; run it with `nas search --strategy smash` or create_search("
                             "strategy='smash'), which give it one, or pass scorer= yourself.")
        drawn: dict[str, Architecture] = {}
        misses = 0
        while len(drawn) < self.candidates and misses < MAX_DUPLICATE_DRAWS:
            arch, _ = self.space.sample(self.rng)  # a whole sample, so that the draws stay those of earlier versions
            if arch.arch_id in drawn:
                misses += 1
            else:
                drawn[arch.arch_id] = arch
        pool = list(drawn.values())
        scores = self.scorer(pool, self.hparams)
        if len(scores) != len(pool):
            raise ValueError(f"the smash scorer returned {len(scores)} scores for {len(pool)} networks.")
        order = sorted(range(len(pool)), key=lambda i: -scores[i])  # stable: ties keep the sampling order
        # Each trains with the recipe it was scored with: the ranking says nothing of another one.
        return [(pool[i], self.hparams, float(scores[i])) for i in order]

    # ---- what the search run shows -------------------------------------------------

    def report(self) -> dict[str, Any] | None:
        if self.ranking is None:
            return None
        return {"candidates": len(self.ranking), "proposed": self.position, "scored_with": self.hparams.to_json(),
                "top": [{"rank": r, "arch_id": a.arch_id, "score": s}
                        for r, (a, _, s) in enumerate(self.ranking[:20], start=1)]}

    def files(self) -> dict[str, bytes]:
        """The scores table, and the scorer's own files (the hypernetwork and its curve) when it has any."""
        if self.ranking is None:
            return {}
        table = io.StringIO()
        writer = csv.writer(table)
        writer.writerow(["rank", "arch_id", "score", "sentence"])
        for rank, (arch, hparams, score) in enumerate(self.ranking, start=1):
            writer.writerow([rank, arch.arch_id, f"{score:.6g}", " ".join(self.space.to_tokens(arch, hparams))])
        scorer_files = getattr(self.scorer, "files", None)
        return {SCORES_FILE: table.getvalue().encode(), **(scorer_files() if scorer_files else {})}

    def state_dict(self) -> dict[str, Any]:
        ranking = None if self.ranking is None else [[a.to_json(), h.to_json(), s] for a, h, s in self.ranking]
        return {**super().state_dict(), "ranking": ranking, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        ranking = state["ranking"]
        self.ranking = None if ranking is None else [(Architecture.from_json(a), HParams.from_json(h), s)
                                                     for a, h, s in ranking]
        self.position = state["position"]


__all__ = ["CANDIDATES", "SCORES_FILE", "Scorer", "Smash", "read_scores"]
