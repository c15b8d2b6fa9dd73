"""CoDeepNEAT against fake results: assembly, credit, speciation, NEAT operators, replay."""

import doctest
import json
import random

import pytest
import torch

import nas.strategies.codeepneat as codeepneat_module
from nas.build import build
from nas.space import SearchSpace
from nas.space.architecture import HParams
from nas.strategies.codeepneat import (INPUT, Blueprint, CoDeepNEAT, LayerGene, Module, SkipGene, Slot,
                                       compatibility, crossover_blueprints, crossover_modules)
from nas.strategies.base import AskState
from nas.strategies.evolution import AgingEvolution
from nas.trial import Budget, Evaluation

SPACES = [("spaces/cnn.yaml", (1, 8, 8)), ("spaces/cnn.yaml", (1, 40)), ("spaces/mlp.yaml", (20,))]


class FakeTrainer:
    """Scores 0.1 per conv or dense node (capped at 0.99), so bigger networks win; run ids count up."""

    def __init__(self) -> None:
        self.runs = 0

    def __call__(self, candidates):
        results = []
        for c in candidates:
            layers = sum(n.op in ("conv", "dense") for n in c.arch.nodes)
            results.append(Evaluation(c, trial_key=str(self.runs), val_acc=min(0.1 * layers, 0.99),
                                      run_id=f"r{self.runs}"))
            self.runs += 1
        return results


def run(search, generations, trainer=None):
    """Ask and tell whole generations; every candidate and evaluation, in order."""
    trainer = trainer or FakeTrainer()
    candidates, evaluations = [], []
    for _ in range(generations):
        batch = search.ask(search.population_size)
        results = trainer(batch)
        search.tell(results)
        candidates.extend(batch)
        evaluations.extend(results)
    return candidates, evaluations


def conv(innovation, channels=8, kernel=3):
    return LayerGene(innovation, "conv", {"channels": channels, "kernel_h": kernel, "kernel_w": kernel, "stride": 1,
                                          "batch_norm": False, "activation": "relu"})


def test_docstring_example_runs():
    assert doctest.testmod(codeepneat_module).failed == 0


@pytest.mark.parametrize("path,shape", SPACES)
def test_assembled_networks_are_valid_buildable_and_name_their_genomes(path, shape):
    space = SearchSpace.load(path).bind(shape, 10)
    search = CoDeepNEAT(space, Budget(1), seed=0)
    candidates, _ = run(search, 3)
    assert len(candidates) == 3 * 8
    for c in candidates:
        space.validate(c.arch, c.hparams)
        assert build(c.arch, shape, 10)(torch.zeros(2, *shape)).shape == (2, 10)
        assert set(c.info) == {"blueprint", "modules", "species"}
        assert len(c.info["modules"]) == len(c.info["species"]) >= 1
        assert json.loads(json.dumps(c.to_json())) == c.to_json()
        assert c.arch.nodes[-2].op == ("flatten" if len(shape) == 1 else "global_pool")
    assert [c.generation for c in candidates] == [g for g in range(3) for _ in range(8)]


def test_a_generation_is_handed_out_whole_and_no_more_until_told():
    space = SearchSpace.load("spaces/cnn.yaml").bind((1, 8, 8), 10)
    search = CoDeepNEAT(space, Budget(1), seed=1)
    first = list(search.ask(5)) + list(search.ask(5))
    waiting = search.ask(3)  # the generation is out: nothing until its results are told
    assert len(first) == 8 and waiting.state == AskState.WAIT and not waiting.candidates and not search.done()
    trainer = FakeTrainer()
    search.tell(trainer(first[:5]))
    assert search.generation == 0  # half told: nothing evolves yet
    search.tell(trainer(first[5:]))
    second = search.ask(8)
    assert search.generation == 1 and second.state == AskState.READY and len(second) == 8
    assert len(search.modules) == 12 and len(search.blueprints) == 6


def test_fitness_is_the_mean_of_the_scores_each_genome_received():
    space = SearchSpace.load("spaces/cnn.yaml").bind((1, 8, 8), 10)
    search = CoDeepNEAT(space, Budget(1), seed=2)
    batch = search.ask(7)  # one short of a generation, so the populations stay put
    scores = [0.1 * (i + 1) for i in range(7)]
    search.tell([Evaluation(c, str(i), val_acc=s, run_id=f"r{i}") for i, (c, s) in enumerate(zip(batch, scores))])
    for blueprint in search.blueprints:
        received = [s for c, s in zip(batch, scores) if c.info["blueprint"] == blueprint.id]
        assert blueprint.scores == pytest.approx(received)
        assert blueprint.fitness == (pytest.approx(sum(received) / len(received)) if received else None)
    for module in search.modules:
        received = [s for c, s in zip(batch, scores) if module.id in c.info["modules"]]
        assert module.fitness == (pytest.approx(sum(received) / len(received)) if received else None)
    # a slot's module belongs to the species the slot names, and repeats reuse the module
    by_id = {m.id: m for m in search.modules}
    for c in batch:
        assert [by_id[m].species for m in c.info["modules"]] == c.info["species"]
        pairs = set(zip(c.info["species"], c.info["modules"]))
        assert len(pairs) == len(set(c.info["species"]))


def test_five_generations_speciate_grow_innovations_and_keep_the_best():
    space = SearchSpace.load("spaces/cnn.yaml").bind((1, 8, 8), 10)
    search = CoDeepNEAT(space, Budget(1), seed=3)
    innovations = search.next_innovation
    _, evaluations = run(search, 5)
    assert search.generation == 5
    assert search.module_species and search.blueprint_species
    assert {m.species for m in search.modules} == {s.id for s in search.module_species}
    assert {b.species for b in search.blueprints} == {s.id for s in search.blueprint_species}
    live = {s.id for s in search.module_species}
    assert all(slot.species in live for b in search.blueprints for slot in b.slots)
    assert search.next_innovation > innovations
    best_per_generation = [max(e.score for e in evaluations[g * 8:(g + 1) * 8]) for g in range(5)]
    assert best_per_generation[-1] >= best_per_generation[0]
    running = [max(best_per_generation[:g + 1]) for g in range(5)]
    assert running == sorted(running) and search.best.score == running[-1]


