"""Evolution strategies against fake results: tournaments, aging, lineage fields, replay."""

import json

import pytest

from nas.space import SearchSpace
from nas.strategies.evolution import AgingEvolution, LargeScaleEvolution, simplest_network
from nas.strategies.base import AskState, proposal_key
from nas.trial import Budget, Candidate, Evaluation, TrialSetting, TrialStatus


@pytest.fixture(scope="module")
def space():
    return SearchSpace.load("spaces/cnn.yaml").bind((1, 8, 8), 10)


class FakeTrainer:
    """Scores a candidate by its conv count, so more convolutions win; run ids count up."""

    def __init__(self) -> None:
        self.runs = 0

    def __call__(self, candidates, fail=()):
        results = []
        for c in candidates:
            convs = sum(n.op == "conv" for n in c.arch.nodes)
            status = TrialStatus.FAILED if self.runs in fail else TrialStatus.OK
            results.append(Evaluation(c, trial_key=str(self.runs), status=status,
                                      val_acc=min(0.1 * convs, 0.99), run_id=f"r{self.runs}"))
            self.runs += 1
        return results


def run(strategy, batches, batch_size=5, trainer=None):
    """Ask and tell `batches` times; every candidate proposed, as JSON, in order."""
    trainer = trainer or FakeTrainer()
    proposed = []
    for _ in range(batches):
        candidates = strategy.ask(batch_size)
        proposed.extend(c.to_json() for c in candidates)
        strategy.tell(trainer(candidates))
    return proposed


def mean_score(population):
    return sum(e.score for e in population) / len(population)


def test_initial_population_is_the_simplest_network_with_varied_learning_rates(space):
    search = LargeScaleEvolution(space, Budget(2), seed=0, population_size=6)
    initial = list(search.ask(4)) + list(search.ask(4))  # the second ask has only 2 initial ones left to give
    assert len(initial) == 6
    assert {tuple(n.op for n in c.arch.nodes) for c in initial} == {("input", "global_pool", "head")}
    assert len({c.hparams.lr for c in initial}) == 6
    assert all(space.is_valid(c.arch, c.hparams) and c.generation == 0 and not c.parents for c in initial)
    # flat data, or a space without global_pool, starts from flatten instead
    flat = SearchSpace.load("spaces/cnn.yaml").bind((12,), 3)
    assert [n.op for n in simplest_network(flat).nodes] == ["input", "flatten", "head"]


def test_tournaments_kill_the_worse_and_children_record_their_lineage(space):
    search = LargeScaleEvolution(space, Budget(2), seed=1, population_size=4)
    initial = search.ask(4)
    scores = [0.4, 0.1, 0.3, 0.2]
    search.tell([Evaluation(c, str(i), val_acc=s, run_id=f"r{i}") for i, (c, s) in enumerate(zip(initial, scores))])
    children = search.ask(3)  # three tournaments leave one individual: it must be the best
    assert len(children) == 3
    assert [e.run_id for e in search.population] == ["r0"]
    for child in children:
        parent = next(e for e in search.history if e.run_id == child.parents[0])
        assert child.generation == parent.candidate.generation + 1 == 1
        assert child.info["mutation"] in {"alter-learning-rate", "identity", "reset-weights", "insert-convolution",
                                          "insert-one-to-one", "add-skip"}
        assert child.inherit_from == (None if child.info["node_map"] is None else child.parents[0])
        assert all(isinstance(k, str) for k in (child.info["node_map"] or {}))
    waiting = search.ask(1)  # a lone survivor has nobody to fight until the children are told
    assert waiting.state == AskState.WAIT and not waiting.candidates and not search.done()
    assert [c.nonce for c in children] == [1, 2, 3]  # each child is a trial of its own


def test_ties_kill_the_older_and_failed_children_lose_their_first_tournament(space):
    search = LargeScaleEvolution(space, Budget(2), seed=2, population_size=2)
    first = search.ask(2)
    search.tell([Evaluation(c, str(i), val_acc=0.5, run_id=f"r{i}") for i, c in enumerate(first)])
    (child,) = search.ask(1)
    assert child.parents == ("r1",) and [e.run_id for e in search.population] == ["r1"]
    search.tell([Evaluation(child, "2", status=TrialStatus.FAILED, reason="diverged", run_id="r2")])
    (grandchild,) = search.ask(1)
    assert grandchild.parents == ("r1",) and [e.run_id for e in search.population] == ["r1"]


