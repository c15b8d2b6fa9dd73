"""Optuna's samplers as strategies: valid and never repeated sentences in three spaces,
replays, failures, TPE learning, NSGA-II's two objectives, warm starts and the missing extra.

No training: an "instant" runner scores a network by a deterministic function of it.
"""

from __future__ import annotations

import doctest
import json
import math
import sys
from concurrent.futures import Future

import pytest

pytest.importorskip("optuna")
from optuna.trial import TrialState  # noqa: E402

import nas.strategies.optuna_samplers as optuna_module  # noqa: E402
from nas.ids import derive_seed  # noqa: E402
from nas.loop import run_loop  # noqa: E402
from nas.space import SearchSpace  # noqa: E402
from nas.space.grammar import picks_for  # noqa: E402
from nas.strategies import RandomSearch  # noqa: E402
from nas.strategies.base import proposal_key  # noqa: E402
from nas.strategies.hyperband import Hyperband  # noqa: E402
from nas.strategies.optuna_samplers import OptunaNSGA2, OptunaRandom, OptunaTPE, import_optuna  # noqa: E402
from nas.trial import Budget, Evaluation, TrialStatus  # noqa: E402
from tests.conftest import ROOT  # noqa: E402

SPACES = {
    "conv1d": SearchSpace.load(ROOT / "spaces/conv1d.yaml").bind((1, 40), 10),
    "mlp": SearchSpace.load(ROOT / "spaces/mlp.yaml").bind((20,), 3),
    "cnn": SearchSpace.load(ROOT / "spaces/cnn.yaml").bind((1, 8, 8), 10),
}
# Six networks and nothing else to choose.
SIX = SearchSpace.from_dict({
    "name": "six", "ops": {"flatten": {}, "dense": {"units": [16, 32, 64], "activation": ["relu", "gelu"],
                                                     "dropout": [0.0]}},
    "layout": {"reduce": ["flatten"], "dense_layers": [1]}, "hparams": {}}).bind((4,), 2)


def make(cls, space, seed=0):
    """Small settings, so the model-based proposals start within a short test."""
    options = {OptunaTPE: {"n_startup_trials": 4}, OptunaNSGA2: {"population_size": 4}}.get(cls, {})
    return cls(space, Budget(1), seed=seed, **options)


def score(candidate) -> float:
    return derive_seed(proposal_key(candidate.arch, candidate.hparams), "score") % 1000 / 1000


def runner(value=score, fail_every=0):
    """A runner that "trains" in no time; every `fail_every`-th trial fails (FAILED)."""
    calls = []

    def submit(candidate):
        calls.append(candidate)
        future = Future()
        if fail_every and len(calls) % fail_every == 0:
            future.set_result(Evaluation(candidate, "k", status=TrialStatus.FAILED, reason="diverged"))
        else:
            future.set_result(Evaluation(candidate, "k", val_acc=value(candidate)))
        return future

    return submit


def keys(evaluations) -> list[str]:
    return [proposal_key(e.candidate.arch, e.candidate.hparams) for e in evaluations]


def test_docstring_example_runs():
    assert doctest.testmod(optuna_module).failed == 0


@pytest.mark.parametrize("cls", [OptunaTPE, OptunaRandom, OptunaNSGA2])
@pytest.mark.parametrize("space_name", list(SPACES))
def test_proposals_are_valid_new_sentences_that_replay_their_trials(cls, space_name):
    space = SPACES[space_name]
    search = make(cls, space)
    outcome = run_loop(search, runner(), trials=10, concurrency=2)
    assert len(outcome.evaluations) == 10
    assert len(set(keys(outcome.evaluations))) == 10
    trials = search.study.get_trials(deepcopy=False)
    for evaluation in outcome.evaluations:
        candidate = evaluation.candidate
        assert space.is_valid(candidate.arch, candidate.hparams)
        trial = trials[candidate.info["optuna_trial"]]  # its number, JSON and all
        assert trial.state == TrialState.COMPLETE and trial.values[0] == evaluation.val_acc
        assert {name: pick for name, (pick, _) in search.params_of(candidate).items()} == trial.params
    json.dumps([e.to_json() for e in outcome.evaluations])


