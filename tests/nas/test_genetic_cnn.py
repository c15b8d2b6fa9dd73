"""Genetic CNN: codes compile to the paper's stages, the operators keep the paper's rates,
lineage and fitness follow the results told, and searches run in both loop modes."""

from __future__ import annotations

import doctest
import json
import random
from concurrent.futures import Future

import pytest
import torch

import nas.strategies.genetic_cnn as genetic_cnn
from nas.ids import derive_seed
from nas.loop import run_loop
from nas.space import SearchSpace, SpaceError
from nas.strategies.base import AskState, Strategy
from nas.strategies.genetic_cnn import (P_CROSSOVER, P_MUTATION, Q_CROSSOVER, Q_MUTATION, GeneticCNN,
                                        GeneticEncoding, crossover, mutate, roulette)
from nas.strategies.hyperband import Hyperband
from nas.train import TrainData, train
from nas.trial import Budget, Candidate, Evaluation, TrialSetting, TrialStatus
from tests.conftest import ROOT

SMALL = SearchSpace.load(ROOT / "spaces/small-cnn.yaml").bind((1, 8, 8), 10)  # no methods section: defaults
GENETIC = SearchSpace.load(ROOT / "spaces/genetic-cnn.yaml").bind((1, 40), 10)


def space_with(settings: dict) -> SearchSpace:
    return SearchSpace.from_dict({
        "limits": {"max_nodes": 40},
        "ops": {"conv": {"channels": [8, 16], "kernel_h": [3], "kernel_w": [3], "stride": [1], "batch_norm": [True],
                         "activation": ["relu"]}, "add": {}, "pool": {"kind": ["max"], "size": [2]},
                "global_pool": {}},
        "layout": {"reduce": ["global_pool"]},
        "methods": {"genetic-cnn": settings},
    }, source="x.yaml").bind((1, 8, 8), 10)


def one_stage_space(nodes: int) -> SearchSpace:
    return space_with({"stages": [{"nodes": nodes, "channels": 8}]})


def results(candidates, accs, fail=(), start=0):
    return [Evaluation(c, f"k{start + i}", status=TrialStatus.FAILED if i in fail else TrialStatus.OK,
                       val_acc=None if i in fail else acc, run_id=f"r{start + i}")
            for i, (c, acc) in enumerate(zip(candidates, accs))]


