"""Evolution: large-scale evolution (Real et al. 2017) and its aging variant (Real et al. 2019).

Both keep a population of evaluated individuals and make each child by mutating a parent
chosen by a tournament; a failed individual is never a parent. In large-scale evolution a
child that keeps some of its parent's nodes inherits their trained weights
(`inherit_from`), so a child identical to its parent means "train the parent for longer".
Aging evolution trains children from scratch, as Real et al. 2019 did (`inherit=True`
changes that). Every child carries its own `nonce`, so it is a trial of its own even when
it repeats its parent's training exactly (reset-weights); aging evolution's individuals
are networks the search has not trained (see AgingEvolution).

    >>> from nas.space import SearchSpace
    >>> from nas.trial import Budget, Evaluation
    >>> space = SearchSpace.load("spaces/cnn.yaml").bind((1, 8, 8), 10)
    >>> search = LargeScaleEvolution(space, Budget(epochs=5), seed=1, population_size=4)
    >>> initial = search.ask(4)
    >>> [len(c.arch.nodes) for c in initial]  # input -> global_pool -> head
    [3, 3, 3, 3]
    >>> search.tell([Evaluation(c, trial_key=str(i), val_acc=0.1 * i, run_id=f"run{i}")
    ...              for i, c in enumerate(initial)])
    >>> children = search.ask(2)  # two tournaments; each loser dies at once
    >>> [e.run_id for e in search.population]
    ['run1', 'run3']
    >>> [(c.parents, c.inherit_from, c.generation) for c in children]
    [(('run3',), 'run3', 1), (('run3',), 'run3', 1)]
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from nas.space import Architecture, ArchitectureError, HParams, Node, SearchSpace, SpaceError
from nas.space.mutations import Mutated, NotApplicable, allowed_mutations, mutate
from nas.strategies.base import Strategy
from nas.trial import Budget, Candidate, Evaluation

# Tournaments tried per requested child before giving up on it: with every mutation
# inapplicable to every living individual, asking again would loop forever.
MAX_TOURNAMENTS_PER_CHILD = 20


class _Evolution(Strategy):
    """Population bookkeeping shared by both variants.

    `population` holds the living individuals oldest first, so list order is age order:
    aging kills index 0 and tournaments break ties towards the older one.
    """

    def __init__(self, space: SearchSpace, budget: Budget, seed: int = 0, population_size: int = 10,
                 mutations: tuple[str, ...] | None = None, inherit: bool = True) -> None:
        super().__init__(space, budget, seed=seed)
        if population_size < 2:
            raise ValueError(f"population_size={population_size} is too small; evolution needs at least 2 "
                             "individuals to compare.")
        self.population_size = population_size
        self.mutations = allowed_mutations(mutations)
        self.inherit = inherit
        self.population: list[Evaluation] = []
        self.initial_asked = 0  # initial individuals proposed so far (seeds from warm_start count)
        self.children = 0  # children proposed so far: the next child's nonce

    # ---- what subclasses decide ----------------------------------------------------

    @abstractmethod
    def _initial_candidate(self) -> Candidate:
        """One individual of the initial population."""

    @abstractmethod
    def _ask_children(self, n: int) -> list[Candidate]:
        """Up to n children of the living population."""

    # ---- the protocol --------------------------------------------------------------

    def _propose(self, n: int) -> list[Candidate]:
        initial = [self._initial_candidate() for _ in range(min(n, self.population_size - self.initial_asked))]
        self.initial_asked += len(initial)
        children = self._ask_children(n - len(initial)) if len(initial) < n else []
        if not initial + children and not self.pending:
            self._finish(f"no living individual can be a parent ({len(self.population)} alive, "
                         f"{sum(e.ok for e in self.population)} of them trained successfully)")
        return initial + children

    def _learn(self, evaluations: list[Evaluation]) -> None:
        super()._learn(evaluations)
        # Failed children join too: they are never parents, and lose their first tournament.
        self.population.extend(evaluations)
        self._cull()

    def observe(self, evaluations: list[Evaluation]) -> None:
        """A longer run of an individual (a scheduler's promotion) replaces it: its score and its weights."""
        super().observe(evaluations)
        by_run = {e.run_id: i for i, e in enumerate(self.population)}
        for evaluation in evaluations:
            i = by_run.get(evaluation.candidate.resume_from)
            if i is not None and evaluation.ok:
                self.population[i] = evaluation
                by_run[evaluation.run_id] = i

    def _cull(self) -> None:
        """Hook run after individuals join; aging evolution kills the oldest here."""

    def warm_start(self, history: list[Evaluation]) -> None:
        """Seed the population with the best `population_size` results of `history`.

        They replace (some of) the initial individuals, so evolution can start from what
        another method found. Ties in score keep the earlier result; ages follow history order.
        """
        self._record(history)
        # Results of another space (the lineage store holds every search) cannot be mutated here.
        usable = [e for e in history if self.space.is_valid(e.candidate.arch, e.candidate.hparams)]
        pool = self.population + usable
        ranked = sorted(range(len(pool)), key=lambda i: (-pool[i].score, i))[:self.population_size]
        self.population = [pool[i] for i in sorted(ranked)]
        self.initial_asked = max(self.initial_asked, len(self.population))

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "population": [e.to_json() for e in self.population],
            "initial_asked": self.initial_asked,
            "children": self.children,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.population = [Evaluation.from_json(e) for e in state["population"]]
        self.initial_asked = int(state["initial_asked"])
        self.children = int(state["children"])

    # ---- making a child ------------------------------------------------------------

    def _mutate(self, parent: Evaluation) -> Mutated | None:
        if not parent.ok:  # a failed run has no weights and no score worth copying
            return None
        candidate = parent.candidate
        try:  # mutate() only returns children the space accepts
            return mutate(self.space, candidate.arch, candidate.hparams, self.rng, allowed=self.mutations)
        except NotApplicable:
            return None

    def _child(self, parent: Evaluation, mutated: Mutated) -> Candidate:
        # Without a run id (results that never reached the lineage store) there are no
        # weights to inherit and no run to name as parent.
        run_id = parent.run_id
        inherits = self.inherit and mutated.node_map is not None and run_id is not None
        node_map = {str(c): p for c, p in mutated.node_map.items()} if inherits else None
        self.children += 1
        return self._candidate(
            mutated.arch, mutated.hparams,
            parents=(run_id,) if run_id is not None else (),
            inherit_from=run_id if inherits else None,
            generation=parent.candidate.generation + 1,
            info={"mutation": mutated.mutation, "node_map": node_map},
            nonce=self.children,
        )


def simplest_network(space: SearchSpace) -> Architecture:
    """input -> global_pool -> head, or input -> flatten -> head for flat data or without
    global_pool; in a space of recurrent cells, input -> cell -> head with the cell the space
    lists first (a signal view before it on flat data)."""
    shape, _ = space.bound()
    reduce = "global_pool" if len(shape) > 1 and "global_pool" in space.ops else "flatten"
    nodes = [Node.make("input")]
    if reduce in space.ops:
        nodes.append(Node.make(reduce, [0]))
    elif "cell" in space.ops:
        if len(shape) == 1 and "signal" in space.ops:
            nodes.append(Node.make("signal", [0]))
        nodes.append(Node.make("cell", [len(nodes) - 1],
                               **{name: d.values()[0] for name, d in space.domains("cell").items()}))
    else:
        raise SpaceError(f"space '{space.name}' has neither global_pool, flatten nor cell, so evolution cannot "
                         "write its simplest network (input -> reduction -> head); add one of them under ops.")
    arch = Architecture((*nodes, Node.make("head", [len(nodes) - 1])))
    try:
        space.validate(arch)
    except ArchitectureError as exc:
        raise SpaceError(f"evolution's simplest network is not valid in space '{space.name}': {exc}") from None
    return arch


class LargeScaleEvolution(_Evolution):
    """Large-scale evolution (Real et al. 2017): pairwise tournaments from the simplest network.

    The population starts as `population_size` copies of the simplest network with sampled
    hyper-parameters. Each child comes from a tournament: of two distinct living
    individuals the worse dies (ties: the older) and the better is copied and mutated.
    Batch-synchronous: `ask(n)` runs n tournaments at once, so an individual killed in a
    batch cannot be picked again in it; `tell` adds the children to the population.

        >>> from nas.space import SearchSpace
        >>> from nas.trial import Budget
        >>> space = SearchSpace.load("spaces/cnn.yaml").bind((1, 8, 8), 10)
        >>> a = LargeScaleEvolution(space, Budget(5), seed=3).ask(10)
        >>> len({c.arch.arch_id for c in a}), len({c.hparams.lr for c in a})
        (1, 10)
    """

    name = "evolution"

    def __init__(self, space: SearchSpace, budget: Budget, seed: int = 0, population_size: int = 10,
                 mutations: tuple[str, ...] | None = None, inherit: bool = True) -> None:
        super().__init__(space, budget, seed=seed, population_size=population_size, mutations=mutations,
                         inherit=inherit)
        self._simplest = simplest_network(space)

    def _initial_candidate(self) -> Candidate:
        # Real et al. start every individual from the same trivial network; varied learning
        # rates are the only initial diversity.
        hparams = self.space.sample_hparams(self.rng)
        self.space.validate(self._simplest, hparams)
        return self._candidate(self._simplest, hparams, info={"initial": True})

    def _ask_children(self, n: int) -> list[Candidate]:
        children: list[Candidate] = []
        for _ in range(n):
            for _ in range(MAX_TOURNAMENTS_PER_CHILD):
                if len(self.population) < 2:
                    return children
                i, j = sorted(self.rng.sample(range(len(self.population)), 2))
                # i is older (lower index), so on equal scores it is the one that dies.
                loser, winner = (i, j) if self.population[i].score <= self.population[j].score else (j, i)
                parent = self.population[winner]
                if not parent.ok:  # two failures met: one dies, and no child comes of it
                    del self.population[loser]
                    continue
                mutated = self._mutate(parent)
                if mutated is None:
                    continue  # nothing applies to this winner: the loser survives, try another pair
                del self.population[loser]
                children.append(self._child(parent, mutated))
                break
        return children


class AgingEvolution(_Evolution):
    """Regularized (aging) evolution (Real et al. 2019).

    The population starts as `population_size` random samples of the space. Each child's
    parent is the best of `sample_size` living individuals drawn at random; when a child is
    told it joins the population and the oldest individual dies, however good it was, so
    no lucky early network rules forever.

    One deliberate deviation: every individual is a network this search has not trained
    (a repeat is mutated again), where the paper trains a repeat again for a new noisy
    fitness; at a user's hundred trials the repeats took most of the budget (28 distinct
    networks of 100 on the tabular benchmark, where aging evolution then trailed random
    search). When every mutation tried repeats, the child is a new random network. With
    `inherit` a repeat means "train it for longer", and is kept.

        >>> from nas.space import SearchSpace
        >>> from nas.trial import Budget, Evaluation
        >>> space = SearchSpace.load("spaces/cnn.yaml").bind((1, 8, 8), 10)
        >>> search = AgingEvolution(space, Budget(5), seed=0, population_size=3, sample_size=2)
        >>> first = search.ask(3)
        >>> search.tell([Evaluation(c, trial_key=str(i), val_acc=0.9 - i / 10, run_id=str(i))
        ...              for i, c in enumerate(first)])
        >>> search.tell([Evaluation(c, "3", val_acc=0.1, run_id="3") for c in search.ask(1)])
        >>> [e.run_id for e in search.population]  # run 0, the best, was the oldest
        ['1', '2', '3']
    """

    name = "aging-evolution"

    def __init__(self, space: SearchSpace, budget: Budget, seed: int = 0, population_size: int = 10,
                 sample_size: int = 3, mutations: tuple[str, ...] | None = None, inherit: bool = False) -> None:
        super().__init__(space, budget, seed=seed, population_size=population_size, mutations=mutations,
                         inherit=inherit)
        if not 1 <= sample_size <= population_size:
            raise ValueError(f"sample_size={sample_size} must be between 1 and population_size="
                             f"{population_size}.")
        self.sample_size = sample_size

    def _initial_candidate(self) -> Candidate:
        for _ in range(MAX_TOURNAMENTS_PER_CHILD):
            arch, hparams = self.space.sample(self.rng)
            if self._new(arch, hparams):
                break
        return self._candidate(arch, hparams, info={"initial": True})

    def _ask_children(self, n: int) -> list[Candidate]:
        children: list[Candidate] = []
        for _ in range(n):
            repeated = False
            for _ in range(MAX_TOURNAMENTS_PER_CHILD):
                if not self.population:
                    return children
                drawn = self.rng.sample(self.population, min(self.sample_size, len(self.population)))
                parent = max(drawn, key=lambda e: e.score)  # ties: the first drawn; failed only if all are
                mutated = self._mutate(parent)
                if mutated is not None and self._new(mutated.arch, mutated.hparams):
                    children.append(self._child(parent, mutated))
                    break
                repeated |= mutated is not None
            else:
                if repeated:  # the living individuals' mutations are all trained: a new random network instead
                    children.extend(self._sample_fresh(1, fallback=True))
        return children

    def _new(self, arch: Architecture, hparams: HParams) -> bool:
        """Whether a network may be an individual (see the class's note on repeats); claims it if so."""
        return self.inherit or self._fresh(arch, hparams)

    def _cull(self) -> None:
        # Regularization: age, not accuracy, decides who dies.
        del self.population[:max(0, len(self.population) - self.population_size)]


__all__ = ["AgingEvolution", "LargeScaleEvolution", "simplest_network"]
