"""Bayesian optimisation against fake results: phases, batches, failures, replay, and that the model helps."""

import json
import random
import statistics
import warnings

import pytest
from sklearn.exceptions import ConvergenceWarning

from nas.space import SearchSpace
from nas.strategies import BayesianOptimization, RandomSearch, make_strategy
from nas.strategies.base import AskState, proposal_key
from nas.trial import Budget, Candidate, Evaluation, TrialStatus


@pytest.fixture(scope="module")
def small():
    return SearchSpace.load("spaces/small-cnn.yaml").bind((1, 8, 8), 10)


@pytest.fixture(scope="module")
def cnn():
    return SearchSpace.load("spaces/cnn.yaml").bind((1, 8, 8), 10)


def ids(candidates):
    return [(c.arch.arch_id, c.hparams) for c in candidates]


def convs(candidate):
    return sum(n.op == "conv" for n in candidate.arch.nodes)


def results(candidates, score=lambda c: 0.1 * convs(c)):
    return [Evaluation(c, trial_key=str(i), val_acc=score(c)) for i, c in enumerate(candidates)]


def bayes(space, seed=0, **options):
    options = {"initial": 4, "pool_size": 32, **options}  # small pools keep the tests fast
    return BayesianOptimization(space, Budget(1), seed=seed, **options)


def run(search, batches, batch_size=3):
    proposed = []
    for _ in range(batches):
        candidates = search.ask(batch_size)
        search.tell(results(candidates))
        proposed.extend(candidates)
    return proposed


def test_same_seed_and_results_replay_and_another_seed_differs(small):
    a, b = run(bayes(small, seed=3), 4), run(bayes(small, seed=3), 4)
    assert [c.to_json() for c in a] == [c.to_json() for c in b]
    assert ids(run(bayes(small, seed=4), 4)) != ids(a)


def test_first_initial_proposals_are_random_then_the_model_proposes(small):
    search = bayes(small, initial=5)
    first = search.ask(5)
    assert [c.info["proposal"] for c in first] == ["random"] * 5
    assert ids(first) == ids(RandomSearch(small, Budget(1), seed=0).ask(5))  # the same initial design
    assert [c.info["proposal"] for c in search.ask(2)] == ["random"] * 2  # nothing told yet
    search.tell(results(first))
    model = search.ask(2)
    assert [c.info["proposal"] for c in model] == ["model"] * 2
    assert all(c.info["expected_improvement"] >= 0 for c in model)


def test_batches_are_distinct_and_never_repeat_earlier_proposals(cnn):
    search = bayes(cnn, initial=3)
    proposed = run(search, 1, batch_size=3)
    in_flight = [search.ask(6), search.ask(6)]  # two batches in flight, nothing told in between
    assert all(batch.state == AskState.READY and len(batch) == 6 for batch in in_flight)
    proposed += [c for batch in in_flight for c in batch]
    assert len(set(ids(proposed))) == len(proposed) == 15
    assert all(c.info["proposal"] == "model" for c in proposed[3:])


def test_constant_liar_spreads_a_batch_that_plain_ei_would_collapse(small):
    search = bayes(small, initial=4, pool_size=64)
    search.tell(results(search.ask(4), score=lambda c: 0.5 + 0.1 * convs(c)))
    batch = search.ask(4)
    eis = [c.info["expected_improvement"] for c in batch]
    # Each lie lowers the model's hopes around the last pick: later picks expect less.
    assert eis == sorted(eis, reverse=True) and eis[0] > eis[-1]


