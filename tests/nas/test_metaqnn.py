"""MetaQNN: valid layer chains of each space, the paper's epsilon schedule and Q-update,
learning from rewards, determinism and state round trips, failures and batch asks.

No training: a result is a deterministic function of the architecture.
"""

from __future__ import annotations

import doctest
import json
from collections import Counter

import pytest
import yaml

import nas.strategies.metaqnn as metaqnn_module
from nas.ids import derive_seed
from nas.space import Architecture, HParams, Node, SearchSpace
from nas.strategies import Hyperband
from nas.strategies.base import ProtocolError, Strategy
from nas.strategies.metaqnn import (ALPHA, DENSE_SIZE, EPSILON_SCHEDULE, MAX_REDRAWS, Q_INIT, REPLAY, MetaQNN,
                                   epsilon_at)
from nas.strategies.random_search import RandomSearch
from nas.trial import Budget, Evaluation, TrialStatus
from tests.conftest import ROOT

SPACES = [("cnn.yaml", (1, 8, 8)), ("conv1d.yaml", (1, 40)), ("mlp.yaml", (64,)), ("flat.yaml", (30,))]


def bound(name: str, shape: tuple[int, ...]) -> SearchSpace:
    return SearchSpace.load(ROOT / "spaces" / name).bind(shape, 10)


def pseudo_score(arch: Architecture) -> float:
    return derive_seed(arch.arch_id, "score") % 1000 / 1000


def results(candidates, score=pseudo_score) -> list[Evaluation]:
    return [Evaluation(c, trial_key=str(i), val_acc=score(c.arch)) for i, c in enumerate(candidates)]


def drive(search: MetaQNN, rounds: int, n: int = 3, score=pseudo_score) -> list:
    asked = []
    for _ in range(rounds):
        batch = list(search.ask(n))
        search.tell(results(batch, score))
        asked.extend(batch)
    return asked


def ids(candidates) -> list:
    return [(c.arch.arch_id, c.hparams, c.info["epsilon"]) for c in candidates]


def test_docstring_example_runs():
    assert doctest.testmod(metaqnn_module).failed == 0


@pytest.mark.parametrize(("name", "shape"), SPACES)
def test_proposals_are_valid_chains_that_keep_the_papers_rules(name, shape):
    space = bound(name, shape)
    search = MetaQNN(space, Budget(1), seed=3, trials=30)
    candidates = drive(search, 10)  # epsilon 1.0 for 17 networks, then greedier
    assert len({c.arch.arch_id for c in candidates}) == len(candidates) == 30
    assert len({c.hparams for c in candidates}) == 1  # one seeded sample trains them all
    conv_blocks = [int(v) for v in space.layout_domain("conv_blocks", 0).values()] if "conv" in space.ops else [0]
    dense_layers = [int(v) for v in space.layout_domain("dense_layers", 0).values()]
    for c in candidates:
        plan = space.validate(c.arch, c.hparams)
        nodes = c.arch.nodes
        ops = [n.op for n in nodes]
        assert all(n.inputs == (i - 1,) for i, n in enumerate(nodes[1:], start=1))  # a chain
        for node in nodes:
            for attr, value in node.attrs:
                assert space.domains(node.op)[attr].contains(value), (node, attr)
        reduce = next(i for i, op in enumerate(ops) if op in ("flatten", "global_pool"))
        assert ops[reduce + 1:-1] == ["dense"] * (len(ops) - reduce - 2)  # dense layers only after the reduction
        assert set(ops[1:reduce]) <= {"signal", "conv", "pool"}
        assert all(ops[i - 1] == "conv" for i, op in enumerate(ops) if op == "pool")  # never pool after pool
        reduced = plan.nodes[reduce].in_shapes[0]
        if len(reduced) > 1:  # flatten only small representations (the paper's threshold for dense layers)
            assert ops[reduce] == "global_pool" or max(reduced[1:]) <= DENSE_SIZE
        assert min(conv_blocks) <= ops.count("conv") <= max(conv_blocks)
        assert min(dense_layers) <= ops.count("dense") <= max(dense_layers)
        units = [n.get("units") for n in nodes if n.op == "dense"]
        assert units == sorted(units, reverse=True)  # dense units never grow
        assert len(nodes) - 2 <= space.max_nodes and plan.params <= space.max_params
        if len(shape) < 3:
            assert all(n.get("kernel_h") == 1 for n in nodes if n.op == "conv")
        assert len(search._path(c.arch)) == c.info["steps"]  # the trajectory is recovered from the network
    if name == "mlp.yaml":
        assert all(set(n.op for n in c.arch.nodes) <= {"input", "flatten", "dense", "head"} for c in candidates)
    else:
        assert any("conv" in [n.op for n in c.arch.nodes] for c in candidates)


