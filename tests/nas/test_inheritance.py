"""Weight inheritance across a mutation: inherited tensors are bit-identical to the parent's,
the rest are freshly initialised."""

import random

import pytest
import torch

from nas.build import remap_state
from nas.data import prepare
from nas.space import Architecture, HParams, Node, SearchSpace
from nas.space.mutations import apply_mutation
from nas.train import load_data, train
from nas.trial import Budget, Candidate


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    prepare("digits", out)
    return load_data(out, "cpu")


CONV = dict(channels=16, kernel_h=3, kernel_w=3, stride=1, batch_norm=True, activation="relu")
PARENT = Architecture((Node.make("input"), Node.make("conv", [0], **CONV), Node.make("conv", [1], **CONV),
                       Node.make("global_pool", [2]), Node.make("dense", [3], units=32, activation="relu",
                                                                 dropout=0.0), Node.make("head", [4])))


@pytest.mark.parametrize("mutation", ["insert-convolution", "alter-number-of-channels", "insert-one-to-one",
                                      "add-skip", "remove-convolution", "identity"])
def test_inherited_tensors_are_the_parents_and_only_those(digits, mutation):
    space = SearchSpace.load("spaces/cnn.yaml").bind(digits.shape, digits.num_classes)
    hparams = HParams(lr=0.003, epochs=2)
    parent = train(Candidate(PARENT, hparams, Budget(2)), digits)
    child = apply_mutation(mutation, space, PARENT, hparams, random.Random(3))
    init = remap_state(parent.weights, child.node_map)
    # No epochs: the child's weights are exactly what it starts from.
    start = train(Candidate(child.arch, child.hparams, Budget(0)), digits, init_weights=init, seed=1)
    assert start.evaluation.ok
    inherited = set(start.inherited)
    # everything the node map offers is taken where its shape still fits, and nothing else
    fits = {k for k, v in init.items() if k in start.weights and start.weights[k].shape == v.shape}
    assert inherited == fits
    if mutation in ("insert-convolution", "alter-number-of-channels", "remove-convolution"):
        # a conv carried over with other input or output channels is mapped, but its kernel no longer fits
        assert set(init) - fits and all(init[k].shape != start.weights[k].shape for k in set(init) - fits)
    else:
        assert fits == set(init)
    for key, tensor in start.weights.items():
        if key in inherited:
            assert torch.equal(tensor, init[key])
        elif tensor.is_floating_point() and key.endswith("weight") and tensor.numel() > 1:
            assert not any(torch.equal(tensor, p) for p in parent.weights.values() if p.shape == tensor.shape)
    if mutation == "identity":
        assert inherited == set(parent.weights)