def test_docstring_example_runs(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    assert doctest.testmod(genetic_cnn).failed == 0


# ---- the encoding ------------------------------------------------------------------


def test_a_hand_code_writes_the_expected_edges() -> None:
    encoding = GeneticEncoding(SMALL)
    assert [(s.nodes, s.channels) for s in encoding.stages] == [(3, 16), (3, 32)]  # the defaults
    arch = encoding.compile(encoding.parse("1-10|0-00"))
    # stage 1: 1->2, 1->3; 2 and 3 have no successor, so the output convolves their sum
    assert [(n.op, n.get("channels"), n.inputs) for n in arch.nodes] == [
        ("input", None, ()),
        ("conv", 16, (0,)),  # default input node
        ("conv", 16, (1,)),  # node 1 has no predecessor: reads the default input
        ("conv", 16, (2,)),  # node 2 reads node 1
        ("conv", 16, (2,)),  # node 3 reads node 1
        ("add", None, (3, 4)),
        ("conv", 16, (5,)),  # default output node
        ("pool", None, (6,)),
        ("conv", 32, (7,)),  # stage 2 has no edges: a single convolution
        ("global_pool", None, (8,)),
        ("head", None, (9,)),
    ]
    conv = arch.nodes[1]
    assert (conv.get("kernel_h"), conv.get("kernel_w"), conv.get("stride"), conv.get("batch_norm"),
            conv.get("activation")) == (3, 3, 1, True, "relu")
    # 1->2->3 and 1->3: node 3 convolves the sum of nodes 1 and 2, and is the only sink
    full = encoding.compile(encoding.parse("1-11|0-00"))
    assert [(n.op, n.inputs) for n in full.nodes[1:7]] == [
        ("conv", (0,)), ("conv", (1,)), ("conv", (2,)), ("add", (2, 3)), ("conv", (4,)), ("conv", (5,))]


def test_isolated_nodes_are_dropped_so_codes_can_write_the_same_network() -> None:
    encoding = GeneticEncoding(SMALL)
    chains = {encoding.compile(encoding.parse(text)).arch_id for text in ("1-00|0-00", "0-10|0-00", "0-01|0-00")}
    assert len(chains) == 1  # one edge, whichever: input conv -> a -> b -> output conv
    chain = encoding.compile(encoding.parse("1-00|0-00"))
    assert [n.op for n in chain.nodes[1:6]] == ["conv"] * 4 + ["pool"]
    # 6 networks per stage of 3 nodes: none, one edge, 1->{2,3}, a chain of 3, {1,2}->3, all three
    assert len({encoding.compile(code).arch_id for code in encoding.all_codes()}) == 36


@pytest.mark.parametrize("nodes", [1, 2, 3, 4, 5])
def test_every_code_validates_and_the_node_bound_is_exact(nodes) -> None:
    space = one_stage_space(nodes)
    encoding = GeneticEncoding(space)
    hidden = []
    for code in encoding.all_codes():
        arch = encoding.compile(code)
        space.validate(arch)
        assert encoding.parse(encoding.text(code)) == code
        hidden.append(len(arch.nodes) - 3)  # less input, reduction and head
    assert max(hidden) == encoding.stages[0].max_hidden_nodes


def test_the_shipped_space_writes_valid_networks_from_any_code() -> None:
    search = GeneticCNN(GENETIC, Budget(1))
    assert sum(len(s.pairs) for s in search.encoding.stages) == 19  # the paper's CIFAR-10 setting
    rng = random.Random(0)
    for _ in range(200):
        code = search.encoding.random_code(rng)
        GENETIC.validate(search.encoding.compile(code), search.hparams)
    assert all(SMALL.is_valid(GeneticEncoding(SMALL).compile(c)) for c in GeneticEncoding(SMALL).all_codes())


@pytest.mark.parametrize(("settings", "message"), [
    ({"stages": [{"nodes": 3, "channels": 16}], "width": 2}, r"unknown keys \['width'\]"),
    ({"stages": {"nodes": 3}}, r"stages must be a non-empty list"),
    ({"stages": [{"nodes": 3}]}, r"stages\[0\] must be a mapping with exactly 'nodes' and 'channels'"),
    ({"stages": [{"nodes": 10, "channels": 8}]}, r"stages\[0\].nodes=10 must be an integer from 1 to 9"),
    ({"stages": [{"nodes": 3, "channels": 48}]}, r"stages\[0\].channels=48 is not one of the conv channels"),
    ({"stages": [{"nodes": 3, "channels": 8}], "reduce": "flatten"}, r"reduce='flatten' must be one of"),
    # 3 x 19 convolutions and adds at most, 2 pools and the reduction
    ({"stages": [{"nodes": 9, "channels": 8}] * 3}, r"can write 60 hidden nodes, over the space's limits.max_nodes"),
])
def test_a_malformed_section_names_the_key_and_the_fix(settings, message) -> None:
    with pytest.raises(SpaceError, match=r"^x.yaml: methods.genetic-cnn.*" + message):
        GeneticCNN(space_with(settings), Budget(1))


def test_a_space_without_add_or_conv_is_refused_with_the_fix() -> None:
    with pytest.raises(SpaceError, match=r"lacks add \(to sum a node's inputs\)"):
        GeneticCNN(SearchSpace.load(ROOT / "spaces/bench-mnist1d.yaml").bind((1, 40), 10), Budget(1))
    with pytest.raises(SpaceError, match="has no 'conv' op"):
        GeneticCNN(SearchSpace.load(ROOT / "spaces/mlp.yaml").bind((20,), 3), Budget(1))


# ---- the operators -----------------------------------------------------------------


def test_roulette_weighs_by_fitness_above_the_worst_and_never_draws_a_failure() -> None:
    rng = random.Random(0)
    drawn = roulette([0.5, None, 0.6, 0.8], 40_000, rng)
    shares = [drawn.count(i) / len(drawn) for i in range(4)]
    assert shares[0] == shares[1] == 0  # the worst has r - r_min = 0; the failure has no fitness
    assert shares[2] == pytest.approx(0.25, abs=0.01) and shares[3] == pytest.approx(0.75, abs=0.01)
    assert sorted(set(roulette([0.7, 0.7, None], 1000, rng))) == [0, 1]  # all equal: uniform
    assert roulette([None, None], 5, rng) == []


def test_mutation_flips_the_papers_fraction_of_bits() -> None:
    rng = random.Random(1)
    code = ((0,) * 3, (1,) * 6, (0,) * 10)
    flips = changed = 0
    draws = 20_000
    for _ in range(draws):
        child = mutate(code, rng)
        n = sum(a != b for x, y in zip(code, child) for a, b in zip(x, y))
        flips, changed = flips + n, changed + (n > 0)
    assert flips / (draws * 19) == pytest.approx(P_MUTATION * Q_MUTATION, abs=0.002)  # 0.04 per bit
    assert changed / draws == pytest.approx(P_MUTATION * (1 - (1 - Q_MUTATION) ** 19), abs=0.015)


def test_crossover_swaps_whole_stages_at_the_papers_rates() -> None:
    rng = random.Random(2)
    pairs, swapped_stages, crossed = 20_000, 0, 0
    for _ in range(pairs):
        a, b = [("a", 1), ("a", 2), ("a", 3)], [("b", 1), ("b", 2), ("b", 3)]
        swapped = crossover(a, b, rng)
        assert all((a[s][0], b[s][0]) == (("b", "a") if s in swapped else ("a", "b")) for s in range(3))
        assert all(a[s][1] == b[s][1] == s + 1 for s in range(3))  # stages keep their place
        swapped_stages, crossed = swapped_stages + len(swapped), crossed + bool(swapped)
    assert swapped_stages / (3 * pairs) == pytest.approx(P_CROSSOVER * Q_CROSSOVER, abs=0.005)
    assert crossed / pairs == pytest.approx(P_CROSSOVER * (1 - (1 - Q_CROSSOVER) ** 3), abs=0.01)


# ---- the strategy ------------------------------------------------------------------


def test_a_generation_waits_for_all_its_results_then_breeds_from_the_fit() -> None:
    search = GeneticCNN(SMALL, Budget(3), seed=0, population_size=4)
    first = [*search.ask(3), *search.ask(3)]
    assert len(first) == 4 and {c.generation for c in first} == {0} and all(not c.parents for c in first)
    assert search.ask(2).state == AskState.WAIT
    search.tell(results(first[:2], [0.5, 0.9]))
    assert search.ask(1).state == AskState.WAIT  # half a generation is not a generation
    search.tell(results(first[2:], [0.7, 0.0], fail=(1,), start=2))
    children = search.ask(10)
    assert len(children) == 4 and {c.generation for c in children} == {1}
    # r0 is the worst successful one and r3 failed: only r1 and r2 may be parents
    assert set().union(*(c.parents for c in children)) <= {"r1", "r2"}
    assert all(c.parents for c in children)


def test_crossover_children_name_both_parents_and_take_their_stages(monkeypatch) -> None:
    monkeypatch.setattr(genetic_cnn, "P_CROSSOVER", 1.0)
    monkeypatch.setattr(genetic_cnn, "Q_CROSSOVER", 0.5)
    monkeypatch.setattr(genetic_cnn, "P_MUTATION", 0.0)
    search = GeneticCNN(GENETIC, Budget(3), seed=3, population_size=6)
    first = search.ask(6)
    search.tell(results(first, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]))
    code_of = {f"r{i}": search.encoding.parse(c.info["genetic_code"]) for i, c in enumerate(first)}
    children = search.ask(6)
    two = [c for c in children if len(c.parents) == 2]
    assert two, "with p_C = 1 and q_C = 0.5 some pair must mix"
    for child in children:
        code = search.encoding.parse(child.info["genetic_code"])
        for s, bits in enumerate(code):  # every stage comes from a parent it names
            assert any(code_of[p][s] == bits for p in child.parents)
        if len(child.parents) == 2:
            a, b = (code_of[p] for p in child.parents)
            assert any(bits == a[s] != b[s] for s, bits in enumerate(code))
            assert any(bits == b[s] != a[s] for s, bits in enumerate(code))