def test_selection_pressure_raises_the_population_score(space):
    search = LargeScaleEvolution(space, Budget(2), seed=3, population_size=10)
    run(search, 2)
    initial = mean_score(search.population)
    run(search, 20)  # 100 children
    assert mean_score(search.population) > initial + 0.2
    assert max(c.candidate.generation for c in search.population) > 3


def test_identity_children_repeat_their_parent_and_are_not_deduplicated(space):
    search = LargeScaleEvolution(space, Budget(2), seed=4, population_size=4, mutations=("identity",))
    proposed = run(search, 6, batch_size=2)
    assert len(proposed) == 12
    children = proposed[4:]
    assert {json.dumps(c["arch"], sort_keys=True) for c in children} == {json.dumps(proposed[0]["arch"],
                                                                                     sort_keys=True)}
    assert all(c["inherit_from"] == c["parents"][0] for c in children)
    assert [c["nonce"] for c in children] == list(range(1, 9))  # the running child count: never the same trial


def test_reset_weights_children_inherit_nothing(space):
    search = LargeScaleEvolution(space, Budget(2), seed=5, population_size=4, mutations=("reset-weights",))
    children = run(search, 4, batch_size=2)[4:]
    assert children and all(c["inherit_from"] is None and c["parents"] and c["info"]["node_map"] is None
                            for c in children)
    # the same training as the parent, but a new trial (its nonce), so it gets new initial weights
    setting = TrialSetting("fp")
    parents = {e.run_id: e.candidate for e in search.history}
    for c in map(Candidate.from_json, children):
        parent = parents[c.parents[0]]
        assert c.arch == parent.arch and c.hparams == parent.hparams and c.nonce is not None
        assert c.trial_key(setting) != parent.trial_key(setting)
        assert c.trial_seed(setting) != parent.trial_seed(setting)
    assert len({c["nonce"] for c in children}) == len(children)
    # among all mutations too, reset-weights never inherits and the others do
    mixed = run(LargeScaleEvolution(space, Budget(2), seed=6), 12)[10:]
    resets = [c for c in mixed if c["info"]["mutation"] == "reset-weights"]
    assert resets and all(c["inherit_from"] is None for c in resets)
    assert all(c["inherit_from"] == c["parents"][0] for c in mixed if c["info"]["mutation"] != "reset-weights")


def test_aging_kills_the_oldest_even_when_it_is_the_best(space):
    search = AgingEvolution(space, Budget(2), seed=7, population_size=3, sample_size=3)
    initial = search.ask(3)
    assert len({c.arch.arch_id for c in initial}) > 1  # random samples, not one seed network
    search.tell([Evaluation(c, str(i), val_acc=[0.9, 0.2, 0.1][i], run_id=f"r{i}") for i, c in enumerate(initial)])
    (child,) = search.ask(1)
    assert child.parents == ("r0",)  # sampling the whole population picks the best as parent
    # aging evolution trains children from scratch (Real et al. 2019), unless told to inherit
    assert child.inherit_from is None and child.info["node_map"] is None and child.nonce == 1
    search.tell([Evaluation(child, "3", val_acc=0.0, run_id="r3")])
    assert [e.run_id for e in search.population] == ["r1", "r2", "r3"]
    # with inherit=True a child inherits its parent's weights instead
    inheriting = AgingEvolution(space, Budget(2), seed=7, population_size=3, sample_size=3, inherit=True)
    again = inheriting.ask(3)
    inheriting.tell([Evaluation(c, str(i), val_acc=[0.9, 0.2, 0.1][i], run_id=f"r{i}") for i, c in enumerate(again)])
    (heir,) = inheriting.ask(1)
    assert heir.parents == ("r0",) and heir.inherit_from == "r0" and heir.info["node_map"] is not None


