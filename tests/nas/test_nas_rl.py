"""The NAS controller: the reward, the REINFORCE step's sign, determinism and state round
trips, learning from other methods' networks, and the weights it hands to the search run.

No training: a result is a deterministic function of the architecture.
"""

from __future__ import annotations

import doctest
import json

import pytest
import torch
from safetensors.torch import load as load_tensors

import nas.strategies.nas_rl as nas_rl_module
from nas.ids import derive_seed
from nas.space import SearchSpace
from nas.space.grammar import picks_for, write
from nas.strategies import RandomSearch, make_search
from nas.strategies.nas_rl import Controller, NasRL, reward
from nas.trial import Budget, Evaluation, TrialStatus
from tests.conftest import ROOT

SPACE = SearchSpace.load(ROOT / "spaces/small-cnn.yaml").bind((1, 8, 8), 10)
# Two networks and nothing else to choose: a two-action problem.
TWO = SearchSpace.from_dict({
    "name": "two", "ops": {"flatten": {}, "dense": {"units": [16, 32], "activation": ["relu"], "dropout": [0.0]}},
    "layout": {"reduce": ["flatten"], "dense_layers": [1]}, "hparams": {}}).bind((4,), 2)


def score(candidate) -> float:
    return derive_seed(candidate.arch.arch_id, "score") % 1000 / 1000


def results(candidates) -> list[Evaluation]:
    return [Evaluation(c, str(i), val_acc=score(c), val_accs=[score(c)]) for i, c in enumerate(candidates)]


def drive(search: NasRL, rounds: int, n: int = 2) -> list:
    asked = []
    for _ in range(rounds):
        batch = list(search.ask(n))
        search.tell(results(batch))
        asked.extend(batch)
    return asked


def episode_of(space: SearchSpace, candidate):
    return write(space, follow=picks_for(space, space.to_tokens(candidate.arch, candidate.hparams)))[1]


def test_docstring_example_runs():
    assert doctest.testmod(nas_rl_module).failed == 0


def test_the_reward_is_the_best_of_the_last_five_epochs_cubed():
    candidate = NasRL(TWO, Budget(8), seed=0).ask(1)[0]
    curve = [0.9, 0.1, 0.2, 0.5, 0.4, 0.3, 0.2]  # the 0.9 is older than the last five epochs
    assert reward(Evaluation(candidate, "k", val_acc=0.2, val_accs=curve)) == pytest.approx(0.5**3)
    assert reward(Evaluation(candidate, "k", status=TrialStatus.FAILED, val_accs=curve)) == 0.0


def test_a_reinforce_step_makes_the_better_action_more_likely():
    search = NasRL(TWO, Budget(1), seed=0, children=2)
    pair = list(search.ask(2))
    assert {c.arch.nodes[2].get("units") for c in pair} == {16, 32}
    better = next(c for c in pair if c.arch.nodes[2].get("units") == 32)
    before = search.controller.log_prob(episode_of(TWO, better)).item()
    search.tell([Evaluation(c, str(i), val_accs=[1.0 if c is better else 0.5]) for i, c in enumerate(pair)])
    after = search.controller.log_prob(episode_of(TWO, better)).item()
    assert search.version == 1 and after > before
    baseline = (1 + 0.125) / 2  # the first batch's mean, then the moving average over its rewards
    for c in pair:
        baseline = 0.95 * baseline + 0.05 * (1.0 if c is better else 0.125)
    assert search.baseline == pytest.approx(baseline)


def test_proposals_note_their_controller_version_and_log_probability():
    search = NasRL(SPACE, Budget(5), seed=1, children=2)
    drive(search, 2)
    for candidate in search.ask(2):
        assert candidate.info["controller_version"] == 2
        expected = search.controller.log_prob(episode_of(SPACE, candidate)).item()
        assert candidate.info["log_prob"] == pytest.approx(expected, abs=1e-3)


