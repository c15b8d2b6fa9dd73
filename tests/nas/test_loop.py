"""The loop with every method: each strategy x scheduler x mode reaches its trial budget,
a rerun on the same store trains nothing, and an interrupted search resumes (to the same
end in batch mode; replaying what it told before the kill in asynchronous mode).

Training is a fake: a deterministic score from the trial key, recorded in a dictionary
that plays the lineage store, and ready a few milliseconds after it starts, so trainings
finish out of the order asked; a stored result is ready at once, as a cache hit is. It
comes back with the candidate it was stored with, as a cache hit from another search
would, so the loop's substitution of the asked candidate is exercised on every rerun.
"""

from __future__ import annotations

import copy
import random
import threading
from concurrent.futures import Future
from dataclasses import replace

import pytest

from nas.ids import derive_seed
from nas.loop import Schedule, run_loop, time_limit
from nas.space import SearchSpace
from nas.strategies import STRATEGIES, Hyperband, RandomSearch, make_strategy
from nas.strategies.base import ProtocolError, Strategy
from nas.trial import Budget, Candidate, Evaluation, TrialSetting, TrialStatus
from tests.conftest import ROOT

SPACE = SearchSpace.load(ROOT / "spaces/small-cnn.yaml").bind((1, 8, 8), 10).with_hparams(epochs=9)
SETTING = TrialSetting("fake-data", seed=3)
TRIALS = 30
SCHEDULERS = (None, "hyperband", "successive-halving")
# Small populations and a small model pool, so that 40 searches take seconds.
OPTIONS = {"evolution": {"population_size": 4}, "aging-evolution": {"population_size": 4},
           "codeepneat": {"population_size": 4}, "bayes": {"pool_size": 16, "mutations_per_point": 1},
           "predictor": {"pool": 32, "members": 2},
           "smash": {"candidates": 200, "scorer": lambda archs, hparams: [derive_seed(a.arch_id, "score") % 97
                                                                          for a in archs]}}


class Interrupted(BaseException):
    """A kill in the middle of a search (BaseException, like KeyboardInterrupt: never told as a result)."""


class FakeStore:
    """Trial key -> result, and a count of trainings: what a search cost."""

    def __init__(self) -> None:
        self.results: dict[str, Evaluation] = {}
        self.trained = 0
        self.kill_after: int | None = None

    def submit(self, candidate: Candidate) -> Future[Evaluation]:
        future: Future[Evaluation] = Future()
        key = candidate.trial_key(SETTING)
        if key not in self.results:
            if self.kill_after is not None and self.trained >= self.kill_after:
                raise Interrupted
            self.trained += 1
            score = derive_seed(key, "score") % 1000 / 1000
            failed = score < 0.1 or (candidate.resume_from is not None and candidate.resume_from not in
                                     {e.run_id for e in self.results.values() if e.ok})
            self.results[key] = Evaluation(
                candidate, key, status=TrialStatus.FAILED if failed else TrialStatus.OK,
                reason="fake divergence" if failed else None, val_acc=None if failed else score,
                run_id=f"run-{len(self.results)}")
            threading.Timer(derive_seed(key, "time") % 4 / 1000, future.set_result, [self.results[key]]).start()
        else:
            future.set_result(self.results[key])
        return future


def search(name: str, scheduler: str | None) -> Strategy:
    strategy = make_strategy(name, SPACE, Budget(9), seed=5, **OPTIONS.get(name, {}))
    if scheduler is None:
        return strategy
    return Hyperband(strategy, min_epochs=1, max_epochs=9, eta=3, successive_halving=scheduler == "successive-halving")


def run(store: FakeStore, name: str, scheduler: str | None, asynchronous: bool, schedule: Schedule | None = None,
        told: list[str] | None = None, concurrency: int = 3):
    return run_loop(search(name, scheduler), store.submit, trials=TRIALS, concurrency=concurrency,
                    asynchronous=asynchronous, schedule=schedule,
                    on_result=None if told is None else lambda e: told.append(e.trial_key))


COMBINATIONS = [(name, scheduler, mode) for name in sorted(STRATEGIES) for scheduler in SCHEDULERS
                for mode in ("batch", "async")]