@pytest.mark.parametrize("asynchronous", [False, True])
@pytest.mark.parametrize("cls", [OptunaTPE, OptunaRandom, OptunaNSGA2])
def test_the_same_seed_and_results_give_the_same_candidates(cls, asynchronous):
    def run(seed):
        search = make(cls, SPACES["conv1d"], seed)
        return keys(run_loop(search, runner(), trials=10, concurrency=2, asynchronous=asynchronous).evaluations)

    first = run(3)
    assert run(3) == first
    assert run(4) != first


def test_no_sentence_is_proposed_twice_and_an_exhausted_space_is_done():
    search = OptunaTPE(SIX, Budget(1), seed=0, n_startup_trials=2)
    outcome = run_loop(search, runner(), trials=30, concurrency=2)
    assert len(outcome.evaluations) == 6 and len(set(keys(outcome.evaluations))) == 6
    assert "optuna-tpe is done" in outcome.stop_reason and "exhausted" in outcome.stop_reason
    # TPE wrote known sentences again: each such trial was told and closed, none left running.
    assert search.redraws > 0 and search.fallbacks > 0
    assert "running" not in search.report()["trials"]


def test_a_random_sample_stands_in_for_repeated_sentences_and_joins_the_study(monkeypatch):
    monkeypatch.setattr(optuna_module, "MAX_REDRAWS", 1)  # the first repeat already gives up
    search = OptunaTPE(SIX, Budget(1), seed=0, n_startup_trials=2)
    outcome = run_loop(search, runner(), trials=6, concurrency=2)
    assert len(set(keys(outcome.evaluations))) == 6
    stand_ins = [e for e in outcome.evaluations if e.candidate.info.get("fallback") == "random"]
    assert stand_ins and all(e.candidate.info["optuna_trial"] is None for e in stand_ins)
    completed = [(t.params, t.values[0]) for t in search.study.get_trials(deepcopy=False)
                 if t.state == TrialState.COMPLETE]
    for e in stand_ins:  # told as completed trials, parameters replayed from the sentence
        assert ({name: pick for name, (pick, _) in search.params_of(e.candidate).items()}, e.val_acc) in completed


@pytest.mark.parametrize("cls", [OptunaTPE, OptunaNSGA2])
def test_failed_trials_are_told_as_failures_and_the_search_goes_on(cls):
    search = make(cls, SPACES["cnn"])
    outcome = run_loop(search, runner(fail_every=3), trials=15, concurrency=2)
    failed = [e for e in outcome.evaluations if not e.ok]
    assert len(outcome.evaluations) == 15 and len(failed) == 5
    trials = search.study.get_trials(deepcopy=False)
    assert all(trials[e.candidate.info["optuna_trial"]].state == TrialState.FAIL for e in failed)
    assert all(SPACES["cnn"].is_valid(e.candidate.arch, e.candidate.hparams) for e in outcome.evaluations)


def test_an_environment_error_is_a_failure_too():
    def broken(candidate):
        future = Future()
        future.set_exception(RuntimeError("out of memory"))
        return future

    search = make(OptunaTPE, SPACES["mlp"])
    outcome = run_loop(search, broken, trials=4, concurrency=2)
    assert [e.status for e in outcome.evaluations] == [TrialStatus.ERROR] * 4
    assert search.report()["trials"] == {"fail": 4}


def synthetic(candidate) -> float:
    """A smooth objective of the mlp space: wide gelu layers, adamw near lr 3e-3, batches of 32."""
    dense = [n for n in candidate.arch.nodes if n.op == "dense"]
    return (0.3 * sum(n.get("units") for n in dense) / (256 * len(dense))
            + 0.15 * all(n.get("activation") == "gelu" for n in dense)
            + 0.2 * (candidate.hparams.optimizer == "adamw")
            + 0.2 * (1 - abs(math.log10(candidate.hparams.lr) - math.log10(3e-3)))
            + 0.15 * (candidate.hparams.batch_size == 32))


def test_tpe_learns_where_random_sampling_does_not():
    def run(cls, seed):
        scores = [e.val_acc for e in run_loop(cls(SPACES["mlp"], Budget(1), seed=seed), runner(synthetic),
                                              trials=40).evaluations]
        return max(scores), sum(scores[20:]) / 20  # the best, and the mean of the second half

    tpe = [run(OptunaTPE, seed) for seed in range(3)]
    rand = [run(OptunaRandom, seed) for seed in range(3)]
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    assert mean([best for best, _ in tpe]) >= mean([best for best, _ in rand])
    # Random's second half is no better than its first; TPE's concentrates on the good region.
    assert mean([late for _, late in tpe]) > mean([late for _, late in rand]) + 0.15


