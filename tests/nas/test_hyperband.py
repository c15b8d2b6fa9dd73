"""Hyperband: bracket arithmetic, promotion from checkpoints, and a checkpoint that continues a run exactly."""

import random
from dataclasses import replace

import pytest
import torch

from nas.space import SearchSpace
from nas.strategies import make_strategy
from nas.strategies.hyperband import Hyperband
from nas.train import load_data, train
from nas.trial import Budget, Candidate, Evaluation, TrialStatus
from tests.conftest import ROOT

SPACE = SearchSpace.load(ROOT / "spaces/small-cnn.yaml").bind((1, 8, 8), 10)


def hyperband(sampler="random", **options):
    options = {"min_epochs": 1, "max_epochs": 27, "eta": 3, **options}
    return Hyperband(make_strategy(sampler, SPACE, Budget(options["max_epochs"]), seed=0), **options)


def simulate(hb, trials, batch, rng):
    """Drive the protocol with made-up scores; each run's id is its order of arrival."""
    told = []
    while len(told) < trials:
        asked = hb.ask(batch)
        assert asked, "Hyperband never starves a worker while its sampler has more to give"
        results = [Evaluation(c, str(len(told) + i), val_acc=rng.random(), run_id=f"r{len(told) + i}")
                   for i, c in enumerate(asked)]
        hb.tell(results)
        told += results
    return told


def test_brackets_follow_li_et_al():
    hb = hyperband()
    assert hb.s_max == 3
    assert [(b.budgets, b.sizes) for b in map(hb._new_bracket, range(5))] == [
        ([1, 3, 9, 27], [27, 9, 3, 1]), ([3, 9, 27], [12, 4, 1]), ([9, 27], [6, 2]), ([27], [4]),
        ([1, 3, 9, 27], [27, 9, 3, 1])]
    assert [b.budgets for b in map(hyperband(successive_halving=True)._new_bracket, range(2))] == [[1, 3, 9, 27]] * 2
    with pytest.raises(ValueError, match="min_epochs"):
        hyperband(min_epochs=30)
    with pytest.raises(ValueError, match="eta"):
        hyperband(eta=1)


@pytest.mark.parametrize("batch", [1, 4])
def test_promotions_continue_the_best_of_each_rung(batch):
    told = simulate(hyperband(), 60, batch, random.Random(1))
    by_run = {e.run_id: e for e in told}
    promoted = [e for e in told if e.candidate.resume_from]
    assert promoted
    for e in promoted:
        parent = by_run[e.candidate.resume_from]
        assert e.candidate.parents == (parent.run_id,)
        assert e.candidate.arch == parent.candidate.arch and e.candidate.hparams == parent.candidate.hparams
        assert e.candidate.budget.epochs == 3 * parent.candidate.budget.epochs
        assert e.candidate.info["rung"] == parent.candidate.info["rung"] + 1
        # only the top third of the parent's rung went on
        rung = [x for x in told if x.candidate.info["bracket"] == parent.candidate.info["bracket"]
                and x.candidate.info["rung"] == parent.candidate.info["rung"]]
        assert sorted(x.val_acc for x in rung).index(parent.val_acc) >= len(rung) - len(rung) // 3
    assert all(e.candidate.hparams.epochs == 27 for e in told)  # every schedule spans the longest rung