def test_same_seed_and_results_give_the_same_proposals_and_weights():
    a, b = NasRL(SPACE, Budget(5), seed=3), NasRL(SPACE, Budget(5), seed=3)
    assert [c.arch.arch_id for c in drive(a, 4)] == [c.arch.arch_id for c in drive(b, 4)]
    assert all(torch.equal(x, y) for x, y in zip(a.controller.parameters(), b.controller.parameters()))
    assert a.version == 4


def test_state_dict_round_trip_continues_identically():
    a = NasRL(SPACE, Budget(5), seed=4, children=3)
    drive(a, 2)  # 4 results: one update made, one sample waiting for the next
    b = NasRL(SPACE, Budget(5), seed=99, children=1)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert [c.arch.arch_id for c in drive(a, 3)] == [c.arch.arch_id for c in drive(b, 3)]
    assert a.version == b.version == 3


def test_warm_start_learns_from_another_methods_networks():
    donor = RandomSearch(SPACE, Budget(5), seed=0)
    history = results(list(donor.ask(6)))
    search = NasRL(SPACE, Budget(5), seed=0, children=2)
    search.warm_start(history)
    # Random search's lr is continuous (the controller reads it at the nearest grid point), and
    # one of its networks sums a skip into a skip's output, which the grammar does not write.
    writable = [e for e in history if picks_for(SPACE, SPACE.to_tokens(
        e.candidate.arch, SPACE.nearest_hparams(e.candidate.hparams))) is not None]
    assert len(writable) == 5 and len(search.rewards) == 5 and search.version == 2
    assert not {c.arch.arch_id for c in drive(search, 2)} & {e.candidate.arch.arch_id for e in history}


def test_the_controller_weights_are_handed_over_by_version():
    search = NasRL(SPACE, Budget(5), seed=0, children=2)
    drive(search, 1)
    (name, data), = search.files().items()
    assert name == "controller/v0001.safetensors"
    restored = Controller(SPACE.vocabulary(), seed=123)
    restored.load_state_dict(load_tensors(data))
    assert all(torch.equal(x, y) for x, y in zip(restored.parameters(), search.controller.parameters()))


def test_make_search_gives_the_controller_the_concurrency_as_its_children_and_its_learning_rate():
    search = make_search("nas-rl", SPACE, Budget(5), concurrency=4, controller_lr=0.02)
    assert search.children == 4 and search.optimizer.param_groups[0]["lr"] == 0.02
    assert make_search("nas-rl", SPACE, Budget(5)).optimizer.param_groups[0]["lr"] == 0.01
    # The default spreads the paper's learning rate x steps (6e-4 x 12,800 / 8) over the search's updates.
    assert make_search("nas-rl", SPACE, Budget(5), trials=400, concurrency=2).learning_rate == pytest.approx(0.0048)
    assert make_search("nas-rl", SPACE, Budget(5), trials=12_800, concurrency=8).learning_rate == pytest.approx(6e-4)
    assert make_search("nas-rl", SPACE, Budget(5), trials=100, concurrency=2).learning_rate == 0.01  # the cap


def test_at_its_defaults_the_controller_learns_within_a_hundred_trials():
    """A reward that pays one of three widths of the first conv: over 100 trials the controller
    comes to write it far more often (at the paper's 6e-4 it barely moves)."""
    def paid(candidate) -> bool:
        return next(n.get("channels") for n in candidate.arch.nodes if n.op == "conv") == 16

    def shares(search) -> tuple[float, float]:
        asked = []
        for _ in range(50):
            batch = list(search.ask(2))
            search.tell([Evaluation(c, str(i), val_accs=[0.9 if paid(c) else 0.5]) for i, c in enumerate(batch)])
            asked.extend(batch)
        return sum(map(paid, asked[:30])) / 30, sum(map(paid, asked[-30:])) / 30

    first, last = shares(make_search("nas-rl", SPACE, Budget(5), trials=100, concurrency=2))
    assert last >= first + 0.3, (first, last)
    first, last = shares(make_search("nas-rl", SPACE, Budget(5), trials=100, concurrency=2, controller_lr=6e-4))
    assert last < first + 0.3, (first, last)