def test_nsga2_is_told_accuracy_and_log_parameters():
    space = SPACES["conv1d"]
    search = make(OptunaNSGA2, space)
    counted = lambda c: 1000 + int(score(c) * 1e5)  # noqa: E731

    def submit(candidate):  # half the results come with a parameter count, half without
        future = Future()
        params = counted(candidate) if score(candidate) > 0.5 else 0
        future.set_result(Evaluation(candidate, "k", val_acc=score(candidate), params=params))
        return future

    outcome = run_loop(search, submit, trials=12, concurrency=2)
    assert [d.name for d in search.study.directions] == ["MAXIMIZE", "MINIMIZE"]
    trials = search.study.get_trials(deepcopy=False)
    for evaluation in outcome.evaluations:
        candidate = evaluation.candidate
        params = evaluation.params or space.validate(candidate.arch, candidate.hparams).params
        assert trials[candidate.info["optuna_trial"]].values == pytest.approx(
            [evaluation.val_acc, math.log10(params)])


def test_warm_start_adds_other_runs_and_skips_other_spaces_networks():
    space = SPACES["conv1d"]
    other_optuna = run_loop(make(OptunaTPE, space, seed=1), runner(), trials=6).evaluations
    random_runs = run_loop(RandomSearch(space, Budget(1), seed=0), runner(), trials=6).evaluations
    foreign = run_loop(make(OptunaRandom, SPACES["cnn"]), runner(), trials=3).evaluations
    history = other_optuna + random_runs + foreign
    search = make(OptunaTPE, space, seed=0)
    search.warm_start(history)

    def writable(e):
        return space.is_valid(e.candidate.arch, e.candidate.hparams) and picks_for(space, space.to_tokens(
            e.candidate.arch, space.nearest_hparams(e.candidate.hparams))) is not None

    # Random search's skips join a block's output to its input, which the grammar does not
    # write; the other networks it can write only at the nearest lr.
    assert all(map(writable, other_optuna)) and any(map(writable, random_runs))
    assert not any(map(writable, foreign))
    mine = [e for e in history if writable(e)]
    trials = search.study.get_trials(deepcopy=False)
    assert [t.values[0] for t in trials] == [e.val_acc for e in mine]
    assert all(t.state == TrialState.COMPLETE for t in trials) and search.skipped == len(history) - len(mine)
    outcome = run_loop(search, runner(), trials=6, concurrency=2)
    assert not set(keys(outcome.evaluations)) & set(keys(history))
    assert all(space.is_valid(e.candidate.arch, e.candidate.hparams) for e in outcome.evaluations)


def test_a_loaded_state_rebuilds_the_study_from_the_results():
    space = SPACES["mlp"]
    search = make(OptunaTPE, space)
    told = run_loop(search, runner(fail_every=4), trials=8, concurrency=2).evaluations
    restored = make(OptunaTPE, space, seed=9)
    restored.load_state_dict(json.loads(json.dumps(search.state_dict())))
    assert restored.report()["trials"] == {"complete": 6}
    more = run_loop(restored, runner(), trials=6, concurrency=2).evaluations
    assert not set(keys(more)) & set(keys(told))


def test_a_budget_scheduler_can_drive_it():
    search = Hyperband(make(OptunaTPE, SPACES["mlp"]), min_epochs=1, max_epochs=3, eta=3)
    outcome = run_loop(search, runner(), trials=8, concurrency=2)
    assert len(outcome.evaluations) == 8 and {e.candidate.budget.epochs for e in outcome.evaluations} == {1, 3}


def test_without_optuna_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # what `import optuna` sees when it is not installed
    with pytest.raises(ImportError, match=r"pip install 'nas\[optuna\]'"):
        import_optuna()
    with pytest.raises(ImportError, match="optional dependency"):
        OptunaTPE(SPACES["mlp"], Budget(1))


def test_options_are_checked():
    with pytest.raises(ValueError, match="population_size"):
        OptunaNSGA2(SPACES["mlp"], Budget(1), population_size=1)
    with pytest.raises(ValueError, match="n_startup_trials"):
        OptunaTPE(SPACES["mlp"], Budget(1), n_startup_trials=-1)
