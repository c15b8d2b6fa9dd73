"""The performance predictor and the search it steers, on synthetic targets: ranking, replay, storage, errors."""

import doctest
import json
import random
import statistics
from concurrent.futures import Future

import numpy as np
import pytest
import torch

import nas.predictor as predictor_module
import nas.strategies.predictor as strategy_module
from nas.loop import run_loop
from nas.predictor import Predictor, held_out_tau, kendall_tau
from nas.space import SearchSpace
from nas.strategies import RandomSearch
from nas.strategies.base import proposal_key
from nas.strategies.predictor import PredictorSearch
from nas.trial import Budget, Evaluation


@pytest.fixture(scope="module")
def space():
    return SearchSpace.load("spaces/mlp.yaml").bind((20,), 3)


@pytest.fixture(scope="module")
def weights(space):
    return np.random.default_rng(7).normal(size=space.encoding_size)


@pytest.fixture(scope="module")
def data(space, weights):
    rng = random.Random(0)
    x = np.array([space.encode(*space.sample(rng)) for _ in range(150)])
    return x, x @ weights


def objective(space, weights):
    """A runner whose "validation accuracy" is a fixed function of the encoding: instant and known."""
    def instant(candidate):
        score = float(np.dot(weights, space.encode(candidate.arch, candidate.hparams)))
        future = Future()
        future.set_result(Evaluation(candidate, "key", val_acc=1 / (1 + np.exp(-score / 4))))
        return future
    return instant


def search(space, seed=0, **options):
    return PredictorSearch(space, Budget(1), seed=seed, **{"initial": 4, "pool": 40, **options})


# ---- the predictor -----------------------------------------------------------------


def test_a_target_linear_in_the_encoding_is_ranked_almost_perfectly(data):
    x, y = data
    assert held_out_tau(x, y, seed=0) >= 0.9


def test_fitting_is_deterministic_per_seed_and_leaves_global_rng_alone(data):
    x, y = data[0][:60], data[1][:60]
    torch_state, numpy_state = torch.random.get_rng_state(), np.random.get_state()[1].copy()
    a, b = Predictor.fit(x, y, seed=3).predict(x), Predictor.fit(x, y, seed=3).predict(x)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(Predictor.fit(x, y, seed=4).predict(x)[0], a[0])
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)
    assert (a[1] > 0).all() and Predictor.fit(x, y, members=1).predict(x)[1].max() == 0


def test_bytes_round_trip_predicts_identically_and_refuses_other_bytes(data):
    x, y = data[0][:40], data[1][:40]
    fitted = Predictor.fit(x, y, seed=1, members=3)
    raw = fitted.to_bytes()
    loaded = Predictor.from_bytes(raw)
    assert (loaded.members, loaded.inputs) == (3, x.shape[1])
    for got, want in zip(loaded.predict(data[0]), fitted.predict(data[0]), strict=True):
        assert np.array_equal(got, want)
    with pytest.raises(ValueError, match="not a predictor"):
        Predictor.from_bytes(b"\x80\x04 a pickle, say")


@pytest.mark.parametrize("x, y, message", [
    (np.zeros((1, 3)), np.zeros(1), "at least 2 results"),
    (np.zeros((4, 3)), np.zeros(3), "4 rows but y has 3"),
    (np.zeros((3, 3)), np.array([0.1, np.nan, 0.2]), "NaN"),
    (np.zeros(3), np.zeros(3), "2-D array"),
])
def test_bad_input_names_the_problem(x, y, message):
    with pytest.raises(ValueError, match=message):
        Predictor.fit(x, y)


def test_predicting_another_width_and_tau_of_unequal_lengths_are_refused(data):
    fitted = Predictor.fit(data[0][:10], data[1][:10], steps=5)
    with pytest.raises(ValueError, match="same .*search space"):
        fitted.predict(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="same length"):
        kendall_tau([1, 2, 3], [1, 2])
    assert kendall_tau([1, 1, 1], [1, 2, 3]) == 0.0


# ---- the strategy ------------------------------------------------------------------