def test_epsilon_schedule_is_the_papers_scaled_to_the_trials():
    assert Counter(epsilon_at(i, 2700) for i in range(2700)) == {e: n for e, n in EPSILON_SCHEDULE}
    steps = [epsilon_at(i, 100) for i in range(120)]
    assert steps[:56] == [1.0] * 56 and steps[56] == 0.9
    assert steps == sorted(steps, reverse=True) and set(steps) == {e for e, _ in EPSILON_SCHEDULE}
    assert steps[99:] == [0.1] * 21  # past the horizon it stays at the last step
    space = bound("mlp.yaml", (64,))
    search = MetaQNN(space, Budget(1), seed=0, trials=20)
    told = drive(search, 20, n=1)
    assert [c.info["epsilon"] for c in told] == [epsilon_at(i, 20) for i in range(20)]
    assert search.report()["epsilon"] == 0.1
    assert MetaQNN(space, Budget(1)).trials == 100  # the default horizon


def small_cnn() -> SearchSpace:
    return bound("small-cnn.yaml", (1, 8, 8))


def test_q_update_follows_the_papers_formula_and_replay_repeats_it():
    search = MetaQNN(small_cnn(), Budget(1), seed=0)
    conv = {"channels": 16, "kernel_h": 3, "kernel_w": 3, "stride": 1, "batch_norm": True, "activation": "relu"}
    arch = Architecture((Node.make("input"), Node.make("conv", [0], **conv), Node.make("pool", [1], kind="max", size=2),
                         Node.make("global_pool", [2]), Node.make("head", [3])))
    path = search._path(arch)
    assert [a for _, a in path] == ["conv 3x3 s1 c16", "pool max 2", "global_pool", "head"]
    assert [s.size for s, _ in path] == [8, 8, 4, 0]
    q = lambda i: search.q[path[i][0].key][path[i][1]]  # noqa: E731

    search._update(path, 0.9)
    last = (1 - ALPHA) * Q_INIT + ALPHA * 0.9
    assert q(3) == pytest.approx(last)
    # Each earlier step moves towards the best Q of the state it led to; untried actions count at Q_INIT.
    assert q(2) == pytest.approx((1 - ALPHA) * Q_INIT + ALPHA * max(last, Q_INIT))
    assert q(1) == pytest.approx((1 - ALPHA) * Q_INIT + ALPHA * q(2))
    assert q(0) == pytest.approx((1 - ALPHA) * Q_INIT + ALPHA * Q_INIT)  # a conv state with untried actions
    before = q(2)
    search._update(path, 0.0)
    assert q(3) == pytest.approx((1 - ALPHA) * last)
    assert q(2) == pytest.approx((1 - ALPHA) * before + ALPHA * Q_INIT)  # dense actions still untried at 0.5

    # Telling a result stores it and replays REPLAY trajectories drawn from memory: here only it.
    fresh = MetaQNN(small_cnn(), Budget(1), seed=0)
    (candidate,) = fresh.ask(1)
    fresh.tell([Evaluation(candidate, "k", val_acc=0.9)])
    steps = fresh._path(candidate.arch)
    assert len(fresh.memory) == 1 and fresh.memory[0] == (steps, 0.9)
    assert fresh.q[steps[-1][0].key]["head"] == pytest.approx(0.9 - (0.9 - Q_INIT) * (1 - ALPHA) ** REPLAY)


