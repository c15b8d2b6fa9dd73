"""CoDeepNEAT (Miikkulainen et al. 2017): co-evolved module and blueprint populations.

Two populations evolve side by side. A *module* is a small graph of layers (1-3 convs or
pools on spatial data, dense layers on flat data, plus optional skip `add`s); a
*blueprint* is a chain of 1-4 slots, each naming a module *species*, and carries the
training hyper-parameters. A network is assembled by filling each slot of a blueprint
with a module of that slot's species (the same module wherever a species repeats), then
appending a reduction and the head; it is an ordinary Candidate of the language. Each
score told is credited to the blueprint and to every module the network used, and a
genome's fitness is the mean of the scores it received.

Every structural gene (a layer, a skip connection, a blueprint slot) carries a NEAT
innovation number from a counter in the strategy's state. Within one generation's
reproduction step the same structural change (same op inserted after the same gene, same
skip, same slot position) gets the same number, as in NEAT, so genes that arose the same
way line up in crossover and in the compatibility distance that splits each population
into species.

    >>> from nas.space import SearchSpace
    >>> from nas.trial import Budget, Evaluation
    >>> space = SearchSpace.load("spaces/cnn.yaml").bind((1, 8, 8), 10)
    >>> search = CoDeepNEAT(space, Budget(epochs=5), seed=0, population_size=4)
    >>> first = search.ask(10)  # one generation is population_size networks
    >>> len(first), search.ask(1).state.value  # nothing more until the generation is told
    (4, 'wait')
    >>> sorted(first[0].info)
    ['blueprint', 'modules', 'species']
    >>> search.tell([Evaluation(c, trial_key=str(i), val_acc=0.5, run_id=f"r{i}")
    ...              for i, c in enumerate(first)])
    >>> search.generation, [c.generation for c in search.ask(4)]
    (1, [1, 1, 1, 1])
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nas.space import Architecture, ArchitectureError, HParams, Node, SearchSpace, SpaceError
from nas.space.architecture import AttrValue
from nas.space.space import SAMPLE_TRIES
from nas.strategies.base import Strategy
from nas.trial import Budget, Candidate, Evaluation

INPUT = -1  # the "innovation" of a module's input, as the source of a skip connection
MAX_MODULE_LAYERS = 3
MAX_SLOTS = 4
MAX_ASSEMBLY_TRIES = 50  # draws of (blueprint, modules) per network before accepting a repeat
MAX_MUTATION_TRIES = 10  # mutations that break the space are retried, then the child is a plain copy
CROSSOVER_RATE = 0.5

Traits = dict[str, AttrValue]  # what a gene is, compared attribute by attribute in the distance


# ---- genomes -------------------------------------------------------------------------


@dataclass
class LayerGene:
    innovation: int
    op: str  # conv, pool or dense
    attrs: dict[str, AttrValue]

    def to_json(self) -> dict[str, Any]:
        return {"innovation": self.innovation, "op": self.op, "attrs": dict(self.attrs)}

    @staticmethod
    def from_json(data: dict[str, Any]) -> LayerGene:
        return LayerGene(int(data["innovation"]), data["op"], dict(data["attrs"]))


@dataclass
class SkipGene:
    """`add` the output of `src` (a layer's innovation, or INPUT) to the output of layer `dst`."""

    innovation: int
    src: int
    dst: int

    def to_json(self) -> dict[str, Any]:
        return {"innovation": self.innovation, "src": self.src, "dst": self.dst}

    @staticmethod
    def from_json(data: dict[str, Any]) -> SkipGene:
        return SkipGene(int(data["innovation"]), int(data["src"]), int(data["dst"]))


def _mean(scores: list[float]) -> float | None:
    return sum(scores) / len(scores) if scores else None


@dataclass(kw_only=True)
class _Scored:
    """What modules and blueprints share: a species, and the scores credited back to them."""

    species: int = -1
    scores: list[float] = field(default_factory=list)

    @property
    def fitness(self) -> float | None:
        """The mean score of the networks this genome took part in."""
        return _mean(self.scores)


@dataclass
class Module(_Scored):
    """A chain of layers, in order, with optional skip connections between them."""

    id: int
    layers: list[LayerGene]
    skips: list[SkipGene] = field(default_factory=list)

    def genes(self) -> dict[int, Traits]:
        genes: dict[int, Traits] = {g.innovation: {"op": g.op, **g.attrs} for g in self.layers}
        genes.update({s.innovation: {"src": s.src, "dst": s.dst} for s in self.skips})
        return genes

    def emit(self, nodes: list[Node], entry: int) -> int:
        """Append this module's nodes after node `entry`; the position of its output."""
        out = {INPUT: entry}
        for layer in self.layers:
            nodes.append(Node.make(layer.op, [entry], **layer.attrs))
            entry = len(nodes) - 1
            sources = [out[s.src] for s in self.skips if s.dst == layer.innovation]
            if sources:
                nodes.append(Node.make("add", [entry, *sources]))
                entry = len(nodes) - 1
            out[layer.innovation] = entry
        return entry

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "layers": [g.to_json() for g in self.layers],
                "skips": [s.to_json() for s in self.skips], "species": self.species, "scores": list(self.scores)}

    @staticmethod
    def from_json(data: dict[str, Any]) -> Module:
        return Module(int(data["id"]), [LayerGene.from_json(g) for g in data["layers"]],
                      [SkipGene.from_json(s) for s in data["skips"]], species=int(data["species"]),
                      scores=[float(s) for s in data["scores"]])