def test_crossover_aligns_genes_by_innovation_number():
    fitter = Module(0, [conv(1, channels=8), conv(2, channels=8), conv(5, channels=8)], [SkipGene(7, INPUT, 5)],
                    scores=[0.9])
    other = Module(1, [conv(1, channels=64), conv(3, channels=64), conv(2, channels=64)], scores=[0.1])
    seen = set()
    for seed in range(20):
        child = crossover_modules(fitter, other, random.Random(seed), child_id=9)
        # structure (order, disjoint 5, the skip) is the fitter's; 3 exists only in the weaker parent
        assert [g.innovation for g in child.layers] == [1, 2, 5]
        assert [(s.innovation, s.src, s.dst) for s in child.skips] == [(7, INPUT, 5)]
        assert child.layers[2].attrs["channels"] == 8  # disjoint genes come from the fitter parent
        seen.add((child.layers[0].attrs["channels"], child.layers[1].attrs["channels"]))
        assert child.id == 9 and child.scores == []
    assert {8, 64} == {c for pair in seen for c in pair}  # matching genes come from either parent
    bp_fit = Blueprint(0, [Slot(1, 10), Slot(2, 11)], HParams(lr=0.001))
    bp_other = Blueprint(1, [Slot(2, 12), Slot(4, 13)], HParams(lr=0.002))
    children = [crossover_blueprints(bp_fit, bp_other, random.Random(s), 5) for s in range(20)]
    assert all([s.innovation for s in c.slots] == [1, 2] and c.slots[0].species == 10 for c in children)
    assert {c.slots[1].species for c in children} == {11, 12}
    assert {c.hparams.lr for c in children} == {0.001, 0.002}


def test_compatibility_is_zero_for_identical_genomes_and_grows_with_disjoint_genes():
    base = Module(0, [conv(1), conv(2)])
    assert compatibility(base.genes(), Module(1, [conv(1), conv(2)]).genes()) == 0
    one_more = Module(2, [conv(1), conv(4), conv(2)]).genes()  # 4 is excess beyond 2
    two_more = Module(3, [conv(1), conv(4), conv(2)], [SkipGene(5, INPUT, 2), SkipGene(6, 1, 2)]).genes()
    d0, d1, d2 = (compatibility(base.genes(), g) for g in (base.genes(), one_more, two_more))
    assert d0 < d1 < d2
    # disjoint (inside the other's range) counts as well as excess
    assert compatibility(Module(4, [conv(1), conv(3)]).genes(), Module(5, [conv(2), conv(3)]).genes()) > 0
    # differing attributes of matching genes add the mean fraction that differ
    assert compatibility(base.genes(), Module(6, [conv(1, channels=16), conv(2)]).genes(), c3=1.0) == \
        pytest.approx(0.5 * 1 / 7)


def test_same_seed_and_results_give_the_same_candidates():
    space = SearchSpace.load("spaces/cnn.yaml").bind((1, 40), 10)
    a, _ = run(CoDeepNEAT(space, Budget(1), seed=4), 4)
    b, _ = run(CoDeepNEAT(space, Budget(1), seed=4), 4)
    c, _ = run(CoDeepNEAT(space, Budget(1), seed=5), 4)
    assert [x.to_json() for x in a] == [x.to_json() for x in b]
    assert [x.to_json() for x in a] != [x.to_json() for x in c]


def test_state_dict_round_trips_through_json_and_continues_identically():
    space = SearchSpace.load("spaces/mlp.yaml").bind((20,), 10)
    original = CoDeepNEAT(space, Budget(1), seed=6)
    trainer = FakeTrainer()
    run(original, 2, trainer)
    original.tell(trainer(original.ask(3)))  # stop mid-generation
    restored = CoDeepNEAT(space, Budget(1), seed=99)
    restored.load_state_dict(json.loads(json.dumps(original.state_dict())))
    assert restored.state_dict() == original.state_dict()
    trainer_b = FakeTrainer()
    trainer_b.runs = trainer.runs
    rest_a, rest_b = original.ask(5), restored.ask(5)  # the rest of the interrupted generation
    original.tell(trainer(rest_a))
    restored.tell(trainer_b(rest_b))
    more_a, _ = run(original, 2, trainer)
    more_b, _ = run(restored, 2, trainer_b)
    assert [x.to_json() for x in [*rest_a, *more_a]] == [x.to_json() for x in [*rest_b, *more_b]]
    with pytest.raises(ValueError, match="codeepneat"):
        AgingEvolution(space, Budget(1)).load_state_dict(original.state_dict())


def test_warm_start_records_history_without_crediting_genomes():
    space = SearchSpace.load("spaces/cnn.yaml").bind((1, 8, 8), 10)
    donor = CoDeepNEAT(space, Budget(1), seed=7)
    _, history = run(donor, 1)
    search = CoDeepNEAT(space, Budget(1), seed=8)
    search.warm_start(history)
    assert len(search.history) == 8 and all(not m.scores for m in search.modules)
    assert search.generation == 0 and not search.done()


def test_too_small_populations_are_rejected():
    space = SearchSpace.load("spaces/cnn.yaml").bind((1, 8, 8), 10)
    with pytest.raises(ValueError, match="at least 2"):
        CoDeepNEAT(space, Budget(1), blueprint_population=1)
