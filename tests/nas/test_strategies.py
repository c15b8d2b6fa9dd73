"""The ask/tell protocol: determinism, no duplicates, state round trips, grid exhaustion."""

import json

import pytest

from nas.space import SearchSpace
from nas.strategies import GridSearch, RandomSearch, make_strategy
from nas.strategies.base import AskState
from nas.trial import Budget, Evaluation


@pytest.fixture
def space():
    return SearchSpace.load("spaces/cnn.yaml").bind((1, 8, 8), 10)


def ids(candidates):
    return [(c.arch.arch_id, c.hparams) for c in candidates]


def fake_results(candidates, base=0.5):
    # Results only matter to strategies through their scores; training is tested elsewhere.
    return [Evaluation(candidate=c, trial_key=str(i), val_acc=base + i / 100) for i, c in enumerate(candidates)]


def test_random_search_is_deterministic_and_never_repeats(space):
    a, b = RandomSearch(space, Budget(3), seed=4), RandomSearch(space, Budget(3), seed=4)
    first = [ids(a.ask(5)) for _ in range(4)]
    assert first == [ids(b.ask(5)) for _ in range(4)]
    flat = [x for batch in first for x in batch]
    assert len(set((i, h) for i, h in flat)) == len(flat) == 20
    assert ids(RandomSearch(space, Budget(3), seed=5).ask(5)) != first[0]


def test_state_dict_round_trip_continues_identically(space):
    a = RandomSearch(space, Budget(3), seed=1)
    a.tell(fake_results(a.ask(3)))
    state = json.loads(json.dumps(a.state_dict()))  # must be plain JSON
    b = RandomSearch(space, Budget(3), seed=99)
    b.load_state_dict(state)
    assert ids(a.ask(4)) == ids(b.ask(4))
    assert b.best.val_acc == a.best.val_acc
    with pytest.raises(ValueError, match="cannot be loaded"):
        GridSearch(space, Budget(3)).load_state_dict(state)


def test_warm_start_skips_what_another_search_already_tried(space):
    seen = RandomSearch(space, Budget(3), seed=2).ask(3)
    fresh = RandomSearch(space, Budget(3), seed=2)
    fresh.warm_start(fake_results(seen))
    assert not set(ids(fresh.ask(3))) & set(ids(seen))
    assert fresh.best is not None


def test_grid_search_walks_the_whole_grid_then_stops():
    space = SearchSpace.from_dict({
        "ops": {"dense": {"units": [8, 16], "activation": ["relu"], "dropout": [0.0]}, "flatten": {}},
        "layout": {"reduce": ["flatten"], "dense_layers": {"int": [0, 1]}},
    }).bind((4,), 2)
    grid = GridSearch(space, Budget(1))
    got = list(grid.ask(2))
    state = grid.state_dict()
    rest = grid.ask(5)
    assert rest.state == AskState.READY and len(rest) == 1
    got += rest
    assert len(got) == 3 and grid.done()
    after = grid.ask(1)
    assert after.done and not after.candidates and "grid" in after.reason
    resumed = GridSearch(space, Budget(1))
    resumed.load_state_dict(state)
    assert ids(resumed.ask(5)) == ids(got[2:])


def test_random_search_stops_when_a_tiny_space_runs_dry():
    space = SearchSpace.from_dict({"ops": {"flatten": {}}, "layout": {"reduce": ["flatten"]}}).bind((4,), 2)
    search = RandomSearch(space, Budget(1))
    assert len(search.ask(3)) == 1
    assert search.done()


def test_unknown_strategy_names_the_choices(space):
    with pytest.raises(ValueError, match="choose one of .*grid.*random"):
        make_strategy("annealing", space, Budget(1))