def test_aging_evolution_trains_no_network_twice_unless_it_inherits(space):
    """A repeat is mutated again (with inheritance it means "train it longer", and is kept)."""
    def arch_ids(inherit: bool) -> list[str]:
        search = AgingEvolution(space, Budget(2), seed=3, population_size=3, sample_size=2, inherit=inherit,
                                mutations=("reset-weights", "alter-learning-rate"))
        ids = []
        for i in range(8):
            (candidate,) = search.ask(1)
            search.tell([Evaluation(candidate, str(i), val_acc=0.5 + i / 100, run_id=f"r{i}")])
            ids.append(proposal_key(candidate.arch, candidate.hparams))
        return ids

    assert len(set(arch_ids(inherit=False))) == 8
    assert len(set(arch_ids(inherit=True))) < 8  # reset-weights repeats its parent


def test_aging_evolution_improves_under_selection(space):
    search = AgingEvolution(space, Budget(2), seed=8, population_size=10, sample_size=3)
    run(search, 2)
    initial = mean_score(search.population)
    run(search, 20)
    assert len(search.population) == 10
    assert mean_score(search.population) > initial


@pytest.mark.parametrize("cls", [LargeScaleEvolution, AgingEvolution])
def test_same_seed_and_results_replay_identically(space, cls):
    assert run(cls(space, Budget(2), seed=9), 6) == run(cls(space, Budget(2), seed=9), 6)
    assert run(cls(space, Budget(2), seed=9), 6) != run(cls(space, Budget(2), seed=10), 6)


@pytest.mark.parametrize("cls", [LargeScaleEvolution, AgingEvolution])
def test_state_dict_round_trip_continues_identically(space, cls):
    a = cls(space, Budget(2), seed=11, population_size=6)
    trainer = FakeTrainer()
    run(a, 3, trainer=trainer)
    a.ask(2)  # in flight when the state is saved: their losers are already dead
    state = json.loads(json.dumps(a.state_dict()))
    b = cls(space, Budget(2), seed=0, population_size=6)
    b.load_state_dict(state)
    assert [e.to_json() for e in b.population] == [e.to_json() for e in a.population]
    twin = FakeTrainer()
    twin.runs = trainer.runs
    assert run(a, 4, trainer=trainer) == run(b, 4, trainer=twin)


@pytest.mark.parametrize("cls", [LargeScaleEvolution, AgingEvolution])
def test_warm_start_seeds_the_population_with_the_best_of_a_history(space, cls):
    donor = AgingEvolution(space, Budget(2), seed=12, population_size=8)
    history = [Evaluation(c, str(i), val_acc=i / 10, run_id=f"h{i}") for i, c in enumerate(donor.ask(8))]
    search = cls(space, Budget(2), seed=13, population_size=4)
    search.warm_start(history)
    assert [e.run_id for e in search.population] == ["h4", "h5", "h6", "h7"]
    assert search.best.run_id == "h7"
    children = search.ask(2)  # no initial individuals: straight to selection
    assert all(c.parents and c.parents[0] in {"h4", "h5", "h6", "h7"} and c.generation == 1 for c in children)


def test_warm_start_with_a_short_history_fills_up_with_initial_individuals(space):
    search = LargeScaleEvolution(space, Budget(2), seed=14, population_size=4)
    seed = search.ask(1)
    search = LargeScaleEvolution(space, Budget(2), seed=14, population_size=4)
    search.warm_start([Evaluation(seed[0], "0", val_acc=0.5, run_id="h0")])
    batch = search.ask(4)  # the fourth slot stays empty: one living individual has nobody to fight
    assert [c.info.get("initial", False) for c in batch] == [True, True, True]
    search.tell(FakeTrainer()(batch))
    assert [e.run_id for e in search.population] == ["h0", "r0", "r1", "r2"]
    assert not any(c.info.get("initial") for c in search.ask(2))


def test_bad_arguments_are_refused(space):
    with pytest.raises(ValueError, match="population_size"):
        LargeScaleEvolution(space, Budget(2), population_size=1)
    with pytest.raises(ValueError, match="sample_size"):
        AgingEvolution(space, Budget(2), population_size=3, sample_size=4)
    with pytest.raises(ValueError, match="unknown mutations"):
        LargeScaleEvolution(space, Budget(2), mutations=("crossover",))