def test_a_network_trained_before_is_trained_again_and_ranked_by_its_mean(monkeypatch) -> None:
    monkeypatch.setattr(genetic_cnn, "P_CROSSOVER", 0.0)
    monkeypatch.setattr(genetic_cnn, "P_MUTATION", 0.0)
    search = GeneticCNN(SMALL, Budget(3), seed=1, population_size=3)
    first = search.ask(3)
    search.tell(results(first, [0.2, 0.4, 0.9]))
    copies = search.ask(3)  # no crossover, no mutation: copies of the selected
    assert all(c.arch in {f.arch for f in first} for c in copies)
    # each training of a network after its first is a trial of its own: its nonce counts the earlier ones
    proposed = [*first, *copies]
    assert [c.nonce for c in proposed] == [sum(p.arch == c.arch for p in proposed[:i]) or None
                                           for i, c in enumerate(proposed)]
    assert len({c.trial_key(TrialSetting("data")) for c in proposed}) == 6
    search.tell(results(copies, [0.5, 0.6, 0.7], start=3))
    code = search.encoding.parse(copies[0].info["genetic_code"])
    trained = [e for e in search.history if e.candidate.arch == copies[0].arch]
    assert len(trained) >= 2
    mean, parent = search.fitness(code)
    assert mean == pytest.approx(sum(e.val_acc for e in trained) / len(trained)) and parent == trained[-1].run_id