@pytest.mark.parametrize(("name", "scheduler", "mode"), COMBINATIONS)
def test_every_method_reaches_its_budget_reruns_for_free_and_resumes(name, scheduler, mode) -> None:
    asynchronous = mode == "async"
    store = FakeStore()
    schedule = Schedule()  # for the rerun to replay
    first = run(store, name, scheduler, asynchronous, schedule)
    assert len(first.evaluations) == TRIALS or first.stop_reason.startswith(f"{name}"), first.stop_reason
    assert len(first.evaluations) == TRIALS, f"stopped early: {first.stop_reason}"
    # Hyperband promotes only successful runs, and continues the rung it names.
    run_ids = {e.run_id for e in first.evaluations if e.ok}
    assert all(e.candidate.resume_from in run_ids for e in first.evaluations if e.candidate.resume_from)
    # A child is never bred from a failure.
    failed = {e.run_id for e in first.evaluations if not e.ok}
    assert not any(set(e.candidate.parents) & failed and not e.candidate.resume_from for e in first.evaluations)

    trained = store.trained
    # Another concurrency asks in other rounds, and so would breed other children: the rerun replays the first's.
    again = run(store, name, scheduler, asynchronous, copy.deepcopy(schedule), concurrency=2)
    assert store.trained == trained, "a rerun on the same store trained again"
    assert [e.trial_key for e in again.evaluations] == [e.trial_key for e in first.evaluations]

    interrupted, killed, told = FakeStore(), Schedule(), []
    interrupted.kill_after = random.Random(f"{name}{scheduler}{mode}").randrange(1, trained)
    with pytest.raises(Interrupted):
        run(interrupted, name, scheduler, asynchronous, killed, told=told)
    interrupted.kill_after = None
    resumed = run(interrupted, name, scheduler, asynchronous, killed)
    assert len(resumed.evaluations) == TRIALS
    assert [e.trial_key for e in resumed.evaluations][:len(told)] == told, "the resume did not replay"
    if not asynchronous:  # after the replay, timing steers an asynchronous search again
        assert interrupted.trained == trained and interrupted.results.keys() == store.results.keys()


def test_cache_hits_tell_the_strategy_its_own_candidate() -> None:
    store = FakeStore()
    run(store, "random", None, False)
    foreign = {k: replace(e, candidate=replace(e.candidate, info={"bracket": 99})) for k, e in store.results.items()}
    store.results = foreign
    outcome = run(store, "random", "hyperband", False)  # the KeyError: 'bracket' of a foreign candidate, once
    assert all(e.candidate.info.get("bracket") != 99 for e in outcome.evaluations)


def test_a_runner_that_raises_is_an_error_result_and_the_search_goes_on() -> None:
    def broken(candidate: Candidate) -> Future[Evaluation]:
        future: Future[Evaluation] = Future()
        future.set_exception(OSError("disk full"))
        return future

    outcome = run_loop(search("random", None), broken, trials=4, concurrency=2)
    assert [e.status for e in outcome.evaluations] == [TrialStatus.ERROR] * 4
    assert all(e.retryable and "disk full" in e.reason for e in outcome.evaluations)


def test_a_stop_rule_and_an_exhausted_grid_say_why_they_stopped() -> None:
    store = FakeStore()
    outcome = run_loop(search("random", None), store.submit, trials=100, stop=time_limit(0))
    assert outcome.evaluations == [] and "time limit" in outcome.stop_reason
    tiny = SearchSpace.from_dict({
        "ops": {"dense": {"units": [8], "activation": ["relu"], "dropout": [0.0]}, "flatten": {}},
        "layout": {"reduce": ["flatten"], "dense_layers": {"int": [0, 1]}},
    }).bind((4,), 2)
    grid = make_strategy("grid", tiny, Budget(1))
    outcome = run_loop(grid, store.submit, trials=100, concurrency=3)
    assert len(outcome.evaluations) == 2 and outcome.stop_reason.startswith("grid is done: all 2 points")


def test_telling_what_was_never_asked_is_refused() -> None:
    strategy = search("random", None)
    (candidate,) = strategy.ask(1)
    strategy.tell([Evaluation(candidate, "k", val_acc=0.5)])
    with pytest.raises(ProtocolError, match="tell only what ask returned"):
        strategy.tell([Evaluation(candidate, "k", val_acc=0.5)])


def test_a_search_that_does_not_learn_is_asked_ahead_and_told_in_order() -> None:
    """Random search: while its first trial trains, the other worker goes through the rest;
    results are told in ask order, so the search is the one batch mode runs."""
    first_done, submitted, told = threading.Event(), [], []

    def runner(candidate: Candidate) -> Future[Evaluation]:
        future: Future[Evaluation] = Future()
        submitted.append(candidate.arch.arch_id)
        result = Evaluation(candidate, candidate.trial_key(SETTING), val_acc=0.5)
        if len(submitted) == 1:  # a slow trial: it ends once every other one has been submitted
            threading.Thread(target=lambda: (first_done.wait(10), future.set_result(result))).start()
        else:
            future.set_result(result)
            if len(submitted) == 6:
                assert not told, "a result was told before the first one asked"
                first_done.set()
        return future

    outcome = run_loop(search("random", None), runner, trials=6, concurrency=2,
                       on_result=lambda e: told.append(e.candidate.arch.arch_id))
    assert first_done.is_set() and told == submitted

    class Learning(RandomSearch):  # the same proposals, in rounds
        adaptive = True

    rounds = run_loop(Learning(SPACE, Budget(9), seed=5), FakeStore().submit, trials=6, concurrency=2)
    assert [e.candidate.arch.arch_id for e in rounds.evaluations] == told == [e.arch_id for e in outcome.evaluations]