@dataclass
class Slot:
    innovation: int
    species: int  # a module species id


@dataclass
class Blueprint(_Scored):
    """A chain of slots, each filled by a module of the named species, plus the hyper-parameters."""

    id: int
    slots: list[Slot]
    hparams: HParams

    def genes(self) -> dict[int, Traits]:
        return {s.innovation: {"species": s.species} for s in self.slots}

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "slots": [[s.innovation, s.species] for s in self.slots],
                "hparams": self.hparams.to_json(), "species": self.species, "scores": list(self.scores)}

    @staticmethod
    def from_json(data: dict[str, Any]) -> Blueprint:
        return Blueprint(int(data["id"]), [Slot(int(i), int(s)) for i, s in data["slots"]],
                         HParams.from_json(data["hparams"]), species=int(data["species"]),
                         scores=[float(s) for s in data["scores"]])


Genome = Module | Blueprint


@dataclass
class Species:
    """A stable id and the genes of the genome new members are compared with."""

    id: int
    representative: dict[int, Traits]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "representative": [[k, v] for k, v in sorted(self.representative.items())]}

    @staticmethod
    def from_json(data: dict[str, Any]) -> Species:
        return Species(int(data["id"]), {int(k): dict(v) for k, v in data["representative"]})


# ---- NEAT operators ------------------------------------------------------------------


def _trait_difference(a: Traits, b: Traits) -> float:
    names = set(a) | set(b)
    return sum(a.get(n) != b.get(n) for n in names) / len(names) if names else 0.0


def compatibility(a: dict[int, Traits], b: dict[int, Traits], c1: float = 1.0, c2: float = 1.0,
                  c3: float = 1.0) -> float:
    """NEAT's distance c1*E/N + c2*D/N + c3*W over genes aligned by innovation number.

    E counts genes beyond the other genome's last innovation, D the other unmatched ones,
    W is the mean fraction of differing attributes of matching genes (the analogue of
    NEAT's weight difference) and N the larger genome's size.
    """
    if not a and not b:
        return 0.0
    cutoff = min(max(a, default=-1), max(b, default=-1))
    unmatched = set(a) ^ set(b)
    excess = sum(1 for i in unmatched if i > cutoff)
    disjoint = len(unmatched) - excess
    matching = set(a) & set(b)
    w = sum(_trait_difference(a[i], b[i]) for i in matching) / len(matching) if matching else 0.0
    n = max(len(a), len(b))
    return c1 * excess / n + c2 * disjoint / n + c3 * w


def crossover_modules(fitter: Module, other: Module, rng: random.Random, child_id: int) -> Module:
    """The fitter parent's structure; each matching layer's attributes from either parent at random.

    Disjoint and excess genes come from the fitter parent only, so the child is always a
    graph the fitter parent already was (NEAT's rule for unequal fitness).
    """
    theirs = {g.innovation: g for g in other.layers}
    layers = []
    for gene in fitter.layers:
        match = theirs.get(gene.innovation)
        source = match if match is not None and match.op == gene.op and rng.random() < 0.5 else gene
        layers.append(LayerGene(gene.innovation, gene.op, dict(source.attrs)))
    return Module(child_id, layers, [SkipGene(s.innovation, s.src, s.dst) for s in fitter.skips])