def test_a_population_of_failures_starts_afresh_without_parents() -> None:
    search = GeneticCNN(SMALL, Budget(3), seed=0, population_size=3)
    first = search.ask(3)
    search.tell(results(first, [0, 0, 0], fail=(0, 1, 2)))
    fresh = search.ask(3)
    assert [c.generation for c in fresh] == [1, 1, 1] and all(not c.parents for c in fresh)


def test_generations_bound_the_search() -> None:
    search = GeneticCNN(SMALL, Budget(3), seed=0, population_size=2, generations=1)
    for g in range(2):
        batch = search.ask(5)
        assert {c.generation for c in batch} == {g}
        search.tell(results(batch, [0.3, 0.6], start=2 * g))
    asked = search.ask(1)
    assert asked.done and "all 1 generations after the initial population" in asked.reason


def play(search: GeneticCNN, generations: int, reverse: bool = False) -> list[dict]:
    proposed = []
    for g in range(generations):
        batch = list(search.ask(100))
        proposed += [c.to_json() for c in batch]
        told = results(batch, [derive_seed(c.info["genetic_code"], g) % 100 / 100 for c in batch], fail=(1,),
                       start=100 * g)
        for evaluation in (reversed(told) if reverse else told):  # one at a time, as an async loop tells
            search.tell([evaluation])
    return proposed


def test_same_seed_and_results_replay_whatever_order_they_are_told_in() -> None:
    a = play(GeneticCNN(GENETIC, Budget(3), seed=7, population_size=6), 4)
    assert a == play(GeneticCNN(GENETIC, Budget(3), seed=7, population_size=6), 4)
    assert a == play(GeneticCNN(GENETIC, Budget(3), seed=7, population_size=6), 4, reverse=True)
    assert a != play(GeneticCNN(GENETIC, Budget(3), seed=8, population_size=6), 4)


def test_state_dict_round_trip_continues_identically() -> None:
    a = GeneticCNN(GENETIC, Budget(3), seed=4, population_size=4)
    play(a, 2)
    half = a.ask(2)
    a.tell(results(half, [0.3, 0.8], start=500))
    b = GeneticCNN(GENETIC, Budget(3), seed=99, population_size=4)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert play(a, 2) == play(b, 2)


