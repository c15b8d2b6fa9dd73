"""The eleven mutations of Real et al. 2017, "Large-Scale Evolution of Image Classifiers",
and a twelfth for spaces of recurrent cells (alter-cell: one attribute of the cell's tree).

A mutation turns a parent (architecture, hyper-parameters) into a child that the search
space accepts, and says which child nodes may inherit the parent's weights: `node_map`
maps child node -> parent node for every node carried over with its op (the convention of
`nas.build.remap_state`); training then loads each of those tensors whose shape is unchanged. A mutation that cannot apply
raises NotApplicable with the reason; it never returns a child that `space.validate`
rejects.

    >>> import random
    >>> from nas.space import SearchSpace
    >>> space = SearchSpace.load("spaces/cnn.yaml").bind((1, 8, 8), 10)
    >>> rng = random.Random(0)
    >>> arch, hparams = space.sample(rng)
    >>> child = apply_mutation("insert-convolution", space, arch, hparams, rng)
    >>> sum(n.op == "conv" for n in child.arch.nodes) == sum(n.op == "conv" for n in arch.nodes) + 1
    True
    >>> space.is_valid(child.arch, child.hparams)
    True
    >>> mutate(space, child.arch, child.hparams, rng).mutation in MUTATIONS
    True
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from nas.space.architecture import Architecture, ArchitectureError, AttrValue, HParams, Node
from nas.space.domain import Domain
from nas.space.shapes import CONV_OPS, NodePlan, Plan
from nas.space.space import SearchSpace

__all__ = ["MUTATIONS", "Mutated", "NotApplicable", "apply_mutation", "mutate"]

MUTATIONS: tuple[str, ...] = (
    "alter-learning-rate", "identity", "reset-weights", "insert-convolution", "remove-convolution",
    "alter-stride", "alter-number-of-channels", "filter-size", "insert-one-to-one", "add-skip", "remove-skip",
    "alter-cell")

MERGES = ("add", "concat")


class NotApplicable(Exception):
    """This mutation cannot apply to this architecture in this space; the message says why."""


@dataclass(frozen=True)
class Mutated:
    mutation: str
    arch: Architecture
    hparams: HParams
    # child node index -> parent node index, for every node carried over with its op (training
    # loads those of its tensors whose shape is unchanged); None = inherit nothing (reset-weights)
    node_map: dict[int, int] | None


# A candidate child graph: its nodes, and child index -> parent index for every node carried
# over from the parent (inserted nodes are absent). A candidate generator yields a str instead
# when one candidate is impossible, so the caller can move on to the next and still say why.
Edit = tuple[tuple[Node, ...], dict[int, int]]
Candidates = Iterator["Edit | str"]


# ---- graph surgery ------------------------------------------------------------------------

def _rewired(node: Node, inputs: Iterable[int]) -> Node:
    return Node(node.op, node.attrs, tuple(inputs))


def _insert_after(nodes: tuple[Node, ...], k: int, new: Node) -> Edit:
    """Put `new` (inputs in parent numbering, all <= k) at k + 1; every node that read k reads it instead."""
    later = tuple(_rewired(n, (k + 1 if j == k else j + 1 if j > k else j for j in n.inputs)) for n in nodes[k + 1:])
    origin = {i: i for i in range(k + 1)} | {i + 1: i for i in range(k + 1, len(nodes))}
    return nodes[:k + 1] + (new,) + later, origin


def _remove(nodes: tuple[Node, ...], k: int) -> Edit | str:
    """Drop node k; its consumers read its first input instead."""
    source = nodes[k].inputs[0]
    later = []
    for i, n in enumerate(nodes[k + 1:], start=k + 1):
        inputs = tuple(source if j == k else j - 1 if j > k else j for j in n.inputs)
        if len(set(inputs)) < len(inputs):
            # A merge summing a tensor with itself is legal but no longer a skip; refuse it.
            return f"removing node {k} ({nodes[k].op}) would make node {i} ({n.op}) read node {source} twice"
        later.append(_rewired(n, inputs))
    origin = {i: i for i in range(k)} | {i - 1: i for i in range(k + 1, len(nodes))}
    return nodes[:k] + tuple(later), origin


def _replace(nodes: tuple[Node, ...], k: int, new: Node) -> Edit:
    return nodes[:k] + (new,) + nodes[k + 1:], {i: i for i in range(len(nodes))}


# ---- helpers ------------------------------------------------------------------------------

def _shuffled(rng: random.Random, items: Sequence) -> list:
    return rng.sample(list(items), len(items))


def _require_op(space: SearchSpace, op: str) -> None:
    if op not in space.ops:
        raise NotApplicable(f"space '{space.name}' has no '{op}' op.")


def _convs(nodes: tuple[Node, ...]) -> list[int]:
    convs = [i for i, n in enumerate(nodes) if n.op in CONV_OPS]
    if not convs:
        raise NotApplicable("the architecture has no conv node.")
    return convs


def _nearest(domain: Domain, target: int) -> AttrValue:
    """The allowed value closest to `target` on a log scale (ties go to the larger value)."""
    values = [v for v in domain.values() if isinstance(v, int) and not isinstance(v, bool) and v > 0]
    if not values:
        raise NotApplicable(f"no positive integer value is allowed ({domain.describe()}).")
    return min(values, key=lambda v: (abs(math.log(v / target)), -v))


def _other_values(domain: Domain, current: AttrValue, keep: Callable[[int], bool] = lambda v: True) -> list:
    return [v for v in domain.values() if v != current and isinstance(v, int) and keep(v)]


def _same_op(child: NodePlan, parent: NodePlan) -> bool:
    # Same op, whatever its attributes or input shapes: the builder loads each of the
    # parent's tensors whose shape still fits, so a conv after a changed stride keeps its kernel.
    return child.node.op == parent.node.op


def _first_valid(space: SearchSpace, hparams: HParams, candidates: Candidates) -> tuple[Edit, Plan]:
    """The first candidate the space accepts, with its plan; NotApplicable with the first reason otherwise."""
    reasons: list[str] = []
    for candidate in candidates:
        if isinstance(candidate, str):
            reasons.append(candidate)
            continue
        try:
            return candidate, space.validate(Architecture(candidate[0]), hparams)
        except ArchitectureError as exc:
            reasons.append(str(exc))
    if not reasons:
        raise NotApplicable("there is no place to apply it.")
    more = f" (and {len(reasons) - 1} other candidates failed)" if len(reasons) > 1 else ""
    raise NotApplicable(f"{reasons[0]}{more}")


# ---- the graph mutations: each yields candidate children in random order -------------------

def _insert_convolution(space: SearchSpace, nodes: tuple[Node, ...], plan: Plan, rng: random.Random) -> Candidates:
    op = next((op for op in space.conv_ops() if op in space.ops), None)  # the op the layout's blocks use
    if op is None:
        raise NotApplicable(f"space '{space.name}' has no conv op.")
    domains = space.domains(op)
    strides = [s for s in (1, 2) if domains["stride"].contains(s)]
    if not strides:
        raise NotApplicable(f"stride allows neither 1 nor 2 ({domains['stride'].describe()}).")
    norms = [(bn, act) for bn, act in ((True, "relu"), (False, "none"))
             if domains["batch_norm"].contains(bn) and domains["activation"].contains(act)]
    if not norms:
        raise NotApplicable("the space allows neither batch_norm true + relu nor batch_norm false + none.")

    def conv_after(k: int, in_channels: int) -> Node:
        bn, act = rng.choice(norms)
        return Node.make(op, [k], channels=_nearest(domains["channels"], in_channels),
                         kernel_h=_nearest(domains["kernel_h"], 3), kernel_w=_nearest(domains["kernel_w"], 3),
                         stride=rng.choice(strides), batch_norm=bn, activation=act)

    spatial = [k for k, p in enumerate(plan.nodes) if len(p.out_shape) >= 2]
    if not spatial and "signal" in space.ops and len(plan.input_shape) == 1:
        # A perceptron on flat features: view them as one signal first, as the layout writes
        # conv nets there, so evolution can move from perceptrons to conv nets and back.
        viewed, _ = _insert_after(nodes, 0, Node.make("signal", [0]))
        child, origin = _insert_after(viewed, 1, conv_after(1, 1))
        yield child, {0: 0} | {c: p - 1 for c, p in origin.items() if p > 1}
        return
    if not spatial:
        raise NotApplicable(f"the data {space.input_shape} has no spatial part to put a convolution in.")
    for k in _shuffled(rng, spatial):
        yield _insert_after(nodes, k, conv_after(k, plan.nodes[k].out_shape[0]))


def _remove_convolution(space: SearchSpace, nodes: tuple[Node, ...], plan: Plan, rng: random.Random) -> Candidates:
    for k in _shuffled(rng, _convs(nodes)):
        yield _remove(nodes, k)


def _alter_conv(attrs: Callable[[random.Random, SearchSpace], list[str]], keep: Callable[[int], bool] = lambda v: True,
                ) -> Callable[[SearchSpace, tuple[Node, ...], Plan, random.Random], Candidates]:
    """A mutation that sets one attribute (of those `attrs` lists, tried in order) of a random conv."""
    def candidates(space: SearchSpace, nodes: tuple[Node, ...], plan: Plan, rng: random.Random) -> Candidates:
        for k in _shuffled(rng, _convs(nodes)):
            domains = space.domains(nodes[k].op)
            for name in attrs(rng, space):
                values = _other_values(domains[name], nodes[k].get(name), keep)
                if not values:
                    yield f"node {k} (conv): '{name}' has no other allowed value ({domains[name].describe()})"
                for value in _shuffled(rng, values):
                    yield _replace(nodes, k, nodes[k].with_attrs(**{name: value}))
    return candidates


def _kernel_dims(rng: random.Random, space: SearchSpace) -> list[str]:
    if space.one_d:
        return ["kernel_w"]  # 1-D convolutions: kernel_h must stay 1
    return _shuffled(rng, ["kernel_h", "kernel_w"])


def _insert_one_to_one(space: SearchSpace, nodes: tuple[Node, ...], plan: Plan, rng: random.Random) -> Candidates:
    _require_op(space, "identity")
    for k in _shuffled(rng, range(len(nodes) - 1)):
        yield _insert_after(nodes, k, Node.make("identity", [k]))


def _add_skip(space: SearchSpace, nodes: tuple[Node, ...], plan: Plan, rng: random.Random) -> Candidates:
    _require_op(space, "add")
    rank = [len(p.out_shape) for p in plan.nodes]
    pairs = [(a, b) for b in range(1, len(nodes) - 1) for a in range(b) if rank[a] == rank[b]]
    if not pairs:
        raise NotApplicable("no two nodes before the head have outputs of the same rank.")
    for a, b in _shuffled(rng, pairs):
        yield _insert_after(nodes, b, Node.make("add", [b, a]))


def _remove_skip(space: SearchSpace, nodes: tuple[Node, ...], plan: Plan, rng: random.Random) -> Candidates:
    merges = [i for i, n in enumerate(nodes) if n.op in MERGES]
    if not merges:
        raise NotApplicable("the architecture has no add or concat node.")
    for k in _shuffled(rng, merges):
        yield _remove(nodes, k)


def _alter_cell(space: SearchSpace, nodes: tuple[Node, ...], plan: Plan, rng: random.Random) -> Candidates:
    cells = [k for k, node in enumerate(nodes) if node.op == "cell"]
    if not cells:
        raise NotApplicable("the architecture has no recurrent cell.")
    domains = space.domains("cell")
    for k in _shuffled(rng, cells):
        for name in _shuffled(rng, [name for name in domains if name != "base"]):  # a new base is a new tree
            others = [v for v in domains[name].values() if v != nodes[k].get(name)]  # ops are words, not ints
            for value in _shuffled(rng, others):
                yield _replace(nodes, k, nodes[k].with_attrs(**{name: value}))


_GRAPH_MUTATIONS = MappingProxyType({
    "insert-convolution": _insert_convolution,
    "remove-convolution": _remove_convolution,
    "alter-stride": _alter_conv(lambda rng, space: ["stride"], keep=lambda v: (v & (v - 1)) == 0),
    "alter-number-of-channels": _alter_conv(lambda rng, space: ["channels"]),
    "filter-size": _alter_conv(_kernel_dims, keep=lambda v: v % 2 == 1),
    "insert-one-to-one": _insert_one_to_one,
    "add-skip": _add_skip,
    "remove-skip": _remove_skip,
    "alter-cell": _alter_cell,
})


# ---- the learning rate --------------------------------------------------------------------

def _alter_learning_rate(space: SearchSpace, hparams: HParams, rng: random.Random) -> HParams:
    domain = space.hparams.get("lr")
    if domain is not None and domain.rule != "log":
        others = [v for v in domain.values() if v != hparams.lr]
        if not others:
            raise NotApplicable(f"the space fixes lr ({domain.describe()}).")
        return hparams.with_(lr=rng.choice(others))
    # A log range (or no rule: the language's own bound lr < 10), multiply or divide by [1, 2].
    low, high = (domain.low, domain.high) if domain is not None else (1e-8, 9.99)
    factor = rng.uniform(1, 2)
    moves = [min(max(float(f"{v:.4g}"), low), high) for v in (hparams.lr * factor, hparams.lr / factor)]
    moves = [v for v in moves if v != hparams.lr]  # at a bound only the inward move changes anything
    if not moves:
        raise NotApplicable(f"lr cannot move within the space's rule ({domain.describe() if domain else ''}).")
    return hparams.with_(lr=rng.choice(moves))


# ---- entry points -------------------------------------------------------------------------

def apply_mutation(name: str, space: SearchSpace, arch: Architecture, hparams: HParams,
                   rng: random.Random) -> Mutated:
    """Apply one named mutation. The parent must be valid in `space` (else ArchitectureError)."""
    if name not in MUTATIONS:
        raise ValueError(f"unknown mutation '{name}'; known are {list(MUTATIONS)}.")
    parent = space.validate(arch, hparams)
    everything = {i: i for i in range(len(arch.nodes))}
    if name in _GRAPH_MUTATIONS:
        (nodes, origin), child = _first_valid(space, hparams, _GRAPH_MUTATIONS[name](space, arch.nodes, parent, rng))
        node_map = {c: p for c, p in origin.items() if _same_op(child.nodes[c], parent.nodes[p])}
        return Mutated(name, Architecture(nodes), hparams, node_map)
    if name == "alter-learning-rate":
        hparams = _alter_learning_rate(space, hparams, rng)
        try:
            space.validate(arch, hparams)
        except ArchitectureError as exc:
            raise NotApplicable(str(exc)) from None
    return Mutated(name, arch, hparams, None if name == "reset-weights" else everything)


def allowed_mutations(names: Sequence[str] | None) -> tuple[str, ...]:
    """The mutations a strategy may draw: all of them by default; unknown names are refused at once."""
    unknown = sorted(set(names or ()) - set(MUTATIONS))
    if unknown:
        raise ValueError(f"unknown mutations {unknown}; choose from {list(MUTATIONS)}.")
    return tuple(names) if names else MUTATIONS


def mutate(space: SearchSpace, arch: Architecture, hparams: HParams, rng: random.Random,
           allowed: Sequence[str] = MUTATIONS) -> Mutated:
    """A mutation drawn uniformly from `allowed`; redrawn among the rest until one applies."""
    unknown = [m for m in allowed if m not in MUTATIONS]
    if unknown or not allowed:
        raise ValueError(f"allowed mutations {unknown or '[]'} are not among {list(MUTATIONS)}.")
    # alter-cell only where cells are: a space without them draws among the eleven, as before it existed
    remaining = [m for m in dict.fromkeys(allowed) if m != "alter-cell" or "cell" in space.ops]
    reasons: list[str] = []
    while remaining:
        name = rng.choice(remaining)
        try:
            return apply_mutation(name, space, arch, hparams, rng)
        except NotApplicable as exc:
            reasons.append(f"{name}: {exc}")
            remaining.remove(name)
    raise NotApplicable("no mutation applies: " + "; ".join(reasons))