def crossover_blueprints(fitter: Blueprint, other: Blueprint, rng: random.Random, child_id: int) -> Blueprint:
    """The fitter parent's slots, matching slots' species and each hyper-parameter from either at random."""
    theirs = {s.innovation: s.species for s in other.slots}
    slots = [Slot(s.innovation, theirs[s.innovation] if s.innovation in theirs and rng.random() < 0.5
                  else s.species) for s in fitter.slots]
    mine, yours = fitter.hparams.to_json(), other.hparams.to_json()
    hparams = HParams.from_json({k: (yours[k] if rng.random() < 0.5 else v) for k, v in mine.items()})
    return Blueprint(child_id, slots, hparams)


def _rank_key(genome: Genome) -> tuple[float, int]:
    # Genomes no network used this generation have no evidence: they rank below every score.
    fitness = genome.fitness
    return (-(fitness if fitness is not None else -math.inf), genome.id)


# ---- the strategy --------------------------------------------------------------------


class CoDeepNEAT(Strategy):
    """CoDeepNEAT: a generation is `population_size` networks assembled from blueprints and modules.

    Batch-synchronous: `ask` hands out the current generation's networks and nothing more
    until all of them are told; the last `tell` of a generation evolves modules, then
    blueprints, and re-speciates both. Blueprints are used round-robin, so each is
    evaluated at least once whenever population_size >= blueprint_population.
    """

    name = "codeepneat"

    def __init__(self, space: SearchSpace, budget: Budget, seed: int = 0, population_size: int = 8,
                 module_population: int = 12, blueprint_population: int = 6,
                 module_threshold: float = 1.0, blueprint_threshold: float = 1.0) -> None:
        super().__init__(space, budget, seed=seed)
        if min(population_size, module_population, blueprint_population) < 2:
            raise ValueError("population_size, module_population and blueprint_population must each be at "
                             "least 2; CoDeepNEAT needs genomes to compare and recombine.")
        self.population_size = population_size
        self.module_population = module_population
        self.blueprint_population = blueprint_population
        self.module_threshold = module_threshold
        self.blueprint_threshold = blueprint_threshold
        shape, _ = space.bound()
        self._flat = len(shape) == 1
        self._reduce = "global_pool" if not self._flat and "global_pool" in space.ops else "flatten"
        layer_op = "dense" if self._flat else "conv"
        if layer_op not in space.ops or self._reduce not in space.ops:
            raise SpaceError(f"space '{space.name}' lacks '{layer_op}' or '{self._reduce}', which CoDeepNEAT needs "
                             f"to write modules for input {shape}; add them under ops.")
        self.generation = 0
        self.asked = 0  # networks of this generation handed out
        self.told = 0  # and credited
        self.next_innovation = 0
        self.next_genome_id = 0
        self.next_species_id = 0
        marks: dict[str, int] = {}
        self.modules = [self._random_module(marks) for _ in range(module_population)]
        self.module_species: list[Species] = []
        self._speciate(self.modules, self.module_species, self.module_threshold)
        self.blueprints = [self._random_blueprint(marks) for _ in range(blueprint_population)]
        self.blueprint_species: list[Species] = []
        self._speciate(self.blueprints, self.blueprint_species, self.blueprint_threshold)

    # ---- counters --------------------------------------------------------------------

    def _innovation(self, key: str, marks: dict[str, int]) -> int:
        """The innovation number of a structural change; the same change shares it within `marks`."""
        if key not in marks:
            marks[key] = self.next_innovation
            self.next_innovation += 1
        return marks[key]

    def _new_id(self) -> int:
        self.next_genome_id += 1
        return self.next_genome_id - 1

    # ---- random genomes --------------------------------------------------------------

    def _random_layer(self, op: str, innovation: int) -> LayerGene:
        return LayerGene(innovation, op, {a: d.sample(self.rng) for a, d in self.space.domains(op).items()})

    def _layer_op(self, position: int) -> str:
        if self._flat:
            return "dense"
        # A module opens with a convolution; later layers are sometimes pools that shrink the map.
        return "pool" if position > 0 and "pool" in self.space.ops and self.rng.random() < 0.3 else "conv"

    def _random_module(self, marks: dict[str, int]) -> Module:
        for _ in range(SAMPLE_TRIES):
            ops = [self._layer_op(i) for i in range(self.rng.randint(1, MAX_MODULE_LAYERS))]
            # Initial genes share numbers by position and op, like NEAT's common initial structure.
            module = Module(-1, [self._random_layer(op, self._innovation(f"init:{op}:{i}", marks))
                                 for i, op in enumerate(ops)])
            if self._module_valid(module):
                module.id = self._new_id()
                return module
        raise SpaceError(f"space '{self.space.name}' accepted no random module in {SAMPLE_TRIES} tries for input "
                         f"{self.space.input_shape}; its limits are too tight for CoDeepNEAT's modules.")

    def _random_blueprint(self, marks: dict[str, int]) -> Blueprint:
        live = [s.id for s in self.module_species]
        slots = [Slot(self._innovation(f"slot:init:{i}", marks), self.rng.choice(live))
                 for i in range(self.rng.randint(1, MAX_SLOTS))]
        return Blueprint(self._new_id(), slots, self.space.sample_hparams(self.rng))

    # ---- assembly --------------------------------------------------------------------

    def _architecture(self, modules: list[Module]) -> Architecture:
        nodes = [Node.make("input")]
        out = 0
        for module in modules:
            out = module.emit(nodes, out)
        nodes.append(Node.make(self._reduce, [out]))
        nodes.append(Node.make("head", [len(nodes) - 1]))
        return Architecture(tuple(nodes))

    def _module_valid(self, module: Module) -> bool:
        """A module must at least work alone (input -> module -> reduction -> head)."""
        try:
            return self.space.is_valid(self._architecture([module]))
        except ArchitectureError:
            return False

    def _assemble(self, blueprint: Blueprint) -> tuple[Architecture, list[Module]]:
        members: dict[int, list[Module]] = {}
        for m in self.modules:
            members.setdefault(m.species, []).append(m)
        chosen: dict[int, Module] = {}
        for slot in blueprint.slots:
            if slot.species not in chosen:  # a repeated species reuses its module, as in the paper
                chosen[slot.species] = self.rng.choice(members[slot.species])
        used = [chosen[s.species] for s in blueprint.slots]
        return self._architecture(used), used

    def _network(self) -> Candidate:
        fallback: tuple[Architecture, Blueprint, list[Module]] | None = None
        for attempt in range(MAX_ASSEMBLY_TRIES):
            # Round-robin first so every blueprint gets a score; random draws on retries.
            blueprint = (self.blueprints[self.asked % len(self.blueprints)] if attempt == 0
                         else self.rng.choice(self.blueprints))
            arch, used = self._assemble(blueprint)
            if not self.space.is_valid(arch, blueprint.hparams):
                continue  # e.g. too many pools for the input, or over the parameter limit
            if self._fresh(arch, blueprint.hparams):
                return self._as_candidate(arch, blueprint, used)
            fallback = fallback or (arch, blueprint, used)
        if fallback is not None:
            # Small populations repeat themselves; a repeat is one more sample of the same genomes' fitness.
            return self._as_candidate(*fallback)
        # No draw fits (say, every blueprint stacks more pools than the input has pixels): use the
        # longest prefix of a blueprint's modules that does. A single module always fits, as
        # mutation keeps only modules that are valid alone.
        blueprint = self.blueprints[self.asked % len(self.blueprints)]
        _, used = self._assemble(blueprint)
        for k in range(len(used) - 1, 0, -1):
            arch = self._architecture(used[:k])
            if self.space.is_valid(arch, blueprint.hparams):
                self._fresh(arch, blueprint.hparams)
                return self._as_candidate(arch, blueprint, used[:k])
        raise SpaceError(f"CoDeepNEAT assembled no valid network in space '{self.space.name}' even from single "
                         "modules; raise limits.max_nodes or limits.max_params.")

    def _as_candidate(self, arch: Architecture, blueprint: Blueprint, used: list[Module]) -> Candidate:
        info = {"blueprint": blueprint.id, "modules": [m.id for m in used],
                "species": [s.species for s in blueprint.slots][:len(used)]}
        return self._candidate(arch, blueprint.hparams, generation=self.generation, info=info)

    # ---- the protocol ----------------------------------------------------------------

    def _propose(self, n: int) -> list[Candidate]:
        candidates = []
        for _ in range(max(0, min(n, self.population_size - self.asked))):
            candidates.append(self._network())
            self.asked += 1
        return candidates

    def _learn(self, evaluations: list[Evaluation]) -> None:
        super()._learn(evaluations)
        blueprints = {b.id: b for b in self.blueprints}
        modules = {m.id: m for m in self.modules}
        for evaluation in evaluations:
            info = evaluation.candidate.info
            if evaluation.candidate.generation != self.generation or info.get("blueprint") not in blueprints:
                continue  # not one of this generation's networks (e.g. told from elsewhere)
            # Failed networks score -1: their genomes are credited with that, so they are bred less.
            blueprints[info["blueprint"]].scores.append(evaluation.score)
            for module_id in dict.fromkeys(info["modules"]):  # a module used twice is credited once
                if module_id in modules:
                    modules[module_id].scores.append(evaluation.score)
            self.told += 1
            if self.told >= self.population_size:
                self._evolve()

    def warm_start(self, history: list[Evaluation]) -> None:
        """Record earlier results as told (so they are never proposed again) without crediting genomes.

        Networks of other methods are not assemblies of this search's modules, so they give
        no fitness to credit; the populations start from random genomes as usual.
        """
        self._record(history)

    # ---- evolution -------------------------------------------------------------------

    def _evolve(self) -> None:
        marks: dict[str, int] = {}  # one generation's reproduction: same change, same innovation
        self.modules = self._reproduce(self.modules, self.module_species, self.module_population,
                                       crossover_modules, lambda m: self._mutate_module(m, marks),
                                       valid=self._module_valid)
        self._speciate(self.modules, self.module_species, self.module_threshold)
        self.blueprints = self._reproduce(self.blueprints, self.blueprint_species, self.blueprint_population,
                                          crossover_blueprints, lambda b: self._mutate_blueprint(b, marks))
        live = {s.id for s in self.module_species}
        for blueprint in self.blueprints:
            for slot in blueprint.slots:
                if slot.species not in live:  # its module species died out: point it at a living one
                    slot.species = self.rng.choice(sorted(live))
        self._speciate(self.blueprints, self.blueprint_species, self.blueprint_threshold)
        self.generation += 1
        self.asked = self.told = 0

    def _reproduce(self, population: list, species: list[Species], size: int,
                   crossover: Callable[[Any, Any, random.Random, int], Any], mutate: Callable[[Any], Any],
                   valid: Callable[[Any], bool] = lambda genome: True) -> list:
        """Keep the best half of each species (at least its best), refill by crossover and mutation."""
        survivors: dict[int, list] = {}
        for s in species:
            members = sorted((g for g in population if g.species == s.id), key=_rank_key)
            if members:
                survivors[s.id] = members[:max(1, len(members) // 2)]
        kept = [g for members in survivors.values() for g in members]
        # Species that scored better breed more: weight by mean fitness above the worst species.
        means = {sid: _mean([g.fitness for g in members if g.fitness is not None]) for sid, members in
                 survivors.items()}
        worst = min((m for m in means.values() if m is not None), default=0.0)
        ids = list(survivors)
        weights = [(means[i] if means[i] is not None else worst) - worst + 0.1 for i in ids]
        children = []
        for _ in range(max(0, size - len(kept))):
            parents = survivors[self.rng.choices(ids, weights)[0]]
            if len(parents) > 1 and self.rng.random() < CROSSOVER_RATE:
                a, b = self.rng.sample(parents, 2)
                fitter, other = (a, b) if _rank_key(a) <= _rank_key(b) else (b, a)
                child = crossover(fitter, other, self.rng, self._new_id())
                if not valid(child):  # mixed attributes can break the space (e.g. two strides too many)
                    child = mutate(fitter)
                elif self.rng.random() < 0.5:
                    child = mutate(child)
            else:
                child = mutate(self.rng.choice(parents))
            child.species = -1
            children.append(child)
        return kept + children

    def _speciate(self, population: list, species: list[Species], threshold: float) -> None:
        """Assign each genome to the first species within `threshold`, else found a new one.

        Representatives persist from the previous generation, so species ids are stable;
        afterwards each species' representative becomes its best member and empty species die.
        """
        for genome in population:
            genes = genome.genes()
            home = next((s for s in species if compatibility(genes, s.representative) < threshold), None)
            if home is None:
                home = Species(self.next_species_id, genes)
                self.next_species_id += 1
                species.append(home)
            genome.species = home.id
        for s in list(species):
            members = sorted((g for g in population if g.species == s.id), key=_rank_key)
            if members:
                s.representative = members[0].genes()
            else:
                species.remove(s)

    def _mutate_module(self, parent: Module, marks: dict[str, int]) -> Module:
        for _ in range(MAX_MUTATION_TRIES):
            child = Module.from_json({**parent.to_json(), "id": -1, "scores": []})
            options = ["attribute"]
            if len(child.layers) < MAX_MODULE_LAYERS:
                options.append("add-node")
            if "add" in self.space.ops:
                options.append("add-connection")
            kind = self.rng.choice(options)
            if kind == "add-node":
                at = self.rng.randint(0, len(child.layers))  # insert before layer `at`
                after = child.layers[at - 1].innovation if at else INPUT
                op = self._layer_op(at)
                child.layers.insert(at, self._random_layer(op, self._innovation(f"node:{op}:after:{after}", marks)))
            elif kind == "add-connection":
                order = [INPUT] + [g.innovation for g in child.layers]
                present = {(s.src, s.dst) for s in child.skips}
                free = [(order[i], order[j]) for j in range(1, len(order)) for i in range(j)
                        if (order[i], order[j]) not in present]
                if not free:
                    continue
                src, dst = self.rng.choice(free)
                child.skips.append(SkipGene(self._innovation(f"skip:{src}:{dst}", marks), src, dst))
            else:
                layer = self.rng.choice(child.layers)
                domains = self.space.domains(layer.op)
                if not domains:
                    continue
                name = self.rng.choice(sorted(domains))
                layer.attrs[name] = domains[name].sample(self.rng)
            if self._module_valid(child):
                child.id = self._new_id()
                return child
        return Module.from_json({**parent.to_json(), "id": self._new_id(), "scores": []})

    def _mutate_blueprint(self, parent: Blueprint, marks: dict[str, int]) -> Blueprint:
        live = [s.id for s in self.module_species]
        child = Blueprint.from_json({**parent.to_json(), "id": self._new_id(), "scores": []})
        if len(child.slots) < MAX_SLOTS and self.rng.random() < 0.5:  # add-node: a new slot
            at = self.rng.randint(0, len(child.slots))
            after = child.slots[at - 1].innovation if at else INPUT
            child.slots.insert(at, Slot(self._innovation(f"slot:after:{after}", marks), self.rng.choice(live)))
        elif self.space.hparams and self.rng.random() < 0.5:  # attribute: one hyper-parameter
            name = self.rng.choice(sorted(self.space.hparams))
            child.hparams = child.hparams.with_(**{name: self.space.hparams[name].sample(self.rng)})
        else:  # attribute: which species fills a slot
            self.rng.choice(child.slots).species = self.rng.choice(live)
        return child

    # ---- state -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "generation": self.generation, "asked": self.asked, "told": self.told,
            "next_innovation": self.next_innovation, "next_genome_id": self.next_genome_id,
            "next_species_id": self.next_species_id,
            "modules": [m.to_json() for m in self.modules],
            "blueprints": [b.to_json() for b in self.blueprints],
            "module_species": [s.to_json() for s in self.module_species],
            "blueprint_species": [s.to_json() for s in self.blueprint_species],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for name in ("generation", "asked", "told", "next_innovation", "next_genome_id", "next_species_id"):
            setattr(self, name, int(state[name]))
        self.modules = [Module.from_json(m) for m in state["modules"]]
        self.blueprints = [Blueprint.from_json(b) for b in state["blueprints"]]
        self.module_species = [Species.from_json(s) for s in state["module_species"]]
        self.blueprint_species = [Species.from_json(s) for s in state["blueprint_species"]]


__all__ = ["Blueprint", "CoDeepNEAT", "LayerGene", "Module", "SkipGene", "Slot", "Species", "compatibility",
           "crossover_blueprints", "crossover_modules"]
