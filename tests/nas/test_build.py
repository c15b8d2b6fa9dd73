"""Tests for nas.build: real modules and forward passes, checked against the shape plan."""

from __future__ import annotations

import copy
import random
import time

import pytest
import torch
from torch import nn

from nas.build import Network, Project, build, remap_state
from nas.space import Architecture, ArchitectureError, Node, SearchSpace
from nas.space.shapes import ACTIVATIONS

IMAGE, SIGNAL, FEATURES = (1, 8, 8), (1, 40), (20,)


def conv(i: int, channels: int = 8, k: int = 3, stride: int = 1, bn: bool = False, act: str = "relu",
         one_d: bool = False) -> Node:
    return Node.make("conv", [i], channels=channels, kernel_h=1 if one_d else k, kernel_w=k, stride=stride,
                     batch_norm=bn, activation=act)


def dense(i: int, units: int = 16, act: str = "relu", dropout: float = 0.0) -> Node:
    return Node.make("dense", [i], units=units, activation=act, dropout=dropout)


def every_op(one_d: bool, act: str, pool: str, bn: bool, reduce: str) -> Architecture:
    """One graph using every op: conv, pool, identity, add and concat with projections, reduce, dense, head."""
    return Architecture((
        Node.make("input"),
        conv(0, 8, 3, 1, bn, act, one_d),                 # 1: (8, ...)
        Node.make("pool", [1], kind=pool, size=2),         # 2: (8, half)
        conv(2, 16, 5, 2, not bn, act, one_d),             # 3: (16, quarter)
        Node.make("add", [3, 0]),                          # 4: input resampled and projected 1 -> 16
        Node.make("concat", [4, 2]),                       # 5: (24, quarter), pool output resampled
        Node.make("identity", [5]),                        # 6
        Node.make(reduce, [6]),                            # 7: flat
        dense(7, 32, act if act != "none" else "relu", 0.3),
        dense(8, 16, "tanh", 0.0),
        Node.make("add", [9, 8]),                          # 10: flat add, linear projection 32 -> 16
        Node.make("head", [10]),
    ))


@pytest.mark.parametrize("one_d", [False, True], ids=["2d", "1d"])
@pytest.mark.parametrize("act,pool,bn,reduce", [
    ("relu", "max", True, "global_pool"), ("gelu", "avg", False, "flatten"), ("tanh", "max", False, "flatten"),
    ("sigmoid", "avg", True, "global_pool"), ("elu", "max", True, "flatten"), ("none", "avg", False, "global_pool"),
])
def test_every_op_builds_and_runs(one_d: bool, act: str, pool: str, bn: bool, reduce: str) -> None:
    shape = SIGNAL if one_d else IMAGE
    net = build(every_op(one_d, act, pool, bn, reduce), shape, 10)
    assert sum(p.numel() for p in net.parameters()) == net.plan.params
    for mode in (net.train, net.eval):
        mode()
        out = net(torch.randn(4, *shape))
        assert out.shape == (4, 10) and torch.isfinite(out).all()
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    assert all(isinstance(m, nn.Conv1d if one_d else nn.Conv2d) for m in convs)


def test_all_activations_are_covered() -> None:
    assert set(ACTIVATIONS) == {"relu", "gelu", "tanh", "sigmoid", "elu", "none"}


def test_conv_follows_the_plan_exactly() -> None:
    arch = Architecture((Node.make("input"), conv(0, 8, 5, 2, True), Node.make("flatten", [1]), Node.make("head", [2])))
    net = build(arch, (3, 9, 7), 4)
    layer = net.nodes["1"].conv
    assert isinstance(layer, nn.Conv2d) and layer.bias is None  # batch norm replaces the bias
    assert layer.kernel_size == (5, 5) and layer.stride == (2, 2) and layer.padding == (2, 2)
    assert isinstance(net.nodes["1"].norm, nn.BatchNorm2d)
    plan_shape = net.plan.nodes[1].out_shape
    assert plan_shape == (8, 5, 4)
    assert net.nodes["1"](torch.zeros(2, 3, 9, 7)).shape == (2, *plan_shape)
    asym = Architecture((Node.make("input"), Node.make("conv", [0], channels=4, kernel_h=1, kernel_w=7, stride=1,
                                                       batch_norm=False, activation="none"),
                         Node.make("flatten", [1]), Node.make("head", [2])))
    net = build(asym, (2, 6, 6), 3)
    assert net.nodes["1"].conv.padding == (0, 3) and net.nodes["1"].conv.bias is not None