def test_failed_runs_are_never_promoted_and_the_sampler_hears_each_configuration_once():
    hb = hyperband("bayes", min_epochs=1, max_epochs=9)
    proposed = []  # the sampler's own candidates, in the order it proposed them
    sampler_ask = hb.sampler.ask

    def recording_ask(n):
        asked = sampler_ask(n)
        proposed.extend(asked)
        return asked

    hb.sampler.ask = recording_ask
    told = []
    while len(told) < 30:
        asked = hb.ask(2)
        results = [Evaluation(c, str(len(told) + i),
                              status=TrialStatus.FAILED if (len(told) + i) % 2 else TrialStatus.OK,
                              val_acc=None if (len(told) + i) % 2 else 0.5, run_id=f"r{len(told) + i}")
                   for i, c in enumerate(asked)]
        hb.tell(results)
        told += results
    failed = {e.run_id for e in told if not e.ok}
    assert failed and not any(e.candidate.resume_from in failed for e in told)
    fresh = [e for e in told if not e.candidate.resume_from]
    assert any(e.candidate.resume_from for e in told)  # promotions happened, so observations were due
    # Every configuration the sampler proposed went out once, at its first rung, numbered in order.
    assert [e.candidate.info["config"] for e in fresh] == list(range(len(proposed)))
    # The sampler is told each configuration once, as it arrives, as the very candidate it
    # proposed; each longer rung reaches it as an observation of the scheduler's candidate.
    expected = [replace(e, candidate=proposed[e.candidate.info["config"]]) if not e.candidate.resume_from else e
                for e in told]
    assert hb.sampler.history == expected
    assert all(a.candidate is b.candidate for a, b in zip(hb.sampler.history, expected))
    assert hb.sampler.pending == 0 and not hb.origins  # nothing it proposed is left untold


def test_state_dict_restores_the_brackets():
    hb = hyperband()
    simulate(hb, 20, 2, random.Random(0))
    copy = hyperband()
    copy.load_state_dict(hb.state_dict())
    assert [c.to_json() for c in copy.ask(3)] == [c.to_json() for c in hb.ask(3)]


def test_a_promoted_run_continues_its_checkpoint_exactly(digits_dir):
    data = load_data(digits_dir, "cpu")
    space = SearchSpace.load(ROOT / "spaces/small-cnn.yaml").bind(data.shape, data.num_classes)
    arch, hparams = space.with_hparams(epochs=5, lr=3e-3).sample(random.Random(2))
    straight = train(Candidate(arch, hparams, Budget(5)), data, seed=1)
    rung = train(Candidate(arch, hparams, Budget(2)), data, seed=1)
    assert straight.checkpoint is None and rung.checkpoint["epoch"] == 2  # only an unfinished schedule keeps one
    promoted = train(Candidate(arch, hparams, Budget(5), resume_from="rung"), data, seed=1, resume=rung.checkpoint)
    assert promoted.evaluation.resumed_at == 2 and promoted.evaluation.epochs_trained == 5
    assert promoted.evaluation.val_accs[:2] == rung.evaluation.val_accs  # the epoch counter carried over
    assert promoted.evaluation.val_accs == straight.evaluation.val_accs
    assert all(torch.equal(promoted.weights[k], straight.weights[k]) for k in straight.weights)
    # and the starting point really was the rung's weights, not a fresh initialisation
    fresh = train(Candidate(arch, hparams, Budget(3)), data, seed=1)
    assert promoted.evaluation.val_accs[2:] != fresh.evaluation.val_accs


def test_a_sampler_that_runs_dry_still_gets_its_configurations_promoted():
    space = SearchSpace.from_dict({  # a grid of 12 networks
        "ops": {"flatten": {}, "dense": {"units": [8, 16, 32], "activation": ["relu", "tanh"], "dropout": [0.0]}},
        "layout": {"reduce": ["flatten"], "dense_layers": [1]}, "hparams": {"lr": [1e-3, 1e-2]}}).bind((20,), 3)
    grid = make_strategy("grid", space, Budget(9), seed=0)
    hb = Hyperband(grid, min_epochs=1, max_epochs=9, eta=3, successive_halving=True)
    size, told = space.grid_size(), []
    for _ in range(200):
        asked = hb.ask(1)
        if not asked:
            break
        hb.tell([Evaluation(asked[0], str(len(told)), val_acc=random.Random(len(told)).random(),
                            run_id=f"r{len(told)}")])
        told.append(asked[0])
    assert hb.done()
    # 12 configurations: a full bracket of 9, then a partial one of 3 that still reaches the top rung
    assert sum(c.resume_from is None for c in told) == size == 12
    assert sum(c.budget.epochs == 9 for c in told) == 2