def test_failures_equal_scores_and_a_single_result_never_crash(small):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # silenced inside, so none may escape
        failing = bayes(small, initial=3)
        first = failing.ask(3)
        failing.tell([Evaluation(c, str(i), status=TrialStatus.FAILED, reason="diverged") for i, c in enumerate(first)])
        assert [c.info["proposal"] for c in failing.ask(3)] == ["random"] * 3  # nothing to rank yet
        assert failing.best is None

        mixed = bayes(small, initial=3)
        first = mixed.ask(3)
        mixed.tell([Evaluation(first[0], "0", status=TrialStatus.FAILED, reason="oom")] + results(first[1:]))
        assert [c.info["proposal"] for c in mixed.ask(2)] == ["model"] * 2

        flat = bayes(small, initial=4)
        flat.tell(results(flat.ask(4), score=lambda c: 0.7))
        assert [c.info["proposal"] for c in flat.ask(4)] == ["random"] * 4

        single = bayes(small, initial=1)
        single.tell(results(single.ask(1)))
        assert [c.info["proposal"] for c in single.ask(2)] == ["random"] * 2
        single.tell([Evaluation(c, str(i), val_acc=0.2 + i / 10) for i, c in enumerate(single.ask(2))])
        assert [c.info["proposal"] for c in single.ask(2)] == ["model"] * 2


def test_state_dict_round_trip_proposes_the_same_next_batch(small):
    a = bayes(small, seed=2)
    run(a, 2)
    state = json.loads(json.dumps(a.state_dict()))  # plain JSON, the GP is rebuilt from history
    b = bayes(small, seed=99)
    b.load_state_dict(state)
    assert [c.to_json() for c in a.ask(3)] == [c.to_json() for c in b.ask(3)]


def test_warm_start_ignores_results_from_another_space_but_never_proposes_them(small, cnn):
    rng = random.Random(0)
    foreign = cnn.sample(rng)
    while small.is_valid(*foreign):  # e.g. 8 channels or a tanh: words small-cnn does not know
        foreign = cnn.sample(rng)
    search = bayes(small, initial=3)
    search.warm_start([Evaluation(Candidate(*foreign, Budget(1)), "x", val_acc=0.99)])
    assert proposal_key(*foreign) in search.proposed
    assert [c.info["proposal"] for c in search.ask(2)] == ["random"] * 2  # no usable result yet

    search.warm_start(results(RandomSearch(small, Budget(1), seed=5).ask(3)))
    assert [c.info["proposal"] for c in search.ask(3)] == ["model"] * 3  # the foreign one did not break encode


def test_constructor_names_the_fix(small):
    with pytest.raises(ValueError, match="initial=0 must be at least 1"):
        BayesianOptimization(small, Budget(1), initial=0)
    with pytest.raises(ValueError, match="pool_size=0"):
        BayesianOptimization(small, Budget(1), pool_size=0)
    with pytest.raises(ValueError, match="use 0"):
        BayesianOptimization(small, Budget(1), top_points=-1)
    assert isinstance(make_strategy("bayes", small, Budget(1), pool_size=16), BayesianOptimization)


def test_the_model_reaches_a_good_network_in_fewer_trials_than_random_search(small):
    lr = small.hparams["lr"]

    def objective(candidate):
        # Smooth in the encoding: log learning rate near 80 % of its range, and more conv blocks.
        return 0.5 * (1 - abs(lr.encode(candidate.hparams.lr) - 0.8)) + 0.1 * convs(candidate)

    def trials_to_threshold(search, threshold=0.75, cap=40):
        for trial in range(1, cap + 1):
            candidate = search.ask(1)[0]
            search.tell([Evaluation(candidate, str(trial), val_acc=objective(candidate))])
            if objective(candidate) >= threshold:  # within 0.1 of the best lr with three conv blocks
                return trial
        return cap + 1

    seeds = range(5)
    model = [trials_to_threshold(BayesianOptimization(small, Budget(1), seed=s)) for s in seeds]
    plain = [trials_to_threshold(RandomSearch(small, Budget(1), seed=s)) for s in seeds]
    # Both start from the same five random networks, so each seed is a paired comparison.
    assert statistics.mean(model) < 0.8 * statistics.mean(plain), (model, plain)
    assert sum(m <= p for m, p in zip(model, plain)) >= 3, (model, plain)
