"""SMASH: the hypernetwork writes exactly the tensors the builder expects, trains
deterministically, and the strategy trains the best-scored networks as ordinary trials."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient

from nas.api import create_search
from nas.build import build
from nas.hyper import OneShot, score, train_one_shot
from nas.space import HParams, SearchSpace
from nas.strategies.smash import SCORES_FILE, Smash, read_scores
from nas.train import load_data
from nas.trial import Budget
from tests.conftest import ROOT

SHAPES = {"cnn": (1, 8, 8), "small-cnn": (1, 8, 8), "mlp": (20,), "flat": (20,), "conv1d": (1, 40),
          "hyperconv": (1, 40), "rnn-cell": (1, 40)}
SPACES = {name: SearchSpace.load(ROOT / f"spaces/{name}.yaml").bind(shape, 10) for name, shape in SHAPES.items()}
# A small sample sizes each hypernetwork, so roles it never saw are exercised too.
HYPERNETWORKS = {name: OneShot(space, space.nearest_hparams(HParams()), seed=0, sample=20)
                 for name, space in SPACES.items()}


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(sorted(SPACES)), seed=st.integers(0, 10**6))
def test_generated_weights_have_the_builders_shapes_and_load_into_the_built_network(name, seed) -> None:
    space, hypernetwork = SPACES[name], HYPERNETWORKS[name]
    arch = space.sample_arch(random.Random(seed))
    network = build(arch, SHAPES[name], 10)
    weights = hypernetwork.weights(arch)
    assert {k: tuple(v.shape) for k, v in weights.items()} == {k: tuple(p.shape) for k, p in network.named_parameters()}
    network.load_state_dict({**network.state_dict(), **{k: v.detach() for k, v in weights.items()}})
    network.eval()
    for module in network.modules():  # batch statistics, as the hypernetwork computes them
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.train()
    x = torch.randn(8, *SHAPES[name])
    with torch.no_grad():
        # (a relu cell of untrained generated weights can overflow: both sides then hold the same NaNs)
        assert torch.allclose(network(x), hypernetwork(arch, x), atol=1e-5, equal_nan=True)


@pytest.fixture(scope="module")
def digits(digits_dir):
    return load_data(digits_dir, "cpu")


def test_training_is_deterministic_and_generated_weights_learn(digits) -> None:
    space = SPACES["small-cnn"]
    hparams = space.nearest_hparams(HParams())
    archs = [space.sample_arch(random.Random(i)) for i in range(6)]
    first, again = (train_one_shot(space, hparams, digits, steps=150, seed=3) for _ in range(2))
    assert [dict(c, seconds=0) for c in first.curve] == [dict(c, seconds=0) for c in again.curve]
    scores = score(first.model, archs, digits)
    assert scores == score(again.model, archs, digits)
    untrained = score(OneShot(space, hparams, seed=3), archs, digits)
    assert sum(scores) / len(scores) > sum(untrained) / len(untrained) + 0.1, (scores, untrained)


def test_a_network_that_overflows_is_skipped_and_training_goes_on(tmp_path) -> None:
    """Some cells of spaces/rnn-cell-small.yaml grow without bound whatever their weights: of the 40
    networks drawn with seed 0, two overflow on the adding problem (their memory is a node's value
    before its activation, unbounded). Their steps are skipped, the others train."""
    from nas.data import prepare

    prepare("adding:12", tmp_path)
    data = load_data(tmp_path, "cpu")
    space = SearchSpace.load(ROOT / "spaces/rnn-cell-small.yaml").bind(data.shape, data.num_classes)
    result = train_one_shot(space, space.nearest_hparams(HParams()), data, steps=40, seed=0)
    assert len(result.skipped) == 2 and result.curve[-1]["step"] == 40
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_the_strategy_proposes_best_scores_first_and_tabulates_them() -> None:
    space = SPACES["mlp"]
    smash = Smash(space, Budget(2), seed=1, candidates=30,
                  scorer=lambda archs, hparams: [len(a.nodes) + i / 1000 for i, a in enumerate(archs)])
    asked = smash.ask(3)
    assert [c.info["smash_rank"] for c in asked] == [1, 2, 3]
    assert [c.info["smash_score"] for c in asked] == sorted((c.info["smash_score"] for c in asked), reverse=True)
    assert {c.hparams for c in asked} == {smash.hparams}  # trained with the recipe they were scored with
    table = read_scores(smash.files()[SCORES_FILE])
    assert len(table) == 30 and table[asked[0].arch.arch_id] == asked[0].info["smash_score"]
    restored = Smash(space, Budget(2), seed=1)
    restored.load_state_dict(smash.state_dict())
    assert [c.arch.arch_id for c in restored.ask(2)] == [c.arch.arch_id for c in smash.ask(2)]


def test_without_a_scorer_the_strategy_says_how_to_get_one() -> None:
    with pytest.raises(ValueError, match="nas search --strategy smash"):
        Smash(SPACES["mlp"], Budget(1)).ask(1)


def test_a_search_trains_the_top_candidates_logs_the_hypernetwork_and_reruns_for_free(tmp_path, digits_dir) -> None:
    options = dict(data="digits", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", root=tmp_path, strategy="smash",
                   space=str(ROOT / "spaces/small-cnn.yaml"), trials=2, epochs=1, concurrency=2, max_seconds=None,
                   smash_steps=20, smash_candidates=12)
    search = create_search("smash", **options)
    search.optimize()
    client = MlflowClient(search.tracking_uri)
    assert {f.path for f in client.list_artifacts(search.run_id, "smash")} == {
        "smash/curve.csv", "smash/hypernetwork.safetensors", "smash/hypernetwork.png", SCORES_FILE}
    scores = sorted(float(client.get_run(e.run_id).data.tags["nas.smash_score"]) for e in search.evaluations)
    table = read_scores(search.store.read_bytes(search.run_id, SCORES_FILE))
    assert len(table) == 12 and scores == [round(s, 4) for s in sorted(table.values())[-2:]]  # the best two of 12

    again = create_search("smash", **options)
    again.optimize()
    assert again.strategy.scorer.result is None  # the scores came from the search run: no hypernetwork trained
    assert [e.run_id for e in again.evaluations] == [e.run_id for e in search.evaluations]