def test_state_dict_keys_are_stable_per_node() -> None:
    net = build(every_op(False, "relu", "max", True, "flatten"), IMAGE, 10)
    keys = set(net.state_dict())
    assert "nodes.1.conv.weight" in keys and "nodes.1.norm.running_mean" in keys
    assert "nodes.4.proj.1.mix.weight" in keys and "nodes.10.proj.1.mix.weight" in keys
    assert "nodes.8.linear.weight" in keys and "nodes.11.weight" in keys
    assert all(k.startswith("nodes.") for k in keys)


@pytest.mark.parametrize("space_file,shape", [("spaces/cnn.yaml", IMAGE), ("spaces/cnn.yaml", SIGNAL),
                                              ("spaces/mlp.yaml", FEATURES), ("spaces/conv1d.yaml", SIGNAL),
                                              ("spaces/flat.yaml", FEATURES)],
                         ids=["cnn-2d", "cnn-1d", "mlp", "conv1d", "flat"])
def test_parameter_count_matches_plan_for_sampled_architectures(space_file: str, shape: tuple[int, ...]) -> None:
    space = SearchSpace.load(space_file).bind(shape, 10)
    rng = random.Random(0)
    for k in range(200):
        arch, hparams = space.sample(rng)
        net = build(arch, shape, 10, seed=k, init=hparams.init)
        assert sum(p.numel() for p in net.parameters()) == net.plan.params, arch.to_json()
        assert net(torch.randn(2, *shape)).shape == (2, 10)


def test_skip_between_different_shapes_is_projected() -> None:
    arch = Architecture((Node.make("input"), conv(0, 8, 3, 2), Node.make("add", [1, 0]),
                         Node.make("concat", [2, 0]), Node.make("flatten", [3]), Node.make("head", [4])))
    net = build(arch, (3, 8, 8), 5)
    add, cat = net.plan.nodes[2], net.plan.nodes[3]
    assert add.projections[1].resample_to == (4, 4) and add.projections[1].out_channels == 8
    assert cat.projections[1].resample_to == (4, 4) and cat.projections[1].out_channels is None
    project = net.nodes["2"].proj["1"]
    assert isinstance(project, Project) and isinstance(project.mix, nn.Conv2d)
    assert project.mix.weight.shape == (8, 3, 1, 1)
    assert project(torch.zeros(2, 3, 8, 8)).shape == (2, 8, 4, 4)
    assert cat.out_shape == (11, 4, 4)
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, 5)
    assert sum(p.numel() for p in net.parameters()) == net.plan.params == net.plan.nodes[2].params + \
        net.plan.nodes[1].params + net.plan.nodes[5].params


def test_flat_skip_is_projected_with_a_linear_layer() -> None:
    arch = Architecture((Node.make("input"), dense(0, 32), dense(1, 16), Node.make("add", [2, 1]), Node.make("head", [3])))
    net = build(arch, FEATURES, 3)
    assert isinstance(net.nodes["3"].proj["1"].mix, nn.Linear)
    assert net(torch.randn(5, 20)).shape == (5, 3)


def test_huge_network_is_rejected_before_allocating() -> None:
    arch = Architecture((Node.make("input"), Node.make("flatten", [0]), dense(1, 100_000), Node.make("head", [2])))
    started = time.perf_counter()
    with pytest.raises(ArchitectureError, match=r"1,229,900,010 parameters.*max_params=1,000,000"):
        build(arch, (3, 64, 64), 10, max_params=1_000_000)
    assert time.perf_counter() - started < 0.1  # 1.2e9 float32 weights would take seconds and 4.9 GB


def test_invalid_architecture_and_init_are_rejected() -> None:
    bad = Architecture((Node.make("input"), conv(0), Node.make("head", [1])))  # head on a spatial tensor
    with pytest.raises(ArchitectureError, match="flat input"):
        build(bad, IMAGE, 10)
    ok = Architecture((Node.make("input"), Node.make("flatten", [0]), Node.make("head", [1])))
    with pytest.raises(ArchitectureError, match="init 'orthogonal'"):
        build(ok, IMAGE, 10, init="orthogonal")


def same_state(a: Network, b: Network) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("init", ["kaiming", "xavier", "default"])
def test_same_seed_same_weights_different_seed_different(init: str) -> None:
    arch = every_op(False, "relu", "max", True, "flatten")
    a, b, c = (build(arch, IMAGE, 10, seed=s, init=init) for s in (3, 3, 4))
    assert same_state(a, b)
    assert not same_state(a, c)
    linear = a.nodes["8"].linear
    assert linear.weight.std() > 0
    assert (linear.bias.abs().sum() > 0) == (init == "default")  # kaiming and xavier zero the bias


