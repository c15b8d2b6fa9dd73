"""Genetic CNN (Xie and Yuille 2017): a network's connections as a binary string, evolved.

A network is S stages separated by max pooling. Stage s has K_s ordinary nodes, each a
convolution with the stage's channels (kernel 3, stride 1, batch norm and ReLU where the
space allows them; kernel_h 1 on 1-D data). Its code is K_s(K_s-1)/2 bits, one per pair
i < j of ordinary nodes, grouped by j: bit (i, j) says node j reads node i. As text,
groups are joined by '-' and stages by '|': "1-01|0-11-101" is a 3-node stage with edges
1->2, 2->3 and a 4-node stage with edges 1->3, 2->3, 1->4, 3->4.

As in the paper, each stage also has a default input node (a convolution of the previous
stage's pooled output) that feeds every node without a predecessor, and a default output
node (a convolution of the sum of the nodes without a successor) that the next pooling
reads; those connections are not encoded. A node with several inputs convolves their sum
(an `add` node). A node with no edge at all is dropped, so that a stage with more nodes
can write every stage with fewer. A stage whose bits are all zero is one convolution,
not the input and output convolutions in a row (the paper's second special case). After
the last stage come the reduction (global pooling, or flatten where the space file says
so) and the head.

Evolution follows the paper's Algorithm 1 and its constants. The initial population is
`population_size` codes of fair coin flips. Each later generation is bred from the
evaluated one: Russian-roulette selection of N individuals with replacement, with
probability proportional to r - r_min (r the fitness, r_min the population's lowest);
crossover of each consecutive pair with probability p_C = 0.2, swapping each stage with
probability q_C = 0.2; mutation of each individual with probability p_M = 0.8, flipping
each bit with probability q_M = 0.05. A child's `parents` are the runs its stages came
from: two after a crossover that swapped some stages, else one.

Every individual of every generation is trained, as in the paper, which trains a network
seen before again and ranks it by its mean accuracy over all its trainings. A repeat is a
trial of its own (its `nonce`, so its training seed, differs); a network's first training
shares its trial key with other searches of the experiment, so the store answers it if one
trained it.
A failed training counts for nothing, and a network none of whose trainings succeeded is
never a parent (if the whole population failed, the next is drawn afresh). So a
generation is always `population_size` trials and the search never stalls on a small
space; `generations` bounds the generations bred after the initial one (the paper's T).
`ask(n)` hands out the generation's individuals in order, says WAIT until all of them
are told, and then breeds the next, so the order results arrive in (an asynchronous
loop's timing) never changes the search.

Only connections evolve: every network trains with one fixed setting, the project's
default hyper-parameters nearest to what the space allows (what SMASH scores with), so
accuracy differences are the structure's.

The stages come from the space file (`methods: genetic-cnn:`); without that section they
are two stages of three nodes with the two smallest channel counts of the space's conv.

    methods:
      genetic-cnn:
        stages:                      # the paper's CIFAR-10 setting: S = 3, K = (3, 4, 5)
          - {nodes: 3, channels: 16}
          - {nodes: 4, channels: 32}
          - {nodes: 5, channels: 64}
        reduce: flatten              # optional: global_pool (the default) or flatten

    >>> from nas.space import SearchSpace
    >>> from nas.trial import Budget, Evaluation
    >>> space = SearchSpace.load("spaces/genetic-cnn.yaml").bind((1, 40), 10)
    >>> search = GeneticCNN(space, Budget(epochs=5), seed=32, population_size=4)
    >>> arch = search.encoding.compile(search.encoding.parse("0-11|0-00-000|0-00-000-0000"))
    >>> [(n.op, n.inputs) for n in arch.nodes[1:7]]  # stage 1: nodes 1 and 2 are summed into node 3
    [('conv', (0,)), ('conv', (1,)), ('conv', (1,)), ('add', (2, 3)), ('conv', (4,)), ('conv', (5,))]
    >>> [n.op for n in arch.nodes[7:]]  # stages 2 and 3 have no edges: one convolution each
    ['pool', 'conv', 'pool', 'conv', 'flatten', 'head']
    >>> first = search.ask(10)  # generation 0, then nothing until it is told
    >>> len(first), first[0].info["genetic_code"], search.ask(1).state.value
    (4, '1-11|0-10-100|0-00-110-1100', 'wait')
    >>> search.tell([Evaluation(c, str(i), val_acc=0.5 + i / 10, run_id=f"r{i}") for i, c in enumerate(first)])
    >>> [(c.generation, c.parents, c.nonce) for c in search.ask(10)]  # r0, the worst, has no chance
    [(1, ('r3',), 1), (1, ('r3',), None), (1, ('r1', 'r3'), None), (1, ('r3', 'r1'), None)]
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, fields
from typing import Any

from nas.space import Architecture, ArchitectureError, Domain, HParams, Node, SearchSpace, SpaceError
from nas.space.architecture import AttrValue
from nas.strategies.base import Strategy, proposal_key
from nas.trial import Budget, Candidate, Evaluation

METHOD = "genetic-cnn"
P_CROSSOVER, Q_CROSSOVER = 0.2, 0.2  # the paper's p_C (per pair) and q_C (per stage)
P_MUTATION, Q_MUTATION = 0.8, 0.05  # the paper's p_M (per individual) and q_M (per bit)
MAX_STAGE_NODES = 9  # a node may read K - 1 others, and `add` joins at most 8 tensors

Code = tuple[tuple[int, ...], ...]  # one tuple of bits per stage


@dataclass(frozen=True)
class Stage:
    nodes: int
    channels: int

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """The (i, j) of each bit, in code order: grouped by j, then i (nodes count from 1)."""
        return [(i, j) for j in range(2, self.nodes + 1) for i in range(1, j)]

    @property
    def max_hidden_nodes(self) -> int:
        """The most graph nodes one stage writes (convolutions and adds): a bound for max_nodes."""
        # K >= 4: nodes 3..K all read nodes 1 and 2 (K - 2 adds) and all feed the output (one add).
        return {1: 1, 2: 4, 3: 6}.get(self.nodes, 2 * self.nodes + 1)


class GeneticEncoding:
    """The codes of one space's stages, and the networks they write."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        shape, _ = space.bound()
        settings = space.method_settings(METHOD)
        where = f"{space.source or space.name}: methods.{METHOD}"
        unknown = set(settings) - {"stages", "reduce"}
        if unknown:
            raise SpaceError(f"{where} has unknown keys {sorted(unknown)}; it takes 'stages' (a list of "
                             "{nodes, channels}) and 'reduce'.")
        self.conv_op = space.conv_ops()[0]
        if self.conv_op not in space.ops:
            raise SpaceError(f"space '{space.name}' has no '{self.conv_op}' op, which every Genetic CNN node is; "
                             "add it under ops.")
        domains = space.domains(self.conv_op)
        self.stages = self._stages(settings.get("stages"), domains["channels"].values(), where)
        self.reduce = self._reduction(settings.get("reduce"), where)
        # The paper's node: 3x3 convolution, batch norm, ReLU; the nearest the space allows.
        preferred = {"kernel_h": 3, "kernel_w": 3, "stride": 1, "batch_norm": True, "activation": "relu"}
        self.conv = {name: allowed(domains[name], value) for name, value in preferred.items()}
        self.signal = len(shape) == 1  # flat features are viewed as one signal first
        needs = {"add": "to sum a node's inputs", "pool": "between stages" if len(self.stages) > 1 else None,
                 "signal": f"to view the flat features {shape} as a signal" if self.signal else None}
        missing = [f"{op} ({why})" for op, why in needs.items() if why and op not in space.ops]
        if missing:
            raise SpaceError(f"space '{space.name}' lacks {', '.join(missing)}, which Genetic CNN needs; add "
                             "them under ops.")
        self.pool: dict[str, AttrValue] = {}
        if len(self.stages) > 1:
            pool = space.domains("pool")
            self.pool = {"kind": "max" if pool["kind"].contains("max") else pool["kind"].values()[0],
                         "size": pool["size"].values()[0]}
        bound = sum(s.max_hidden_nodes for s in self.stages) + len(self.stages) + int(self.signal)
        if bound > space.max_nodes:
            raise SpaceError(f"{where}: stages {[s.nodes for s in self.stages]} can write {bound} hidden nodes, "
                             f"over the space's limits.max_nodes={space.max_nodes}; raise max_nodes or set fewer "
                             f"nodes per stage under methods.{METHOD}.stages.")
        try:  # every node present: the most parameters any code can have
            space.validate(self.compile(tuple((1,) * len(s.pairs) for s in self.stages)))
        except ArchitectureError as exc:
            raise SpaceError(f"{where}: the fully connected network of these stages is not valid in space "
                             f"'{space.name}' ({exc}); use fewer channels or nodes.") from None

    @staticmethod
    def _stages(raw: Any, channel_values: list[AttrValue], where: str) -> list[Stage]:
        if raw is None:
            ordered = sorted(channel_values)
            return [Stage(3, int(ordered[0])), Stage(3, int(ordered[min(1, len(ordered) - 1)]))]
        if not isinstance(raw, list) or not raw:
            raise SpaceError(f"{where}.stages must be a non-empty list of {{nodes: K, channels: C}}, got {raw!r}.")
        stages = []
        for s, item in enumerate(raw):
            if not isinstance(item, dict) or set(item) != {"nodes", "channels"}:
                raise SpaceError(f"{where}.stages[{s}] must be a mapping with exactly 'nodes' and 'channels', "
                                 f"got {item!r}.")
            nodes, channels = item["nodes"], item["channels"]
            if type(nodes) is not int or not 1 <= nodes <= MAX_STAGE_NODES:
                raise SpaceError(f"{where}.stages[{s}].nodes={nodes!r} must be an integer from 1 to "
                                 f"{MAX_STAGE_NODES} (an add node sums at most 8 inputs).")
            if type(channels) is not int or channels not in channel_values:
                raise SpaceError(f"{where}.stages[{s}].channels={channels!r} is not one of the conv channels "
                                 f"{channel_values} of the space; use one of them or add it under ops.")
            stages.append(Stage(nodes, channels))
        return stages

    def _reduction(self, raw: Any, where: str) -> str:
        choices = [r for r in self.space.reductions(1) if r in ("global_pool", "flatten")]
        if raw is None and choices:
            return "global_pool" if "global_pool" in choices else choices[0]
        if raw not in choices:
            raise SpaceError(f"{where}.reduce={raw!r} must be one of the space's layout.reduce choices "
                             f"{choices or ['global_pool', 'flatten']} (add it to layout.reduce and ops).")
        return str(raw)

    # ---- codes ---------------------------------------------------------------------

    def random_code(self, rng: random.Random) -> Code:
        return tuple(tuple(int(rng.random() < 0.5) for _ in s.pairs) for s in self.stages)

    def all_codes(self) -> list[Code]:
        """Every code, in a fixed order (for tests and small spaces: there are 2^bits)."""
        per_stage = [list(itertools.product((0, 1), repeat=len(s.pairs))) for s in self.stages]
        return [tuple(code) for code in itertools.product(*per_stage)]

    def text(self, code: Code) -> str:
        return "|".join("-".join("".join(map(str, group)) for group in _groups(stage, bits))
                        for stage, bits in zip(self.stages, code))

    def parse(self, text: str) -> Code:
        """The code a text names; ValueError if it does not fit these stages."""
        code = tuple(tuple(int(c) for c in part if c in "01") for part in text.split("|"))
        if [len(bits) for bits in code] != [len(s.pairs) for s in self.stages] or self.text(code) != text:
            raise ValueError(f"'{text}' is not a code of stages with {[s.nodes for s in self.stages]} nodes "
                             "(groups of 1, 2, ... bits joined by '-', stages by '|').")
        return code

    # ---- networks ------------------------------------------------------------------

    def compile(self, code: Code) -> Architecture:
        nodes = [Node.make("input")]
        if self.signal:
            nodes.append(Node.make("signal", [0]))
        for s, (stage, bits) in enumerate(zip(self.stages, code)):
            if s:
                nodes.append(Node.make("pool", [len(nodes) - 1], **self.pool))
            self._stage(nodes, stage, bits)
        nodes.append(Node.make(self.reduce, [len(nodes) - 1]))
        nodes.append(Node.make("head", [len(nodes) - 1]))
        return Architecture(tuple(nodes))

    def _stage(self, nodes: list[Node], stage: Stage, bits: tuple[int, ...]) -> None:
        def conv(inputs: list[int]) -> int:
            if len(inputs) > 1:
                nodes.append(Node.make("add", inputs))
                inputs = [len(nodes) - 1]
            nodes.append(Node.make(self.conv_op, inputs, channels=stage.channels, **self.conv))
            return len(nodes) - 1

        stage_input = len(nodes) - 1
        edges = [pair for pair, bit in zip(stage.pairs, bits) if bit]
        if not edges:
            conv([stage_input])
            return
        active = sorted({k for pair in edges for k in pair})
        default_input = conv([stage_input])
        out: dict[int, int] = {}
        for j in active:  # ascending, so every predecessor is written before its successors
            out[j] = conv([out[i] for i, k in edges if k == j] or [default_input])
        conv([out[j] for j in active if not any(i == j for i, _ in edges)])


