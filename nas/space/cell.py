"""Recurrent cells in the language: the tree of Zoph and Le 2017 (section 3.2) as an op.

A cell is a binary tree. Each of its `base` leaves mixes the input x_t and the previous
hidden state h_{t-1} (a_i = act(combine(W_i x_t, U_i h_{t-1}))), each internal node mixes
its two children, and the root is the new hidden state h_t. An optional memory state c
(the paper's "cell inject" and "cell indices") is read from one node as c_t and fed back
at one node of the next step, as an LSTM's cell state is.

In a sentence the cell is the op `cell`, which reads a sequence (C, L) step by step and
outputs its last hidden state (units,). Its attributes spell the tree so that every method
can choose them one by one: `units`; `base` (1, 2, 4 or 8); `node0` ... `node14`, each
"combine_activation" (e.g. "add_tanh"), leaves first and the root last, "none" beyond the
2 * base - 1 nodes of the tree; `inject` ("combine_activation", or "none" for no memory);
`inject_at` and `memory_from`, node indices (0 without memory). This module is arithmetic
only; `nas.cells` compiles a spec into a torch module.

    >>> spec = cell_spec({"units": 8, "base": 1, "node0": "add_tanh", **{f"node{i}": "none" for i in range(1, 15)},
    ...                   "inject": "none", "inject_at": 0, "memory_from": 0})
    >>> spec == CellSpec.elman(), cell_params(spec, input_size=2, hidden_size=8)
    (True, 88)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from random import Random
from typing import Any

CELL_COMBINES = ("add", "mul")
CELL_ACTIVATIONS = ("tanh", "relu", "sigmoid", "identity")
BASES = (1, 2, 4, 8)
NONE = "none"
NODE_ATTRS = tuple(f"node{i}" for i in range(2 * max(BASES) - 1))
CELL_ATTRS = ("units", "base", *NODE_ATTRS, "inject", "inject_at", "memory_from")
# What a cell's memory c_t holds, part of the trial key of every network with a cell: the chosen
# node's value before its activation (Zoph and Le 2017, section 3.4); earlier versions took it after.
CELL_MEMORY = "before-activation"


def tree_children(base: int) -> dict[int, tuple[int, int]]:
    """The two children of every internal node: node base + k joins positions 2k, 2k+1 of the level below."""
    children: dict[int, tuple[int, int]] = {}
    level, next_id = list(range(base)), base
    while len(level) > 1:
        parents = []
        for k in range(0, len(level), 2):
            children[next_id] = (level[k], level[k + 1])
            parents.append(next_id)
            next_id += 1
        level = parents
    return children


def _check_op(field: str, op: Any) -> tuple[str, str]:
    if not isinstance(op, (tuple, list)) or len(op) != 2:
        raise ValueError(f"{field} must be a (combine, activation) pair, got {op!r}.")
    combine, activation = op
    if combine not in CELL_COMBINES:
        raise ValueError(f"{field} combine must be one of {', '.join(CELL_COMBINES)}, got {combine!r}.")
    if activation not in CELL_ACTIVATIONS:
        raise ValueError(f"{field} activation must be one of {', '.join(CELL_ACTIVATIONS)}, got {activation!r}.")
    return combine, activation


@dataclass(frozen=True)
class CellSpec:
    """A cell's tree: (combine, activation) per node, leaves first and the root last, plus optional memory."""

    base: int
    nodes: tuple[tuple[str, str], ...]
    inject: tuple[str, str] | None = None
    inject_at: int | None = None
    memory_from: int | None = None

    def __post_init__(self) -> None:
        if type(self.base) is not int or self.base not in BASES:  # type(): neither 2.0 nor True passes
            raise ValueError(f"base must be one of {', '.join(map(str, BASES))}, got {self.base!r}.")
        if len(self.nodes) != self.size:
            raise ValueError(f"nodes must have 2*base-1 = {self.size} entries for base {self.base}, "
                             f"got {len(self.nodes)}.")
        # Lists (from JSON or a caller) become tuples, so that equal specs compare and hash equal.
        object.__setattr__(self, "nodes", tuple(_check_op(f"nodes[{i}]", op) for i, op in enumerate(self.nodes)))
        settings = (self.inject, self.inject_at, self.memory_from)
        if all(s is None for s in settings):
            return
        if any(s is None for s in settings):
            raise ValueError("inject, inject_at and memory_from must be all set (a cell with memory) or all None "
                             f"(no memory), got inject={self.inject!r}, inject_at={self.inject_at!r}, "
                             f"memory_from={self.memory_from!r}.")
        object.__setattr__(self, "inject", _check_op("inject", self.inject))
        for name in ("inject_at", "memory_from"):
            index = getattr(self, name)
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < self.size:
                raise ValueError(f"{name} must be a node index in 0..{self.size - 1}, got {index!r}.")

    @property
    def size(self) -> int:
        """The number of tree nodes, leaves included."""
        return 2 * self.base - 1

    @property
    def has_memory(self) -> bool:
        return self.inject is not None

    @staticmethod
    def elman() -> CellSpec:
        """The plain Elman RNN: one leaf, h_t = tanh(W x_t + U h_{t-1})."""
        return CellSpec(base=1, nodes=(("add", "tanh"),))

    @staticmethod
    def random(rng: Random, base: int = 8, memory: bool = True) -> CellSpec:
        """Every choice uniform; `memory` (as in the paper's search space) adds the cell inject and indices."""
        def op() -> tuple[str, str]:
            return rng.choice(CELL_COMBINES), rng.choice(CELL_ACTIVATIONS)

        size = 2 * base - 1
        nodes = tuple(op() for _ in range(size))
        if not memory:
            return CellSpec(base, nodes)
        return CellSpec(base, nodes, inject=op(), inject_at=rng.randrange(size), memory_from=rng.randrange(size))

    def describe(self) -> str:
        """One line, e.g. 'base 1: leaves add/tanh; no memory' for the Elman cell."""
        ops = [f"{c}/{a}" for c, a in self.nodes]
        text = f"base {self.base}: leaves {' '.join(ops[:self.base])}"
        if self.base > 1:
            text += f"; tree {' '.join(ops[self.base:])}"
        if self.inject is None:
            return text + "; no memory"
        return text + (f"; c_{{t-1}} {self.inject[0]}/{self.inject[1]} at node {self.inject_at}, "
                       f"c_t from node {self.memory_from}")

    def to_json(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "nodes": [list(op) for op in self.nodes],
            "inject": list(self.inject) if self.inject is not None else None,
            "inject_at": self.inject_at,
            "memory_from": self.memory_from,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> CellSpec:
        inject = data.get("inject")
        return CellSpec(
            base=int(data["base"]),
            nodes=tuple(tuple(op) for op in data["nodes"]),
            inject=tuple(inject) if inject is not None else None,
            inject_at=data.get("inject_at"),
            memory_from=data.get("memory_from"),
        )


def cell_params(spec: CellSpec, input_size: int, hidden_size: int) -> int:
    """The parameter count of `Cell(spec, input_size, hidden_size)`: W_i with bias, U_i without, per leaf."""
    return spec.base * (input_size * hidden_size + hidden_size) + spec.base * hidden_size * hidden_size


def _pair(text: Any, name: str) -> tuple[str, str]:
    combine, _, activation = str(text).partition("_")
    return _check_op(name, (combine, activation))


def cell_spec(attrs: Mapping[str, Any]) -> CellSpec:
    """The tree a `cell` node's attributes spell; ValueError names the attribute that is wrong."""
    base = attrs["base"]
    if type(base) is not int or base not in BASES:
        raise ValueError(f"base must be one of {', '.join(map(str, BASES))}, got {base!r}.")
    size = 2 * base - 1
    unused = [name for name in NODE_ATTRS[size:] if attrs[name] != NONE]
    if unused:
        raise ValueError(f"a tree of base {base} has {size} nodes, so {', '.join(unused)} must be 'none'.")
    nodes = tuple(_pair(attrs[name], name) for name in NODE_ATTRS[:size])
    if attrs["inject"] == NONE:
        if attrs["inject_at"] != 0 or attrs["memory_from"] != 0:
            raise ValueError("a cell without memory (inject 'none') has inject_at 0 and memory_from 0.")
        return CellSpec(base, nodes)
    return CellSpec(base, nodes, _pair(attrs["inject"], "inject"), attrs["inject_at"], attrs["memory_from"])


def cell_attrs(spec: CellSpec, units: int) -> dict[str, Any]:
    """The attributes of a `cell` node that spell `spec` (the inverse of `cell_spec`)."""
    nodes = [f"{c}_{a}" for c, a in spec.nodes] + [NONE] * (len(NODE_ATTRS) - spec.size)
    return {"units": units, "base": spec.base, **dict(zip(NODE_ATTRS, nodes)),
            "inject": "_".join(spec.inject) if spec.inject else NONE,
            "inject_at": spec.inject_at or 0, "memory_from": spec.memory_from or 0}


def cell_domain_problem(values: Mapping[str, list[Any]]) -> str | None:
    """What keeps a space file's `cell` domains (attribute -> allowed values) from spelling
    trees, or None. One base per space: then every listed value fits every tree."""
    bases = values["base"]
    if len(bases) != 1:
        return f"base lists {bases}; a space searches trees of one base, so give one value (e.g. [8])."
    size = 2 * bases[0] - 1
    for i, name in enumerate(NODE_ATTRS):
        if i < size and NONE in values[name]:
            return f"{name} is a node of a base-{bases[0]} tree: list operations such as add_tanh, not none."
        if i >= size and values[name] != [NONE]:
            return f"{name} lies beyond the {size} nodes of a base-{bases[0]} tree: give it [none]."
    for name in ("inject_at", "memory_from"):
        if max(values[name]) >= size:
            return f"{name} lists {max(values[name])}, but a base-{bases[0]} tree has nodes 0..{size - 1}."
    return None


__all__ = ["BASES", "CELL_ACTIVATIONS", "CELL_ATTRS", "CELL_COMBINES", "CellSpec", "NODE_ATTRS", "cell_attrs",
           "cell_domain_problem", "cell_params", "cell_spec", "tree_children"]