def test_proposals_are_random_until_initial_results_then_predicted_and_valid(space, weights):
    strategy = search(space)
    first = strategy.ask(4)
    assert [c.info["proposal"] for c in first] == ["random"] * 4
    assert [c.info["proposal"] for c in strategy.ask(1)] == ["random"]  # nothing told yet
    runner = objective(space, weights)
    strategy.tell([runner(c).result() for c in first[:3]])
    assert strategy.ask(1)[0].info["proposal"] == "random"  # 3 of the 4 initial results known
    strategy.tell([runner(first[3]).result()])
    model = strategy.ask(3)
    assert [c.info["proposal"] for c in model] == ["model"] * 3
    for candidate in [*first, *model]:
        assert space.is_valid(candidate.arch, candidate.hparams)
    for candidate in model:
        assert isinstance(candidate.info["predicted"], float) and candidate.info["uncertainty"] >= 0
        json.dumps(candidate.info)


def test_same_seed_replays_another_differs_and_nothing_repeats(space, weights):
    def proposals(seed):
        outcome = run_loop(search(space, seed=seed), objective(space, weights), trials=14, concurrency=5)
        return [proposal_key(e.candidate.arch, e.candidate.hparams) for e in outcome.evaluations]

    a = proposals(5)
    assert a == proposals(5)
    assert a != proposals(6)
    assert len(set(a)) == len(a) == 14
    strategy = search(space, seed=5)
    in_flight = [*strategy.ask(4)]
    strategy.tell([objective(space, weights)(c).result() for c in in_flight])
    state = json.loads(json.dumps(strategy.state_dict()))  # the history is the whole state
    in_flight += [*strategy.ask(5), *strategy.ask(5)]  # two model batches, nothing told in between
    assert len({proposal_key(c.arch, c.hparams) for c in in_flight}) == 14
    resumed = search(space, seed=5)
    resumed.load_state_dict(state)
    assert [c.to_json() for c in resumed.ask(5)] == [c.to_json() for c in in_flight[4:9]]


def test_predictor_beats_or_ties_random_search_on_a_synthetic_objective(space, weights):
    def best(strategy):
        outcome = run_loop(strategy, objective(space, weights), trials=40, concurrency=10)
        return max(e.val_acc for e in outcome.evaluations)

    seeds = range(3)
    guided = [best(search(space, seed=s, initial=10, pool=100)) for s in seeds]
    randomly = [best(RandomSearch(space, Budget(1), seed=s)) for s in seeds]
    assert statistics.mean(guided) >= statistics.mean(randomly)


def test_another_spaces_results_are_skipped_and_counted_on_warm_start(space, weights):
    other = SearchSpace.load("spaces/conv1d.yaml").bind((1, 40), 10)
    foreign = [Evaluation(RandomSearch(other, Budget(1), seed=i).ask(1)[0], str(i), val_acc=0.5)
               for i in range(5)]
    assert not any(space.is_valid(e.candidate.arch, e.candidate.hparams) for e in foreign)
    strategy = search(space)
    strategy.warm_start(foreign)
    first = strategy.ask(4)
    assert [c.info["proposal"] for c in first] == ["random"] * 4  # foreign results teach nothing
    strategy.tell([objective(space, weights)(c).result() for c in first])
    model = strategy.ask(2)
    assert [c.info["proposal"] for c in model] == ["model"] * 2
    assert strategy.report() == {"skipped_results": 5}


def test_a_tiny_space_runs_dry_and_the_search_finishes():
    tiny = SearchSpace.from_dict({  # five networks, mutations included
        "limits": {"max_nodes": 2},
        "ops": {"dense": {"units": [8, 16], "activation": ["relu"], "dropout": [0.0]}, "flatten": {}},
        "layout": {"reduce": ["flatten"], "dense_layers": {"int": [0, 1]}},
    }).bind((4,), 2)
    strategy = PredictorSearch(tiny, Budget(1), initial=2, pool=10)
    first = strategy.ask(2)
    strategy.tell([Evaluation(c, str(i), val_acc=0.1 * i) for i, c in enumerate(first)])
    rest = strategy.ask(5)
    assert [c.info["proposal"] for c in rest] == ["model"] * 3  # all that is left
    assert strategy.done() and "exhausted" in strategy.ask(1).reason


def test_options_are_checked():
    tiny = SearchSpace.load("spaces/mlp.yaml").bind((4,), 2)
    for options in ({"initial": 1}, {"pool": 0}, {"members": 0}):
        with pytest.raises(ValueError, match=next(iter(options))):
            PredictorSearch(tiny, Budget(1), **options)


def test_the_docstring_examples_run():
    assert doctest.testmod(predictor_module).failed == 0
    assert doctest.testmod(strategy_module).failed == 0