def allowed(domain: Domain, value: AttrValue) -> AttrValue:
    """`value` if the domain holds it, else the nearest number it holds, else its first value."""
    if domain.contains(value):
        return value
    nearest = domain.nearest(value)  # a string or boolean comes back as it was
    return nearest if domain.contains(nearest) else domain.values()[0]


def fixed_hparams(space: SearchSpace) -> HParams:
    """The project's default hyper-parameters, each moved to the nearest value the space allows."""
    return HParams(**{f.name: allowed(space.hparam_domain(f.name), getattr(HParams(), f.name))
                      for f in fields(HParams)})


def _groups(stage: Stage, bits: tuple[int, ...]) -> list[tuple[int, ...]]:
    """A stage's bits grouped by the node they lead to: node j's group holds j - 1 bits."""
    return [bits[(j - 1) * (j - 2) // 2:j * (j - 1) // 2] for j in range(2, stage.nodes + 1)]


@dataclass(frozen=True)
class Individual:
    code: Code
    parents: tuple[str, ...] = ()  # run ids of the individuals its stages came from


class GeneticCNN(Strategy):
    """Genetic CNN over the stages of the space; see the module docstring."""

    name = METHOD

    def __init__(self, space: SearchSpace, budget: Budget, seed: int = 0, population_size: int = 10,
                 generations: int | None = None) -> None:
        super().__init__(space, budget, seed=seed)
        if population_size < 2:
            raise ValueError(f"population_size={population_size} is too small; Genetic CNN selects and crosses "
                             "over at least 2 individuals.")
        if generations is not None and generations < 0:
            raise ValueError(f"generations={generations} must be 0 or more (None: until the trials run out).")
        self.population_size, self.generations = population_size, generations
        self.encoding = GeneticEncoding(space)
        self.hparams = fixed_hparams(space)
        self.generation = 0
        self.population: list[Individual] | None = None  # None until the first ask (warm_start may seed it)
        self.seeds: list[Individual] = []
        self.asked = 0  # individuals of this generation proposed so far
        self.waiting = 0  # proposed and not yet told
        self.trainings: dict[str, list[int]] = {}  # proposal key -> history indices of its results
        self._compiled: dict[Code, tuple[Architecture, str]] = {}

    # ---- the protocol --------------------------------------------------------------

    def _propose(self, n: int) -> list[Candidate]:
        if self.population is None:
            self.population = self.seeds + [Individual(self.encoding.random_code(self.rng))
                                            for _ in range(self.population_size - len(self.seeds))]
        if self.asked == len(self.population) and not self.waiting:  # the generation is evaluated
            if self.generations is not None and self.generation >= self.generations:
                self._finish(f"all {self.generations} generations after the initial population were evaluated")
                return []
            self._breed()
        candidates = []
        for individual in self.population[self.asked:self.asked + n]:
            arch, key = self._network(individual.code)
            # The paper evaluates a network seen before again and averages: a repeat is a
            # trial of its own (nonce), while a first training shares its key with any
            # search's, so the store answers it when another search trained it.
            repeat = len(self.trainings.setdefault(key, []))
            self.trainings[key].append(-1)  # claimed; tell puts the result's history index here
            candidates.append(self._candidate(arch, self.hparams, parents=individual.parents,
                                              generation=self.generation, nonce=repeat or None,
                                              info={"genetic_code": self.encoding.text(individual.code)}))
        self.asked += len(candidates)
        self.waiting += len(candidates)
        return candidates

    def _learn(self, evaluations: list[Evaluation]) -> None:
        for evaluation in evaluations:
            slots = self.trainings[proposal_key(evaluation.candidate.arch, evaluation.candidate.hparams)]
            slots[evaluation.candidate.nonce or 0] = len(self.history)
            self._record([evaluation])
        self.waiting -= len(evaluations)

    def warm_start(self, history: list[Evaluation]) -> None:
        """Earlier results: they count in the fitness of the same networks trained with the same
        settings, and the best earlier networks of these stages (by the `genetic_code` a Genetic
        CNN search gave them) seed the initial population."""
        for evaluation in history:
            key = proposal_key(evaluation.candidate.arch, evaluation.candidate.hparams)
            self.trainings.setdefault(key, []).append(len(self.history))
            self._record([evaluation])
        if self.population is not None:
            return  # too late to seed: the initial population exists
        seeds: dict[Code, Individual] = {i.code: i for i in self.seeds}
        for evaluation in sorted((e for e in history if _fitness(e) is not None), key=lambda e: -e.score):
            try:
                code = self.encoding.parse(str(evaluation.candidate.info.get("genetic_code")))
            except ValueError:
                continue
            if code not in seeds and self._network(code)[0] == evaluation.candidate.arch:
                seeds[code] = Individual(code, (evaluation.run_id,) if evaluation.run_id else ())
        self.seeds = list(seeds.values())[:self.population_size]

    # ---- evolution -----------------------------------------------------------------

    def _network(self, code: Code) -> tuple[Architecture, str]:
        if code not in self._compiled:
            arch = self.encoding.compile(code)
            self._compiled[code] = arch, proposal_key(arch, self.hparams)
        return self._compiled[code]

    def fitness(self, code: Code) -> tuple[float, str | None] | None:
        """A network's mean validation accuracy over its successful trainings, and the run of
        the latest of them (the parent its children name); None if none succeeded."""
        # In the order trainings were proposed, not told, so timing (async mode) changes nothing.
        results = [self.history[i] for i in self.trainings.get(self._network(code)[1], []) if i >= 0]
        ok = [e for e in results if _fitness(e) is not None]
        if not ok:
            return None
        return sum(sorted(e.val_acc for e in ok)) / len(ok), ok[-1].run_id

    def _breed(self) -> None:
        """Selection, crossover and mutation of the evaluated population (the paper's order)."""
        scored = [self.fitness(individual.code) for individual in self.population]
        self.generation += 1
        self.asked = 0
        picked = roulette([None if f is None else f[0] for f in scored], self.population_size, self.rng)
        if not picked:  # a failure is never a parent, so nothing can be bred: start afresh
            self.population = [Individual(self.encoding.random_code(self.rng)) for _ in self.population]
            return
        codes = [list(self.population[i].code) for i in picked]
        origins = [[scored[i][1]] * len(self.encoding.stages) for i in picked]
        for a in range(0, self.population_size - 1, 2):
            for s in crossover(codes[a], codes[a + 1], self.rng):
                origins[a][s], origins[a + 1][s] = origins[a + 1][s], origins[a][s]
        self.population = [Individual(mutate(tuple(code), self.rng), tuple(dict.fromkeys(r for r in runs if r)))
                           for code, runs in zip(codes, origins)]

    # ---- what the search run shows, and resuming -----------------------------------

    def report(self) -> dict[str, Any] | None:
        if self.population is None:
            return None
        return {"generation": self.generation, "stages": [[s.nodes, s.channels] for s in self.encoding.stages],
                "population": [{"genetic_code": self.encoding.text(i.code), "parents": list(i.parents),
                                "fitness": (self.fitness(i.code) or (None,))[0]} for i in self.population]}

    def state_dict(self) -> dict[str, Any]:
        def individuals(group: list[Individual] | None) -> list | None:
            return None if group is None else [[self.encoding.text(i.code), list(i.parents)] for i in group]

        return {**super().state_dict(), "generation": self.generation, "population": individuals(self.population),
                "seeds": individuals(self.seeds), "asked": self.asked, "waiting": self.waiting,
                "trainings": self.trainings}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)

        def individuals(group: list | None) -> list[Individual] | None:
            return None if group is None else [Individual(self.encoding.parse(t), tuple(p)) for t, p in group]

        self.generation, self.asked, self.waiting = int(state["generation"]), int(state["asked"]), int(state["waiting"])
        self.population, self.seeds = individuals(state["population"]), individuals(state["seeds"]) or []
        self.trainings = {k: [int(i) for i in v] for k, v in state["trainings"].items()}


def roulette(fitness: list[float | None], k: int, rng: random.Random) -> list[int]:
    """k indices drawn with replacement, each with probability proportional to r - r_min (the
    paper's Russian roulette); a failure (None) is never drawn, and none are if all failed."""
    alive = [i for i, r in enumerate(fitness) if r is not None]
    if not alive:
        return []
    r_min = min(fitness[i] for i in alive)
    weights = [fitness[i] - r_min for i in alive]
    # All equally fit: r - r_min is zero for every one, so each has the same chance.
    return rng.choices(alive, weights=weights if sum(weights) > 0 else None, k=k)


def crossover(a: list, b: list, rng: random.Random) -> list[int]:
    """With probability p_C, swap each stage of two codes (lists, in place) with probability
    q_C; the stages swapped."""
    if rng.random() >= P_CROSSOVER:
        return []
    swapped = [s for s in range(len(a)) if rng.random() < Q_CROSSOVER]
    for s in swapped:
        a[s], b[s] = b[s], a[s]
    return swapped


def mutate(code: Code, rng: random.Random) -> Code:
    """With probability p_M, the code with each bit flipped with probability q_M; else the code."""
    if rng.random() >= P_MUTATION:
        return code
    return tuple(tuple(bit ^ (rng.random() < Q_MUTATION) for bit in bits) for bits in code)


def _fitness(evaluation: Evaluation) -> float | None:
    """What roulette selection weighs: validation accuracy; None for a failure, never a parent."""
    return evaluation.val_acc if evaluation.ok and evaluation.val_acc is not None else None


__all__ = ["P_CROSSOVER", "P_MUTATION", "Q_CROSSOVER", "Q_MUTATION", "Code", "GeneticCNN", "GeneticEncoding",
           "Individual", "Stage", "allowed", "crossover", "fixed_hparams", "mutate", "roulette"]