def test_it_learns_the_layer_the_reward_favours():
    # A reward the states can see: the paper's state is the layer, not the whole prefix,
    # so a reward that hinges on an earlier layer (the first conv's width) aliases.
    def deep(arch: Architecture) -> float:
        return 0.9 if [n.op for n in arch.nodes].count("conv") == 3 else 0.2

    search = MetaQNN(small_cnn(), Budget(1), seed=1, trials=30)
    drive(search, 10, n=3, score=deep)
    greedy, _ = search._walk(0.0)
    assert deep(greedy) == 0.9
    # Fresh proposals are the exploring ones (greedy walks repeat known networks), so the
    # policy itself is measured: its walks at the final epsilon beat random walks.
    def mean(epsilon: float) -> float:
        return sum(deep(search._walk(epsilon)[0]) for _ in range(40)) / 40

    assert mean(0.1) > mean(1.0) + 0.15
    top = search.report()["q"]
    assert top[0]["q"] > Q_INIT and all(a["q"] >= b["q"] for a, b in zip(top, top[1:]))


def test_same_seed_and_results_give_the_same_search_and_state_round_trips():
    space = bound("cnn.yaml", (1, 8, 8))
    a, b = MetaQNN(space, Budget(1), seed=7, trials=12), MetaQNN(space, Budget(1), seed=7, trials=12)
    assert ids(drive(a, 3)) == ids(drive(b, 3))
    assert a.q == b.q and a.report() == b.report()
    assert ids(MetaQNN(space, Budget(1), seed=8, trials=12).ask(3)) != ids(MetaQNN(space, Budget(1), seed=7).ask(3))

    state = json.loads(json.dumps(a.state_dict()))  # plain JSON
    resumed = MetaQNN(space, Budget(1), seed=99)
    resumed.load_state_dict(state)
    assert (resumed.trials, resumed.hparams, resumed.memory) == (a.trials, a.hparams, a.memory)
    assert ids(drive(a, 3)) == ids(drive(resumed, 3))  # epsilon moves to 0.1 on the way
    assert a.q == resumed.q
    with pytest.raises(ValueError, match="cannot be loaded"):
        RandomSearch(space, Budget(1)).load_state_dict(state)


def test_failures_reward_zero_errors_teach_nothing_and_batches_keep_the_protocol():
    space = bound("conv1d.yaml", (1, 40))
    search = MetaQNN(space, Budget(1), seed=2)
    batch = search.ask(4)
    assert len(batch) == 4 and search.pending == 4 and len({c.arch.arch_id for c in batch}) == 4
    failed = Evaluation(batch[0], "f", status=TrialStatus.FAILED, reason="diverged", val_acc=None)
    error = Evaluation(batch[1], "e", status=TrialStatus.ERROR, reason="out of memory")
    search.tell([failed, error, *results(batch[2:])])
    assert [reward for _, reward in search.memory] == [0.0, pseudo_score(batch[2].arch), pseudo_score(batch[3].arch)]
    assert search.pending == 0 and len(search.history) == 4
    last = search._path(batch[0].arch)[-1]
    assert search.q[last[0].key][last[1]] < Q_INIT
    with pytest.raises(ProtocolError, match="tell only what ask returned"):
        search.tell(results(batch[:1]))
    assert len(search.ask(5)) == 5


def test_a_tiny_space_waits_for_pending_results_then_is_done():
    tiny = SearchSpace.from_dict({
        "ops": {"dense": {"units": [8], "activation": ["relu"], "dropout": [0.0]}, "flatten": {}},
        "layout": {"reduce": ["flatten"], "dense_layers": {"int": [0, 1]}},
    }).bind((4,), 2)
    search = MetaQNN(tiny, Budget(1))
    both = search.ask(5)
    assert len(both) == 2
    assert search.ask(1).waiting
    search.tell(results(both))
    after = search.ask(1)
    assert after.done and after.reason.startswith(f"{MAX_REDRAWS} walks in a row")
    assert len(search.memory) > 2  # networks drawn again were replayed from their known accuracy