def test_init_schemes_have_their_scale() -> None:
    arch = Architecture((Node.make("input"), Node.make("flatten", [0]), dense(1, 512, "relu"), Node.make("head", [2])))
    kaiming = build(arch, (1, 32, 32), 10, init="kaiming").nodes["2"].linear.weight
    xavier = build(arch, (1, 32, 32), 10, init="xavier").nodes["2"].linear.weight
    default = build(arch, (1, 32, 32), 10, init="default").nodes["2"].linear
    fan_in, fan_out = 1024, 512
    assert kaiming.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.05)
    assert xavier.std().item() == pytest.approx(2 ** 0.5 * (2 / (fan_in + fan_out)) ** 0.5, rel=0.05)
    assert default.weight.abs().max() <= fan_in ** -0.5 and default.bias.abs().max() <= fan_in ** -0.5
    assert default.bias.abs().sum() > 0


def test_build_never_touches_the_global_rng() -> None:
    before = torch.random.get_rng_state()
    net = build(every_op(False, "relu", "max", True, "flatten"), IMAGE, 10, seed=1)
    net.train()
    net(torch.zeros(2, *IMAGE))
    assert torch.equal(before, torch.random.get_rng_state())


def test_dropout_is_deterministic_per_seed() -> None:
    arch = Architecture((Node.make("input"), Node.make("flatten", [0]), dense(1, 64, "relu", 0.3),
                         Node.make("head", [2])))
    ones = torch.ones(4, 64)

    def masks(seed: int) -> list[torch.Tensor]:
        drop = build(arch, IMAGE, 10, seed=seed).nodes["2"].drop
        return [drop(ones) for _ in range(2)]

    first, again, other = masks(0), masks(0), masks(1)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], first[1])  # each call draws a fresh mask
    assert not torch.equal(first[0], other[0])
    x = torch.randn(8, *IMAGE)
    a, b = build(arch, IMAGE, 10, seed=5), build(arch, IMAGE, 10, seed=5)
    assert torch.equal(a(x), b(x))  # training mode: same weights, same masks
    a.eval()
    with torch.no_grad():
        assert torch.equal(a(x), a(x))  # no dropout when evaluating


def test_dropout_masks_scale_and_drop() -> None:
    arch = Architecture((Node.make("input"), Node.make("flatten", [0]), dense(1, 4000, "none", 0.3),
                         Node.make("head", [2])))
    net = build(arch, FEATURES, 2)
    drop = net.nodes["2"].drop
    out = drop(torch.ones(1, 4000))
    assert torch.isin(out, torch.tensor([0.0, 1 / 0.7])).all()
    assert (out == 0).float().mean().item() == pytest.approx(0.3, abs=0.03)


def test_network_deep_copies_with_its_dropout_stream() -> None:
    arch = Architecture((Node.make("input"), Node.make("flatten", [0]), dense(1, 64, "relu", 0.3),
                         Node.make("head", [2])))
    net = build(arch, IMAGE, 10, seed=2)
    x = torch.randn(4, *IMAGE)
    net(x)
    twin = copy.deepcopy(net)
    assert torch.equal(net(x), twin(x))


def test_forward_frees_outputs_nobody_reads_again() -> None:
    net = build(every_op(False, "relu", "max", True, "flatten"), IMAGE, 10)
    # node 0 is read last by node 4, node 2 by node 5, node 8 by node 10
    assert net._release[4] == (0, 3) and net._release[5] == (2, 4) and net._release[10] == (8, 9)


def test_remap_state_follows_renumbered_nodes() -> None:
    conv = dict(channels=8, kernel_h=3, kernel_w=3, stride=1, batch_norm=True, activation="relu")
    parent = Architecture((Node.make("input"), Node.make("conv", [0], **conv), Node.make("global_pool", [1]),
                           Node.make("head", [2])))
    # The child has an identity node inserted after the conv: global_pool and head move up by one.
    child = Architecture((Node.make("input"), Node.make("conv", [0], **conv), Node.make("identity", [1]),
                          Node.make("global_pool", [2]), Node.make("head", [3])))
    parent_state = build(parent, (1, 8, 8), 10, seed=1).state_dict()
    renamed = remap_state(parent_state, {1: 1, 3: 2, 4: 3})
    net = build(child, (1, 8, 8), 10, seed=2)
    net.load_state_dict(renamed, strict=False)
    assert torch.equal(net.state_dict()["nodes.4.weight"], parent_state["nodes.3.weight"])
    assert torch.equal(net.state_dict()["nodes.1.conv.weight"], parent_state["nodes.1.conv.weight"])
    assert set(renamed) <= set(net.state_dict())
