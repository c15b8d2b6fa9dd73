"""Transfer from the lineage store: a search whose candidates start from another
experiment's best run takes exactly the tensors that fit, records the source as a parent,
and keys its trials on it."""

from __future__ import annotations

import json
import random

import pytest
import torch
from mlflow import MlflowClient

from nas.api import create_search
from nas.build import build
from nas.lineage import LineageError
from nas.space import SearchSpace
from nas.train import load_matching
from nas.transfer import transfer_source, transferred
from nas.refine import as_refinement, rescoring
from nas.trial import Budget, Candidate, Evaluation, TrialSetting
from tests.conftest import ROOT

SPACE = SearchSpace.load(ROOT / "spaces/small-cnn.yaml").bind((1, 8, 8), 10)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One source run: a digits search of one trial, in the experiment 'source'."""
    root = tmp_path_factory.mktemp("transfer")
    uri = f"sqlite:///{root}/mlflow.db"
    source = create_search("source", data="digits", tracking_uri=uri, root=root, trials=1, epochs=1,
                           space=str(ROOT / "spaces/small-cnn.yaml"), max_seconds=None)
    source.optimize()
    return root, uri, source.best_trial.run_id


def test_a_candidate_takes_the_source_unless_it_inherits_or_continues_a_run():
    arch, hparams = SPACE.sample(random.Random(0))
    fresh = Candidate(arch, hparams, Budget(3))
    moved = transferred(fresh, "src")
    assert (moved.inherit_from, moved.parents, moved.info["transfer_from"]) == ("src", ("src",), "src")
    setting = TrialSetting("data")
    assert moved.trial_key(setting) != fresh.trial_key(setting)  # the source decides the result
    child = Candidate(arch, hparams, Budget(3), parents=("p",), inherit_from="p")
    assert transferred(child, "src") is child


def test_refinement_and_rescoring_start_from_the_searchs_source():
    arch, hparams = SPACE.sample(random.Random(0))
    child = Candidate(arch, hparams, Budget(3), parents=("parent",), inherit_from="parent")
    base = Evaluation(child, "key", val_acc=0.9, run_id="base")
    assert rescoring(base, "src").inherit_from == "src" and rescoring(base).inherit_from is None
    setting = Candidate(arch, hparams.with_(lr=0.005), Budget(3))
    assert as_refinement(setting, base, 60, source="src").inherit_from == "src"
    assert as_refinement(setting, base, 60).inherit_from is None


def test_transfer_loads_exactly_the_tensors_whose_node_and_shape_match():
    arch, hparams = SPACE.sample(random.Random(1))
    source = build(arch, (1, 8, 8), 10, seed=0).state_dict()
    target = build(arch, (1, 8, 8), 4, seed=1)  # four classes: a new head
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    loaded = set(load_matching(target, source))
    head = {k for k in fresh if k.startswith(f"nodes.{len(arch.nodes) - 1}.")}
    assert loaded == set(fresh) - head and head
    for key, value in target.state_dict().items():
        assert torch.equal(value, source[key] if key in loaded else fresh[key])


def test_a_search_from_another_experiments_best_run_records_it_and_starts_from_it(store):
    root, uri, source_run = store
    assert transfer_source("source", uri, root) == source_run == transfer_source(source_run, uri, root)
    search = create_search("target", data="digits", tracking_uri=uri, root=root, trials=2, epochs=1,
                           space=str(ROOT / "spaces/small-cnn.yaml"), init_from="source", max_seconds=None)
    search.optimize()
    client = MlflowClient(uri)
    for evaluation in search.evaluations:
        tags = client.get_run(evaluation.run_id).data.tags
        assert tags["nas.transfer_from"] == source_run and source_run in json.loads(tags["nas.parents"])
        assert evaluation.inherited  # the source's tensors that fit this network were loaded
    assert search.summary()["transfer_from"] == source_run


def test_an_unknown_source_is_named_with_the_fix(store):
    root, uri, _ = store
    with pytest.raises(LineageError, match="neither an experiment with a finished trial nor a run"):
        transfer_source("no-such-thing", uri, root)