def test_report_is_small_json_and_other_strategies_report_nothing():
    space = bound("cnn.yaml", (1, 8, 8))
    search = MetaQNN(space, Budget(1), seed=0)
    drive(search, 5, n=4)
    report = json.loads(json.dumps(search.report()))
    assert set(report) == {"epsilon", "networks", "trials", "states", "memory", "q"}
    assert report["networks"] == 20 and report["states"] == len(search.q) and 0 < len(report["q"]) <= 300
    assert set(report["q"][0]) == {"state", "action", "q"}
    assert RandomSearch(space, Budget(1)).report() is None
    assert Strategy.report is RandomSearch.report
    assert Hyperband(search, 1, 3).report() == search.report()  # a scheduler shows its sampler's


def test_warm_start_learns_only_from_networks_it_could_have_written():
    space = small_cnn()
    mine = drive(MetaQNN(space, Budget(1), seed=4), 2)
    foreign = RandomSearch(space, Budget(1), seed=4).ask(6)  # batch norm, skips, gelu: not MetaQNN's chains
    unwritable = [c for c in foreign if MetaQNN(space, Budget(1))._path(c.arch) is None]
    search = MetaQNN(space, Budget(1), seed=5)
    search.warm_start(results(mine) + results(unwritable))
    assert len(search.memory) == len(mine) and len(search.history) == len(mine) + len(unwritable)
    assert not {c.arch.arch_id for c in search.ask(6)} & {c.arch.arch_id for c in mine}


def test_a_recurrent_cell_is_a_reduction_whose_units_and_tree_metaqnn_writes():
    space = bound("rnn-cell.yaml", (2, 30))
    search = MetaQNN(space, Budget(5), seed=0, trials=10)
    asked = drive(search, 4, n=2)
    cells = [n for c in asked for n in c.arch.nodes if n.op == "cell"]
    assert len(cells) == len(asked) == 8 and {n.get("units") for n in cells} == {32, 64}
    assert len({n.attrs for n in cells}) == 8  # the walk writes each tree: 15 nodes, the inject and indices
    for candidate in asked:
        space.validate(candidate.arch)
        path = search._path(candidate.arch)  # MetaQNN reads its own networks back, tree decisions included
        assert path is not None and len(path) == candidate.info["steps"] > 18
    assert len(search.memory) == len(asked)
    # A tree decision is a state of the Q-table, keyed by the decision before it.
    assert any(row["state"].startswith("#0 cell 64 node3=") for row in search.report()["q"])

    state = json.loads(json.dumps(search.state_dict()))
    resumed = MetaQNN(space, Budget(5), seed=1)
    resumed.load_state_dict(state)
    assert ids(drive(search, 2, n=2)) == ids(drive(resumed, 2, n=2)) and search.q == resumed.q


def test_a_cell_without_memory_ends_its_tree_at_the_inject():
    raw = yaml.safe_load((ROOT / "spaces/rnn-cell.yaml").read_text())
    raw["ops"]["cell"]["inject"] = ["none", "add_tanh"]
    space = SearchSpace.from_dict(raw).bind((2, 30), 10)
    asked = drive(MetaQNN(space, Budget(5), seed=0, trials=10), 5, n=2)
    cells = [n for c in asked for n in c.arch.nodes if n.op == "cell"]
    assert {n.get("inject") for n in cells} == {"none", "add_tanh"}
    assert all((n.get("inject_at"), n.get("memory_from")) == (0, 0) for n in cells if n.get("inject") == "none")


def test_every_network_trains_with_one_fixed_recipe_the_spaces_defaults_whatever_the_seed():
    space = bound("cnn.yaml", (1, 8, 8))
    recipes = {c.hparams for seed in range(4)
               for c in drive(MetaQNN(space, Budget(epochs=1), seed=seed, trials=20), rounds=2)}
    # HParams' defaults where cnn.yaml allows them: a random draw would tie an architecture's Q-value to it.
    assert recipes == {HParams(optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=64, init="kaiming")}
