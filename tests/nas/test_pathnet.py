"""PathNet: settings, paths and mutation, module sharing, frozen modules, exact resume."""

import doctest
import json
import random
from pathlib import Path as FilePath

import pytest
import torch

from nas import pathnet as pathnet_module
from nas.pathnet import (Fabric, FabricSpec, Path, TaskData, evaluate, frozen_tensors, split_by_classes, tournament,
                         train_path, transfer)
from nas.space import SearchSpace

ROOT = FilePath(__file__).resolve().parents[2]
SPEC = FabricSpec(layers=2, modules=4, module="conv", width=4, max_active=2, kernel=3)
SHAPE = (1, 16)


@pytest.fixture(scope="module")
def data() -> TaskData:
    """A learnable toy task: the class sets which quarter of the signal is raised."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(160) % 4
    x = torch.randn(160, 1, 16, generator=g) * 0.5
    for i, label in enumerate(y.tolist()):
        x[i, 0, 4 * label:4 * label + 4] += 2.0
    return TaskData(x[:120], y[:120], x[120:], y[120:], num_classes=4)


def fabric_for(*tasks: str, seed: int = 0) -> Fabric:
    fabric = Fabric(SPEC, SHAPE, seed=seed)
    for task in tasks:
        fabric.add_task(task, 4)
    return fabric


SMALL = {"population": 4, "steps_per_evaluation": 3, "lr": 0.1, "batch_size": 16, "seed": 3}


def test_module_doctest():
    assert doctest.testmod(pathnet_module).failed == 0


def test_settings_defaults_and_clear_errors():
    assert FabricSpec.from_settings({}) == FabricSpec(layers=3, modules=10, module="conv", width=8, max_active=3)
    bad = [({"layer": 3}, "unknown setting.*'layer'"), ({"layers": 0}, r"methods\.pathnet\.layers must be a positive"),
           ({"width": "8"}, r"methods\.pathnet\.width"), ({"module": "lstm"}, r"methods\.pathnet\.module must be one"),
           ({"modules": 2, "max_active": 3}, r"max_active \(3\) exceeds modules \(2\)"),
           ({"kernel": 4}, "kernel must be odd"), ([3, 10], "must be a mapping")]
    for settings, message in bad:
        with pytest.raises(ValueError, match=message):
            FabricSpec.from_settings(settings)


def test_space_file_loads_and_its_fabric_runs_on_mnist1d_signals():
    space = SearchSpace.load(ROOT / "spaces" / "pathnet.yaml")
    spec = FabricSpec.from_settings(space.method_settings("pathnet"))
    assert (spec.layers, spec.modules, spec.max_active, spec.module) == (3, 10, 3, "conv")
    fabric = Fabric(spec, (1, 40), seed=0)
    fabric.add_task("A", 5)
    path = Path.random(spec, random.Random(1))
    assert fabric(torch.zeros(2, 1, 40), path, "A").shape == (2, 5)


def test_path_sentence_and_json_round_trip():
    path = Path(((0, 3), (1,)))
    assert path.to_sentence() == "L1:0,3|L2:1"
    assert Path.from_sentence("L1:0,3|L2:1") == path == Path.from_json(json.loads(json.dumps(path.to_json())))
    with pytest.raises(ValueError, match="L1:0,3,7"):
        Path.from_sentence("0,3;1")
    with pytest.raises(ValueError, match="L2"):
        Path(((0,), (5,))).check(SPEC)


def test_mutation_stays_in_range_and_can_regain_modules():
    rng = random.Random(0)
    path, sizes = Path(((0,), (3,))), set()
    for _ in range(500):
        path = path.mutate(rng, SPEC, rate=0.7).check(SPEC)  # check: layers, range, distinct, 1..N
        sizes.update(len(active) for active in path.layers)
    assert sizes == {1, 2}  # collided slots part again: paths do not only shrink
    default = [Path.random(SPEC, rng) for _ in range(200)]
    changed = sum(p.mutate(rng, SPEC) != p for p in default)
    assert 0 < changed < 200  # rate 1/(L*N) per slot: many copies stay as they were
    assert Path(((1, 2), (0,))).mutate(rng, SPEC, rate=0.0) == Path(((1, 2), (0,)))


def test_training_one_path_changes_paths_that_share_its_modules(data):
    fabric = fabric_for("A", "B")
    trained, sharing, disjoint = Path(((0, 1), (0,))), Path(((1,), (2,))), Path(((2, 3), (3,)))
    x = data.x_val
    with torch.no_grad():
        before = {p: fabric(x, p, "B").clone() for p in (sharing, disjoint)}
    train_path(fabric, trained, "A", data.x_train, data.y_train, steps=3, lr=0.1, batch_size=16,
               generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.equal(fabric(x, sharing, "B"), before[sharing])  # module (L1, 1) is shared
        assert torch.equal(fabric(x, disjoint, "B"), before[disjoint])  # nothing shared, task B's own head


def test_frozen_modules_stay_bit_identical_through_task_b(data):
    fabric = fabric_for("A")
    first = tournament(fabric, data, task="A", generations=3, **SMALL)
    before = fabric.snapshot()["weights"]
    transfer(fabric, first.best_path, "B", 4)
    frozen, fresh = frozen_tensors(fabric), fabric_for().state_dict()
    assert fabric.frozen == set(first.best_path.modules()) and frozen
    for key, value in fabric.state_dict().items():  # the frozen path kept, all else back to its first draw
        if key.startswith("layers."):
            assert torch.equal(value, before[key] if key in frozen else fresh[key])
    acc_a = evaluate(fabric, first.best_path, "A", data.x_val, data.y_val)

    second = tournament(fabric, data, task="B", generations=6, **SMALL)
    assert any(set(p.modules()) & fabric.frozen for r in second.records for p in r.paths)  # frozen ones were used
    after = frozen_tensors(fabric)
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)
    assert evaluate(fabric, first.best_path, "A", data.x_val, data.y_val) == acc_a  # task A is not forgotten
    trained = {f"layers.{layer}.{m}.op.weight" for r in second.records for p in r.paths for layer, m in p.modules()}
    assert all(not torch.equal(fresh[k], fabric.state_dict()[k]) for k in trained - set(frozen))


def test_tournament_is_deterministic_and_resumes_exactly(data):
    def run(fabric, **kw):
        records = []
        result = tournament(fabric, data, task="A", on_round=records.append, **SMALL, **kw)
        return result, records

    checkpoints = []
    whole, records = run(fabric_for("A"), generations=6, on_checkpoint=checkpoints.append, checkpoint_every=3)
    again, _ = run(fabric_for("A"), generations=6)
    assert records == list(whole.records) == list(again.records) and len(records) == 6
    assert [r.round for r in records] == list(range(6)) and records[-1].steps == 6 * 2 * SMALL["steps_per_evaluation"]
    assert records[0].parent == records[0].paths[records[0].winner]

    killed = checkpoints[0]  # written after round 3, as a killed run would have left it
    assert killed["round"] == 3
    json.dumps({k: v for k, v in killed.items() if k != "fabric"})  # all but the weights is JSON
    resumed, _ = run(fabric_for(), generations=6, state=killed)  # heads come back from the state
    assert list(resumed.records) == records[3:]
    assert (resumed.population, resumed.best_path, resumed.steps) == (whole.population, whole.best_path, whole.steps)
    final, other = resumed.state()["fabric"]["weights"], whole.state()["fabric"]["weights"]
    assert all(torch.equal(final[k], other[k]) for k in other)

    with pytest.raises(ValueError, match="cannot resume: lr"):
        tournament(fabric_for("A"), data, task="A", generations=6, state=killed, **{**SMALL, "lr": 0.5})


def test_tournament_stops_at_the_target_and_reports_steps(data):
    result = tournament(fabric_for("A"), data, task="A", generations=50, target_accuracy=0.0, **SMALL)
    assert (result.rounds, result.steps_to_target, result.rounds_to_target) == (1, 6, 1) and result.reached
    with pytest.raises(ValueError, match="add_task"):
        tournament(fabric_for(), data, task="A", generations=1, **SMALL)


def test_split_by_classes_keeps_and_relabels(data):
    task = split_by_classes(data, [3, 1])
    assert task.num_classes == 2 and set(task.y_train.tolist()) == {0, 1}
    assert len(task.y_train) == int(((data.y_train == 3) | (data.y_train == 1)).sum())
    assert torch.equal(task.x_train[task.y_train == 0], data.x_train[data.y_train == 3])


def test_the_fitter_path_wins_and_the_loser_becomes_a_mutated_copy_of_it(data):
    spec = FabricSpec(layers=2, modules=12, module="conv", width=4, max_active=2, kernel=3)  # room to tell paths apart
    fabric = Fabric(spec, SHAPE, seed=0)
    fabric.add_task("A", 4)
    result = tournament(fabric, data, task="A", generations=12, **SMALL)
    population = {}  # slot -> the path a round left there
    for record in result.records:
        loser = 1 - record.winner
        assert record.fitness[record.winner] >= record.fitness[loser]  # the fitter one wins
        assert record.slots[loser] == record.loser_slot
        for place, slot in enumerate(record.slots):
            if slot in population:  # what an earlier round wrote is what this round competes with
                assert record.paths[place] == population[slot]
        population[record.loser_slot] = record.child
        # The child is the winner's copy with slots moved by at most SHIFT (mod M): a loser's mutation would not be.
        for child_layer, parent_layer in zip(record.child.layers, record.parent.layers):
            assert all(any(min((c - p) % spec.modules, (p - c) % spec.modules) <= pathnet_module.SHIFT
                           for p in parent_layer) for c in child_layer)
    assert all(result.population[slot] == path for slot, path in population.items())
    assert any(r.fitness[0] != r.fitness[1] for r in result.records)  # the rule was put to the test


def test_mutation_moves_each_slot_with_probability_one_over_layers_times_slots():
    spec = FabricSpec(layers=3, modules=20, module="conv", width=4, max_active=3, kernel=3)
    path = Path(((0, 7, 14),) * 3)  # far apart: a move of at most 2 never merges two modules
    rng = random.Random(0)
    draws = 3000
    moved = sum(len(set(path.layers[i]) - set(child.layers[i])) for _ in range(draws)
                for child in [path.mutate(rng, spec)] for i in range(3))
    # Each of the L*N = 9 slots moves with probability 1/9, by a shift of -2..2 of which 4 in 5 are not 0.
    expected = 9 * (1 / 9) * (4 / 5)
    assert abs(moved / draws - expected) < 0.08, moved / draws
