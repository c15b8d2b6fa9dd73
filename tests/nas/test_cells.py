"""Tests for nas.cells (Zoph & Le recurrent cells) and nas.sequences (the adding problem)."""

from __future__ import annotations

import doctest
import json
import random

import numpy as np
import pytest
import torch
from torch import nn

import nas.cells as cells_module
import nas.space.cell as cell_module
from nas.cells import Cell, CellRNN
from nas.reports import draw_cell
from nas.space.cell import BASES, CellSpec, cell_attrs, cell_params, cell_spec
from nas.sequences import adding_problem
from tests.conftest import ROOT

ROOT_SPACES = ROOT / "spaces"

BATCH, LENGTH, INPUT, HIDDEN = 3, 4, 2, 5


def specs() -> list[CellSpec]:
    """A random spec of every base, with and without memory (fixed seeds, so the same every run).

    The seeds avoid dead cells: about a fifth of random cells leave some parameter without
    gradient from the zero start state (e.g. a single mul leaf gives W x * U 0 = 0 forever).
    """
    return [CellSpec.random(random.Random(2 * base + memory), base=base, memory=memory)
            for base in BASES for memory in (False, True)]


def leaf_weights(cell: Cell, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """W_i, b_i and U_i of leaf i, cut out of the cell's fused Linears."""
    rows = slice(i * HIDDEN, (i + 1) * HIDDEN)
    return cell.w.weight[rows], cell.w.bias[rows], cell.u.weight[rows]


# --------------------------------------------------------------------------- modules


@pytest.mark.parametrize("spec", specs(), ids=CellSpec.describe)
def test_shapes_and_gradients(spec):
    torch.manual_seed(0)
    cell = Cell(spec, INPUT, HIDDEN)
    zeros = torch.zeros(BATCH, HIDDEN)
    h, c = cell(torch.randn(BATCH, INPUT), (zeros, zeros))
    assert h.shape == c.shape == (BATCH, HIDDEN)
    if not spec.has_memory:
        assert c is zeros  # without memory c is passed through untouched

    rnn = CellRNN(spec, INPUT, HIDDEN)
    out = rnn(torch.randn(BATCH, LENGTH, INPUT))
    assert out.shape == (BATCH, HIDDEN)
    out.pow(2).sum().backward()
    for name, p in rnn.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("spec", [CellSpec.elman(), *specs()], ids=CellSpec.describe)
@pytest.mark.parametrize("sizes", [(1, 1), (3, 7), (16, 4)])
def test_cell_params_counts_torch_parameters(spec, sizes):
    input_size, hidden = sizes
    counted = sum(p.numel() for p in Cell(spec, input_size, hidden).parameters())
    separate = spec.base * sum(p.numel() for m in (nn.Linear(input_size, hidden), nn.Linear(hidden, hidden, bias=False))
                               for p in m.parameters())
    assert cell_params(spec, input_size, hidden) == counted == separate


def test_elman_equals_torch_rnn_cell():
    torch.manual_seed(0)
    reference = nn.RNNCell(INPUT, HIDDEN, nonlinearity="tanh")
    rnn = CellRNN(CellSpec.elman(), INPUT, HIDDEN)
    with torch.no_grad():
        rnn.cell.w.weight.copy_(reference.weight_ih)
        rnn.cell.w.bias.copy_(reference.bias_ih + reference.bias_hh)
        rnn.cell.u.weight.copy_(reference.weight_hh)
    x = torch.randn(BATCH, LENGTH, INPUT)
    h = torch.zeros(BATCH, HIDDEN)
    for t in range(LENGTH):
        h = reference(x[:, t], h)
    torch.testing.assert_close(rnn(x), h, atol=1e-6, rtol=0)


def test_memory_step_by_hand():
    # Leaf 0 takes c_{t-1} in; c_t is leaf 1's value before its activation; the root multiplies the two branches.
    spec = CellSpec(base=2, nodes=(("add", "tanh"), ("mul", "sigmoid"), ("mul", "tanh")),
                    inject=("mul", "relu"), inject_at=0, memory_from=1)
    torch.manual_seed(0)
    cell = Cell(spec, INPUT, HIDDEN)
    x, h, c = torch.randn(BATCH, INPUT), torch.randn(BATCH, HIDDEN), torch.randn(BATCH, HIDDEN)
    (w0, b0, u0), (w1, b1, u1) = leaf_weights(cell, 0), leaf_weights(cell, 1)

    a0 = torch.tanh(x @ w0.T + b0 + h @ u0.T)
    a1 = torch.sigmoid((x @ w1.T + b1) * (h @ u1.T))
    a0_injected = torch.relu(a0 * c)
    expected_h = torch.tanh(a0_injected * a1)

    new_h, new_c = cell(x, (h, c))
    torch.testing.assert_close(new_h, expected_h)
    torch.testing.assert_close(new_c, (x @ w1.T + b1) * (h @ u1.T))  # leaf 1 before its sigmoid (section 3.4)


def test_memory_at_the_root_by_hand():
    # Injecting at the root changes h_t itself; c_t is the root's output before that inject.
    spec = CellSpec(base=1, nodes=(("add", "identity"),), inject=("add", "tanh"), inject_at=0, memory_from=0)
    torch.manual_seed(0)
    cell = Cell(spec, INPUT, HIDDEN)
    x, h, c = torch.randn(BATCH, INPUT), torch.randn(BATCH, HIDDEN), torch.randn(BATCH, HIDDEN)
    w, b, u = leaf_weights(cell, 0)
    root = x @ w.T + b + h @ u.T

    new_h, new_c = cell(x, (h, c))
    torch.testing.assert_close(new_h, torch.tanh(root + c))
    torch.testing.assert_close(new_c, root)


# --------------------------------------------------------------------------- specs


@pytest.mark.parametrize("kwargs, message", [
    ({"base": 3, "nodes": (("add", "tanh"),) * 5}, "base must be one of 1, 2, 4, 8"),
    ({"base": 2, "nodes": (("add", "tanh"),) * 2}, "nodes must have 2\\*base-1 = 3 entries"),
    ({"base": 1, "nodes": (("add", "gelu"),)}, "nodes\\[0\\] activation must be one of tanh, relu"),
    ({"base": 1, "nodes": (("sub", "tanh"),)}, "nodes\\[0\\] combine must be one of add, mul"),
    ({"base": 1, "nodes": (("add", "tanh"),), "inject": ("add", "tanh")}, "must be all set .* or all None"),
    ({"base": 2, "nodes": (("add", "tanh"),) * 3, "inject": ("add", "tanh"), "inject_at": 3, "memory_from": 0},
     "inject_at must be a node index in 0..2, got 3"),
    ({"base": 2, "nodes": (("add", "tanh"),) * 3, "inject": ("add", "max"), "inject_at": 0, "memory_from": 0},
     "inject activation must be one of"),
])
def test_invalid_specs_explain_themselves(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CellSpec(**kwargs)


@pytest.mark.parametrize("spec", [CellSpec.elman(), *specs()], ids=CellSpec.describe)
def test_json_round_trip(spec):
    assert CellSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    assert "\n" not in spec.describe()


def test_draw_cell_makes_a_png():
    assert draw_cell(CellSpec.elman()).startswith(b"\x89PNG")
    assert draw_cell(CellSpec.random(random.Random(0), base=4)).startswith(b"\x89PNG")


@pytest.mark.parametrize("module", [cells_module, cell_module])
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_a_space_file_whose_cell_domains_cannot_spell_trees_is_refused_by_name():
    import yaml

    from nas.space import SearchSpace, SpaceError

    raw = yaml.safe_load(open(ROOT_SPACES / "rnn-cell.yaml"))
    for change, message in [({"base": [2, 8]}, "one base"), ({"base": [4]}, "node7 lies beyond"),
                            ({"node3": ["none", "add_tanh"]}, "node3 is a node")]:
        broken = {**raw, "ops": {**raw["ops"], "cell": {**raw["ops"]["cell"], **change}}}
        with pytest.raises(SpaceError, match=message):
            SearchSpace.from_dict(broken, "broken.yaml")


def test_a_multiplying_leaf_under_a_multiplying_root_never_leaves_zero():
    """W x * U 0 = 0 at the zero start state, and 0 times anything stays 0: the cell ignores its
    input and gets no gradient. spaces/rnn-cell-small.yaml's leaves all add, so no cell of it is dead so."""
    import yaml

    spec = CellSpec(base=2, nodes=(("mul", "tanh"), ("add", "tanh"), ("mul", "identity")))
    x = torch.randn(BATCH, LENGTH, INPUT, requires_grad=True)
    h = CellRNN(spec, INPUT, HIDDEN)(x)
    h.sum().backward()
    assert not h.any() and not x.grad.any()
    cell = yaml.safe_load((ROOT_SPACES / "rnn-cell-small.yaml").read_text())["ops"]["cell"]
    leaves = [op for i in range(cell["base"][0]) for op in cell[f"node{i}"]]
    assert leaves and all(op.startswith("add_") for op in leaves)


@torch.no_grad()
def test_every_cell_of_the_gated_space_gates_its_memory_and_reads_its_input():
    """spaces/rnn-cell-gated.yaml: c_t = node12(sigmoid gate * c_{t-1}, node9), h_t bounded, whatever else is drawn."""
    from nas.build import build
    from nas.space import SearchSpace

    space = SearchSpace.load(ROOT_SPACES / "rnn-cell-gated.yaml").bind((2, 12), 10)
    rng, x = random.Random(0), torch.randn(8, 2, 12)
    for _ in range(20):
        arch = space.sample_arch(rng)
        cell = next(i for i, node in enumerate(arch.nodes) if node.op == "cell")
        spec = cell_spec(arch.nodes[cell].attr_dict)
        assert (spec.inject, spec.inject_at, spec.memory_from) == (("mul", "identity"), 8, 12)
        assert spec.nodes[8][1] == "sigmoid" and spec.nodes[12][0] == "add"
        h = build(arch, (2, 12), 10, seed=0).nodes[str(cell)](x)
        assert (h - h[:1]).abs().max() > 1e-6  # not a dead cell: different sequences, different states
        assert h.abs().max() <= 1  # the root's activation bounds h_t, so it cannot feed back until it overflows


@pytest.mark.parametrize("base", BASES)
def test_a_cell_nodes_attributes_spell_its_spec_and_back(base):
    spec = CellSpec.random(random.Random(base), base=base)
    assert cell_spec(cell_attrs(spec, 16)) == spec
    plain = CellSpec.random(random.Random(base), base=base, memory=False)
    assert cell_spec(cell_attrs(plain, 16)) == plain


def test_attributes_that_do_not_spell_a_tree_are_named():
    attrs = cell_attrs(CellSpec.random(random.Random(0), base=2), 16)
    with pytest.raises(ValueError, match="node3, .* must be 'none'"):
        cell_spec({**attrs, "node3": "add_tanh", "node4": "mul_relu"})
    with pytest.raises(ValueError, match="node1 activation"):
        cell_spec({**attrs, "node1": "add_softsign"})
    with pytest.raises(ValueError, match="inject_at 0 and memory_from 0"):
        cell_spec({**attrs, "inject": "none", "inject_at": 2})


def test_a_network_whose_cell_spells_elman_computes_torchs_rnn():
    from nas.build import build
    from nas.space import Architecture, Node

    cell = Node.make("cell", [0], **cell_attrs(CellSpec.elman(), 6))
    arch = Architecture((Node.make("input"), cell, Node.make("head", [1])))
    network = build(arch, (3, 9), 4, seed=0)
    rnn = nn.RNN(3, 6, batch_first=True)
    recurrent = network.nodes["1"].rnn.cell
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(recurrent.w.weight)
        rnn.bias_ih_l0.copy_(recurrent.w.bias)
        rnn.weight_hh_l0.copy_(recurrent.u.weight)
        rnn.bias_hh_l0.zero_()
    x = torch.randn(5, 3, 9)  # (batch, channels, steps): the language's signal layout
    _, h = rnn(x.transpose(1, 2))
    torch.testing.assert_close(network.nodes["1"](x), h[0], atol=1e-6, rtol=1e-5)
    assert sum(p.numel() for p in network.parameters()) == network.plan.params


# --------------------------------------------------------------------------- adding problem


def test_adding_problem_layout_and_labels():
    n, length, classes = 50, 7, 10
    x, y = adding_problem(n, length, seed=0, classes=classes)
    assert x.shape == (n, 2, length) and x.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int64
    assert ((x[:, 0] >= 0) & (x[:, 0] < 1)).all()
    assert ((y >= 0) & (y < classes)).all()
    half = length // 2
    for row, label in zip(x, y):
        marked = np.flatnonzero(row[1])
        assert set(row[1]) <= {0.0, 1.0} and len(marked) == 2
        assert marked[0] < half <= marked[1]
        total = float(row[0, marked[0]]) + float(row[0, marked[1]])
        assert label == min(int(total / 2 * classes), classes - 1)


def test_adding_problem_is_deterministic():
    x, y = adding_problem(20, 10, seed=3)
    again_x, again_y = adding_problem(20, 10, seed=3)
    other_x, _ = adding_problem(20, 10, seed=4)
    assert np.array_equal(x, again_x) and np.array_equal(y, again_y)
    assert not np.array_equal(x, other_x)


@pytest.mark.parametrize("kwargs, message", [
    ({"n": 0, "length": 4}, "n .* at least 1"),
    ({"n": 1, "length": 1}, "length must be at least 2"),
    ({"n": 1, "length": 4, "classes": 1}, "classes must be at least 2"),
])
def test_adding_problem_rejects_bad_sizes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        adding_problem(seed=0, **kwargs)
