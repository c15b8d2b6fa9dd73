"""Hypernetwork layers (Ha et al. 2016): a hyperconv's kernel is generated from its
embeddings by a generator shared per kernel size; the plan counts every parameter once,
and every method writes networks of spaces/hyperconv.yaml."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nas.build import HyperConvBlock, KernelGenerator, build
from nas.space import Architecture, Node, SearchSpace
from nas.space.mutations import apply_mutation
from nas.space.shapes import HYPER_BLOCK, HYPER_Z, hyper_generator_params
from nas.strategies import make_search
from nas.trial import Budget, Evaluation
from tests.conftest import ROOT

SPACE = SearchSpace.load(ROOT / "spaces/hyperconv.yaml").bind((1, 40), 10)


def hyperconv(inputs, channels, kernel=5, **attrs):
    return Node.make("hyperconv", inputs, **{"channels": channels, "kernel_h": 1, "kernel_w": kernel, "stride": 1,
                                             "batch_norm": False, "activation": "relu", **attrs})


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_every_sampled_network_counts_its_parameters_exactly(seed):
    arch, hparams = SPACE.sample(random.Random(seed))
    network = build(arch, (1, 40), 10, seed=0)
    assert sum(p.numel() for p in network.parameters()) == network.plan.params == SPACE.validate(arch).params
    assert network(torch.zeros(2, 1, 40)).shape == (2, 10)


def test_layers_of_one_kernel_size_share_one_generator_and_get_gradients():
    arch = Architecture((Node.make("input"), hyperconv([0], 20), hyperconv([1], 40), hyperconv([2], 16, kernel=3),
                         Node.make("global_pool", [3]), Node.make("head", [4])))
    network = build(arch, (1, 40), 10, seed=0)
    layers = [m for m in network.modules() if isinstance(m, HyperConvBlock)]
    generators = [m for m in network.modules() if isinstance(m, KernelGenerator)]
    assert len(generators) == 2 and layers[0]._shared[0] is layers[1]._shared[0] is not layers[2]._shared[0]
    blocks = [(2, 1), (3, 2), (1, 3)]  # ceil(channels / 16) out x in
    assert network.plan.params == (sum(o * i * HYPER_Z for o, i in blocks) + 20 + 40 + 16  # embeddings, biases
                                   + hyper_generator_params(5) + hyper_generator_params(3)
                                   + 16 * 10 + 10)  # the head
    assert layers[1].weight().shape == (40, 20, 5) and HYPER_BLOCK == 16
    network(torch.randn(3, 1, 40)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in network.parameters())


def test_a_kernel_is_generated_from_its_blocks_embeddings():
    arch = Architecture((Node.make("input"), hyperconv([0], 16), hyperconv([1], 32),
                         Node.make("global_pool", [2]), Node.make("head", [3])))
    layer = build(arch, (1, 40), 10, seed=0).nodes["2"]
    with torch.no_grad():
        layer.embeddings[1, 0].zero_()  # the second block of output channels
        generator = layer._shared[0]
        block = generator(torch.zeros(1, HYPER_Z))[0] * layer.gain  # what a zero embedding makes
    torch.testing.assert_close(layer.weight()[16:32].detach(), block)


@pytest.mark.parametrize("name", ["random", "grid", "evolution", "bayes", "metaqnn", "nas-rl"])
def test_every_method_writes_valid_hyperconv_networks(name):
    search = make_search(name, SPACE, Budget(2), seed=1, population=4 if name == "evolution" else None)
    ops = set()
    for _ in range(3):
        asked = list(search.ask(2))
        for candidate in asked:
            SPACE.validate(candidate.arch, candidate.hparams)
            ops |= {node.op for node in candidate.arch.nodes}
        search.tell([Evaluation(c, str(i), val_acc=0.5 + i / 10, val_accs=[0.5]) for i, c in enumerate(asked)])
    assert "conv" not in ops and ("hyperconv" in ops or name == "evolution")  # evolution starts conv-free


def test_mutations_alter_and_insert_hyperconv_layers():
    rng = random.Random(0)
    arch, hparams = SPACE.sample(rng)
    for mutation in ("insert-convolution", "alter-number-of-channels", "filter-size", "remove-convolution"):
        child = apply_mutation(mutation, SPACE, arch, hparams, rng)
        SPACE.validate(child.arch, child.hparams)
        assert all(node.op != "conv" for node in child.arch.nodes)