def test_warm_start_seeds_the_population_with_the_best_earlier_codes() -> None:
    earlier = GeneticCNN(GENETIC, Budget(3), seed=1, population_size=4)
    history = []
    for g in range(2):
        batch = earlier.ask(4)
        history += results(batch, [0.1, 0.9, 0.5, 0.3], start=4 * g)
        earlier.tell(history[-4:])
    best = max(history, key=lambda e: e.score)
    search = GeneticCNN(GENETIC, Budget(3), seed=2, population_size=4)
    search.warm_start(history)
    first = search.ask(4)
    assert first[0].info["genetic_code"] == best.candidate.info["genetic_code"]
    assert first[0].parents == (best.run_id,) and first[0].nonce is not None  # trained before: a repeat
    # the earlier results count in its fitness: the mean of all of them
    same = [e.val_acc for e in history if e.candidate.arch == best.candidate.arch]
    assert search.fitness(search.encoding.parse(best.candidate.info["genetic_code"])) == (
        pytest.approx(sum(same) / len(same)), history[max(i for i, e in enumerate(history)
                                                         if e.candidate.arch == best.candidate.arch)].run_id)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="population_size=1 is too small"):
        GeneticCNN(SMALL, Budget(1), population_size=1)
    with pytest.raises(ValueError, match="generations=-1"):
        GeneticCNN(SMALL, Budget(1), generations=-1)


# ---- in the loop, and in training ----------------------------------------------------


def fake_submit(store: dict[str, Evaluation]):
    setting = TrialSetting("fake")

    def submit(candidate: Candidate) -> Future[Evaluation]:
        key = candidate.trial_key(setting)
        if key not in store:
            score = derive_seed(key, "score") % 1000 / 1000
            store[key] = Evaluation(candidate, key, status=TrialStatus.OK if score >= 0.1 else TrialStatus.FAILED,
                                    val_acc=score if score >= 0.1 else None, run_id=f"run-{len(store)}")
        future: Future[Evaluation] = Future()
        future.set_result(store[key])
        return future

    return submit


@pytest.mark.parametrize("asynchronous", [False, True])
@pytest.mark.parametrize("scheduled", [False, True])
def test_the_loop_reaches_its_trials_on_a_small_space(asynchronous, scheduled) -> None:
    def make() -> tuple[GeneticCNN, Strategy]:
        search = GeneticCNN(SMALL.with_hparams(epochs=9), Budget(9), seed=5, population_size=4)
        return search, Hyperband(search, min_epochs=1, max_epochs=9, eta=3) if scheduled else search

    store: dict[str, Evaluation] = {}
    search, strategy = make()
    outcome = run_loop(strategy, fake_submit(store), trials=40, concurrency=3, asynchronous=asynchronous)
    assert len(outcome.evaluations) == 40
    failed = {e.run_id for e in outcome.evaluations if not e.ok}
    assert not any(set(e.candidate.parents) & failed for e in outcome.evaluations if not e.candidate.resume_from)
    assert search.generation >= 3  # 36 networks, 40 trials: networks are trained again, never a stall
    trained = len(store)
    again = run_loop(make()[1], fake_submit(store), trials=40, concurrency=3, asynchronous=asynchronous)
    assert len(store) == trained  # a rerun replays: every trial is a cache hit
    assert [e.trial_key for e in again.evaluations] == [e.trial_key for e in outcome.evaluations]


def test_a_compiled_network_of_the_shipped_space_trains() -> None:
    search = GeneticCNN(GENETIC, Budget(1), seed=0)
    arch = search.encoding.compile(search.encoding.parse("1-11|1-11-111|1-11-111-1111"))
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 1, 40, generator=generator), torch.randint(0, 10, (96,), generator=generator)
    data = TrainData(x[:64], y[:64], x[64:80], y[64:80], x[80:], y[80:], (1, 40), 10, "toy")
    outcome = train(Candidate(arch, search.hparams, Budget(1)), data, seed=0, device="cpu")
    assert outcome.evaluation.ok, outcome.evaluation.reason
    assert outcome.evaluation.epochs_trained == 1
    assert outcome.evaluation.params == GENETIC.validate(arch).params
