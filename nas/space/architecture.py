"""The architecture language: an immutable graph of nodes, and the training hyper-parameters.

A sentence is a list of nodes in topological order. Node 0 is the network input, the
last node is the output; every other node names its inputs by their position in the
list, so the same network always serialises to the same canonical JSON and gets the
same `arch_id`, whichever method proposed it. Parsing only reads JSON values: nothing is
ever evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Union

from nas.ids import digest

AttrValue = Union[bool, int, float, str]

OPTIMIZERS = ("sgd", "adam", "adamw")
LEARNED = "learned:"  # optimizer "learned:<run id>": the LSTM optimiser that `nas meta-train` logged as that run
INITS = ("kaiming", "xavier", "default")


class ArchitectureError(ValueError):
    """A sentence that breaks a rule of the language or of a search space."""


@dataclass(frozen=True)
class Node:
    op: str
    attrs: tuple[tuple[str, AttrValue], ...] = ()
    inputs: tuple[int, ...] = ()

    @staticmethod
    def make(op: str, inputs: tuple[int, ...] | list[int] = (), **attrs: AttrValue) -> Node:
        return Node(op, tuple(sorted(attrs.items())), tuple(inputs))

    def get(self, name: str, default: AttrValue | None = None) -> AttrValue | None:
        return dict(self.attrs).get(name, default)

    @property
    def attr_dict(self) -> dict[str, AttrValue]:
        return dict(self.attrs)

    def with_attrs(self, **changes: AttrValue) -> Node:
        return Node.make(self.op, self.inputs, **{**self.attr_dict, **changes})

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "attrs": self.attr_dict, "inputs": list(self.inputs)}


def _parse_node(index: int, raw: Any) -> Node:
    where = f"node {index}"
    if not isinstance(raw, dict) or not isinstance(raw.get("op"), str):
        raise ArchitectureError(f"{where}: expected an object with a string 'op', got {raw!r}.")
    unknown = set(raw) - {"op", "attrs", "inputs"}
    if unknown:
        raise ArchitectureError(f"{where} ({raw['op']}): unknown keys {sorted(unknown)}; "
                                "a node has only 'op', 'attrs' and 'inputs'.")
    attrs = raw.get("attrs", {})
    if not isinstance(attrs, dict):
        raise ArchitectureError(f"{where} ({raw['op']}): 'attrs' must be an object.")
    for name, value in attrs.items():
        if not isinstance(value, (bool, int, float, str)):
            raise ArchitectureError(f"{where} ({raw['op']}): attribute '{name}' must be a "
                                    f"number, string or boolean, got {value!r}.")
    inputs = raw.get("inputs", [])
    if not isinstance(inputs, list) or not all(type(i) is int for i in inputs):
        raise ArchitectureError(f"{where} ({raw['op']}): 'inputs' must be a list of node positions.")
    return Node.make(raw["op"], inputs, **attrs)


@dataclass(frozen=True)
class Architecture:
    """A network as a graph. Construction checks the structure; a SearchSpace checks the vocabulary."""

    nodes: tuple[Node, ...]

    def __post_init__(self) -> None:
        if len(self.nodes) < 2:
            raise ArchitectureError("an architecture needs at least an input node and an output node.")
        if self.nodes[0].op != "input" or self.nodes[0].inputs:
            raise ArchitectureError("node 0: the first node must be {'op': 'input'} with no inputs.")
        for i, node in enumerate(self.nodes[1:], start=1):
            if node.op == "input":
                raise ArchitectureError(f"node {i}: only node 0 may be an input.")
            if not node.inputs:
                raise ArchitectureError(f"node {i} ({node.op}): has no inputs; every node but the "
                                        "input reads at least one earlier node.")
            for j in node.inputs:
                if not 0 <= j < i:
                    raise ArchitectureError(f"node {i} ({node.op}): input {j} is not an earlier "
                                            f"node; inputs must point backwards (0..{i - 1}).")

    @property
    def output(self) -> int:
        return len(self.nodes) - 1

    def to_json(self) -> dict[str, Any]:
        return {"nodes": [n.to_json() for n in self.nodes]}

    @staticmethod
    def from_json(data: Any) -> Architecture:
        if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
            raise ArchitectureError("an architecture is an object {'nodes': [...]}.")
        return Architecture(tuple(_parse_node(i, raw) for i, raw in enumerate(data["nodes"])))

    @property
    def arch_id(self) -> str:
        return digest(self.to_json())

    def describe(self) -> list[str]:
        """One readable line per node: position, op, attributes, inputs."""
        return [f"{i:>3}  {node.op:<11} {' '.join(f'{k}={v}' for k, v in node.attrs):<72} "
                f"<- {', '.join(map(str, node.inputs)) or '-'}" for i, node in enumerate(self.nodes)]

    def consumers(self, index: int) -> list[int]:
        return [i for i, n in enumerate(self.nodes) if index in n.inputs]


def learned_run(optimizer: Any) -> str | None:
    """The run id of a learned optimiser named "learned:<run id>", else None."""
    if not isinstance(optimizer, str) or not optimizer.startswith(LEARNED):
        return None
    run_id = optimizer[len(LEARNED):]
    return run_id if run_id.isalnum() else None


@dataclass(frozen=True)
class HParams:
    """Training hyper-parameters. `epochs` is the horizon of the learning-rate schedule."""

    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    init: str = "kaiming"
    epochs: int = 10

    def __post_init__(self) -> None:
        problems = []
        if not (self.optimizer in OPTIMIZERS or learned_run(self.optimizer)):
            problems.append(f"optimizer '{self.optimizer}' is not one of {list(OPTIMIZERS)} nor "
                            f"'{LEARNED}<run id>' (a learned optimiser of `nas meta-train`)")
        if self.init not in INITS:
            problems.append(f"init '{self.init}' is not one of {list(INITS)}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 10):
            problems.append(f"lr={self.lr!r} must be a number in (0, 10)")
        if not (isinstance(self.weight_decay, (int, float)) and 0 <= self.weight_decay < 1):
            problems.append(f"weight_decay={self.weight_decay!r} must be in [0, 1)")
        if not (type(self.batch_size) is int and self.batch_size >= 1):
            problems.append(f"batch_size={self.batch_size!r} must be a positive integer")
        if not (type(self.epochs) is int and self.epochs >= 1):
            problems.append(f"epochs={self.epochs!r} must be a positive integer")
        if problems:
            raise ArchitectureError("invalid hyper-parameters: " + "; ".join(problems) + ".")

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @staticmethod
    def from_json(data: Any) -> HParams:
        if not isinstance(data, dict):
            raise ArchitectureError(f"hyper-parameters must be an object, got {data!r}.")
        known = {f.name for f in fields(HParams)}
        unknown = set(data) - known
        if unknown:
            raise ArchitectureError(f"unknown hyper-parameters {sorted(unknown)}; known: {sorted(known)}.")
        return HParams(**data)

    def with_(self, **changes: Any) -> HParams:
        return replace(self, **changes)
