"""Refinement: the best distinct architectures, and searches that only ever change the training recipe."""

import random
from dataclasses import replace

import pytest

from nas.config import ConfigError, RefineConfig, load_refine_params
from nas.refine import as_refinement, final_candidate, refinement_space, refinement_strategy, top_architectures
from nas.space import SearchSpace, SpaceError
from nas.trial import Budget, Candidate, Evaluation, TrialSetting
from tests.conftest import ROOT

SPACE = SearchSpace.load(ROOT / "spaces/small-cnn.yaml").bind((1, 8, 8), 10).with_hparams(epochs=20)
SETTING = TrialSetting("data-fp", seed=0, device="cpu")
DOMAINS = {"lr": {"log": [1e-3, 1e-2]}, "weight_decay": [0.0, 1e-4], "batch_size": [32, 64], "epochs": [30]}


def evaluation(arch, hparams, val, run_id, ok=True):
    return Evaluation(Candidate(arch, hparams, Budget(20)), run_id, status="ok" if ok else "failed",
                      val_acc=val if ok else None, run_id=run_id)


def test_top_architectures_are_distinct_and_best_first():
    rng = random.Random(0)
    (a, ha), (b, hb), (c, hc) = (SPACE.sample(rng) for _ in range(3))
    history = [evaluation(a, ha, 0.90, "a1"), evaluation(b, hb, 0.95, "b1"), evaluation(a, ha, 0.97, "a2"),
               evaluation(c, hc, 0.99, "c1", ok=False), evaluation(b, hb, 0.95, "b2")]
    assert [e.run_id for e in top_architectures(history, 5)] == ["a2", "b1"]
    assert [e.run_id for e in top_architectures(history, 1)] == ["a2"]


@pytest.mark.parametrize("method", ["grid", "bayes"])
def test_refinement_keeps_the_architecture_and_the_optimizer(method):
    arch, hparams = SPACE.sample(random.Random(3))
    base = evaluation(arch, hparams, 0.9, "base")
    space = refinement_space(SPACE, arch, hparams, DOMAINS)
    strategy = refinement_strategy(method, space, base, seed=0, max_seconds=60)
    proposed = []
    for round_ in range(4):
        batch = [as_refinement(c, base, 60) for c in strategy.ask(2)]
        strategy.tell([Evaluation(c, f"{round_}{i}", val_acc=0.8 + 0.01 * i, run_id=f"{round_}{i}")
                       for i, c in enumerate(batch)])
        proposed += batch
    assert len(proposed) == 8
    for c in proposed:
        assert c.arch == arch and c.parents == ("base",)
        assert (c.hparams.optimizer, c.hparams.init) == (hparams.optimizer, hparams.init)
        assert c.hparams.epochs == c.budget.epochs == 30 and c.hparams.batch_size in (32, 64)
        assert 1e-3 <= c.hparams.lr <= 1e-2
    assert len({c.hparams for c in proposed}) == 8 and hparams not in {c.hparams for c in proposed}


def test_the_final_training_has_no_time_limit():
    # A winner near the limit as a trial would exceed it on train+val: the final would fail after all the refinement.
    arch, hparams = SPACE.sample(random.Random(3))
    winner = Evaluation(Candidate(arch, hparams, Budget(hparams.epochs, 120.0)), "w", val_acc=0.9, run_id="w")
    final = final_candidate(winner)
    assert final.budget == Budget(hparams.epochs) and final.budget.max_seconds is None
    assert (final.arch, final.hparams, final.parents) == (arch, hparams, ("w",))
    seeds = [final_candidate(winner, member=m) for m in range(3)]  # an ensemble's members: a training seed each
    assert [c.nonce for c in seeds] == [None, 1, 2] and len({c.trial_seed(SETTING) for c in seeds}) == 3
    longer = final_candidate(winner, small_data=True)  # a small table's final trains three times longer
    assert longer.budget.epochs == longer.hparams.epochs == 3 * hparams.epochs


def test_without_an_epochs_domain_settings_train_30_epochs_or_the_searchs_if_more():
    arch, hparams = SPACE.sample(random.Random(0))
    for searched, refined in ((20, 30), (100, 100)):  # 100: a small table's search
        space = refinement_space(SPACE, arch, replace(hparams, epochs=searched), {"lr": [1e-3, 2e-3]})
        assert {h.epochs for _, h in space.enumerate()} == {refined}
    assert {h.epochs for _, h in refinement_space(SPACE, arch, hparams, {"epochs": [5]}).enumerate()} == {5}


def test_refinement_errors_name_the_fix(tmp_path):
    arch, hparams = SPACE.sample(random.Random(0))
    with pytest.raises(SpaceError, match="refinement tunes"):
        refinement_space(SPACE, arch, hparams, {"dropout": [0.1]})
    with pytest.raises(ConfigError, match="method"):
        RefineConfig(method="annealing")
    params = tmp_path / "params.yaml"
    params.write_text("refine:\n  top_k: 0\n")
    with pytest.raises(ConfigError, match="top_k"):
        load_refine_params(params)
    params.write_text("refine:\n  topk: 2\n")
    with pytest.raises(ConfigError, match="takes the keys"):
        load_refine_params(params)
