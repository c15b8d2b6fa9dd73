"""The ops of the language, and shape inference with parameter and FLOP counts.

This is pure arithmetic: it never allocates a tensor, so a network far over the
parameter limit is rejected before any memory is spent. The builder (nas/build.py) makes
its modules from the same plan, and a test checks that torch counts the same parameters.

Shapes exclude the batch: (C, H, W) for images, (C, L) for signals, (F,) for features.
The `signal` op views features (F,) as a one-channel signal (1, F), so convolutions can
run over the feature axis while the data stays flat (standardised per feature, as tabular
data needs). A `cell` reads a signal (C, L) as L steps of C features and outputs its last
hidden state (units,).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from nas.space.architecture import Architecture, ArchitectureError, Node
from nas.space.cell import BASES, CELL_ACTIVATIONS, CELL_ATTRS, CELL_COMBINES, NODE_ATTRS, NONE, cell_params, cell_spec

Shape = tuple[int, ...]


@dataclass(frozen=True)
class OpSpec:
    attrs: tuple[str, ...]
    min_inputs: int = 1
    max_inputs: int = 1


OPS: dict[str, OpSpec] = {
    "input": OpSpec((), 0, 0),
    "conv": OpSpec(("channels", "kernel_h", "kernel_w", "stride", "batch_norm", "activation")),
    # A convolution whose kernel a shared generator makes from small embeddings (Ha et al. 2016).
    "hyperconv": OpSpec(("channels", "kernel_h", "kernel_w", "stride", "batch_norm", "activation")),
    "pool": OpSpec(("kind", "size")),
    "identity": OpSpec(()),
    "signal": OpSpec(()),
    "add": OpSpec((), 2, 8),
    "concat": OpSpec((), 2, 8),
    "global_pool": OpSpec(()),
    "flatten": OpSpec(()),
    "dense": OpSpec(("units", "activation", "dropout")),
    "cell": OpSpec(CELL_ATTRS),  # a recurrent cell over a sequence (C, L): nas/space/cell.py
    "head": OpSpec(()),
}
CONV_OPS = ("conv", "hyperconv")
# Static hypernetwork sizes: kernels come in blocks of HYPER_BLOCK x HYPER_BLOCK channels,
# each made from its own embedding of HYPER_Z numbers by a generator shared by every
# hyperconv of one kernel size in the network (Ha et al. 2016, section 3.1).
HYPER_BLOCK = 16
HYPER_Z = 16
POSITIVE_INTS = ("channels", "kernel_h", "kernel_w", "stride", "size", "units")
ACTIVATIONS = ("relu", "gelu", "tanh", "sigmoid", "elu", "none")
POOL_KINDS = ("max", "avg")


@dataclass(frozen=True)
class Projection:
    """How a merge input is brought to the merge's shape: resample space, then mix channels."""

    resample_to: Shape | None  # spatial size to adaptive-average-pool to, or None
    in_channels: int
    out_channels: int | None  # a 1x1 conv (or linear for flat tensors), or None

    @property
    def params(self) -> int:
        return 0 if self.out_channels is None else self.in_channels * self.out_channels + self.out_channels


@dataclass(frozen=True)
class NodePlan:
    index: int
    node: Node
    in_shapes: tuple[Shape, ...]
    out_shape: Shape
    params: int
    flops: int
    projections: tuple[Projection | None, ...] = ()


@dataclass(frozen=True)
class Plan:
    input_shape: Shape
    num_classes: int
    nodes: tuple[NodePlan, ...]

    @property
    def params(self) -> int:
        return sum(n.params for n in self.nodes)

    @property
    def flops(self) -> int:
        return sum(n.flops for n in self.nodes)


def _fail(i: int, node: Node, message: str) -> ArchitectureError:
    return ArchitectureError(f"node {i} ({node.op}): {message}")


def _check_attrs(i: int, node: Node) -> None:
    spec = OPS.get(node.op)
    if spec is None:
        raise _fail(i, node, f"unknown op '{node.op}'; the language knows {sorted(OPS)}.")
    given, wanted = set(node.attr_dict), set(spec.attrs)
    if given != wanted:
        missing, extra = sorted(wanted - given), sorted(given - wanted)
        raise _fail(i, node, f"attributes must be exactly {list(spec.attrs)}"
                    + (f"; missing {missing}" if missing else "") + (f"; unexpected {extra}" if extra else "") + ".")
    if not spec.min_inputs <= len(node.inputs) <= spec.max_inputs:
        raise _fail(i, node, f"takes {spec.min_inputs}..{spec.max_inputs} inputs, got {len(node.inputs)}.")
    for name, value in node.attr_dict.items():
        if problem := attr_problem(name, value):
            raise _fail(i, node, f"attribute '{name}'={value!r} {problem}")


def attr_problem(name: str, value: Any) -> str | None:
    """What is wrong with one attribute value (the rest of a sentence, e.g. "must be odd ..."), or None."""
    if name in POSITIVE_INTS and not (type(value) is int and value >= 1):
        return "must be a positive integer."
    if name in ("kernel_h", "kernel_w") and value % 2 == 0:
        return "must be odd, so 'same' padding keeps the input centred."
    if name == "activation" and value not in ACTIVATIONS:
        return f"is not one of {list(ACTIVATIONS)}."
    if name == "kind" and value not in POOL_KINDS:
        return f"is not one of the pool kinds {list(POOL_KINDS)}."
    if name == "dropout" and not (type(value) in (int, float) and 0 <= value < 1):
        return "must be in [0, 1)."
    if name == "batch_norm" and not isinstance(value, bool):
        return "must be true or false."
    if name == "base" and (type(value) is not int or value not in BASES):
        return f"must be one of {list(BASES)} (the leaves of a cell's tree)."
    if name in (*NODE_ATTRS, "inject") and value != NONE and (
            not isinstance(value, str) or value.partition("_")[0] not in CELL_COMBINES
            or value.partition("_")[2] not in CELL_ACTIVATIONS):
        return (f"must be 'none' or combine_activation with a combine of {list(CELL_COMBINES)} and an "
                f"activation of {list(CELL_ACTIVATIONS)}, e.g. 'add_tanh'.")
    if name in ("inject_at", "memory_from") and not (type(value) is int and 0 <= value < len(NODE_ATTRS)):
        return f"must be a node index 0..{len(NODE_ATTRS) - 1}."
    return None


def _merge(i: int, node: Node, shapes: tuple[Shape, ...]) -> tuple[Shape, tuple[Projection | None, ...], int]:
    """Shape of an add/concat node and the projections its inputs need."""
    first = shapes[0]
    if any(len(s) != len(first) for s in shapes):
        raise _fail(i, node, f"joins tensors of different rank {list(shapes)}; merge only spatial "
                    "with spatial or flat with flat tensors.")
    projections: list[Projection | None] = [None]
    for shape in shapes[1:]:
        resample = first[1:] if shape[1:] != first[1:] else None
        if node.op == "add" and shape[0] != first[0]:
            projections.append(Projection(resample, shape[0], first[0]))
        elif resample is not None:
            projections.append(Projection(resample, shape[0], None))
        else:
            projections.append(None)
    if node.op == "add":
        out = first
    else:
        out = (sum(s[0] for s in shapes),) + first[1:]
    flops = sum(2 * p.params * math.prod(out[1:]) for p in projections if p is not None)
    return out, tuple(projections), flops


def hyper_blocks(channels: int) -> int:
    return -(-channels // HYPER_BLOCK)  # a partial block is generated whole, then cut


def hyper_embeddings(in_channels: int, out_channels: int) -> int:
    """A hyperconv's own parameters: one embedding per block of its kernel."""
    return hyper_blocks(in_channels) * hyper_blocks(out_channels) * HYPER_Z


def hyper_generator_params(window: int) -> int:
    """The shared generator: embedding -> HYPER_BLOCK vectors -> a block's kernels (two linear maps)."""
    return (HYPER_Z * HYPER_BLOCK * HYPER_Z + HYPER_BLOCK * HYPER_Z) + (HYPER_Z * HYPER_BLOCK * window
                                                                      + HYPER_BLOCK * window)


def infer(arch: Architecture, input_shape: Shape, num_classes: int) -> Plan:
    """Every node's output shape, parameters and FLOPs; ArchitectureError names the first impossible node."""
    if not input_shape or any(d < 1 for d in input_shape):
        raise ArchitectureError(f"input shape {input_shape} is not a valid example shape.")
    plans: list[NodePlan] = []
    shapes: list[Shape] = []
    generators: set[tuple[int, int]] = set()  # kernel sizes whose hyperconv generator is counted
    for i, node in enumerate(arch.nodes):
        _check_attrs(i, node)
        ins = tuple(shapes[j] for j in node.inputs)
        x = ins[0] if ins else tuple(input_shape)
        params = flops = 0
        projections: tuple[Projection | None, ...] = ()
        if node.op == "cell" and len(x) != 2:
            raise _fail(i, node, f"reads a sequence (C, L) but gets {x}; put a signal node before it to read flat "
                        "features as a sequence, or use a space without cells for images.")
        if node.op in (*CONV_OPS, "pool", "global_pool") and len(x) < 2:
            raise _fail(i, node, f"needs a spatial input (C,H,W) or (C,L) but gets the flat shape {x}; "
                        "put a signal node before it to convolve over the features, or use a dense-only space "
                        "(spaces/mlp.yaml).")
        if node.op in ("dense", "head") and len(x) != 1:
            raise _fail(i, node, f"needs a flat input but gets {x}; put a global_pool or flatten node before it.")
        if node.op == "signal" and len(x) != 1:
            raise _fail(i, node, f"views flat features (F,) as one signal but gets {x}; use it on flat data only.")
        if node.op in ("input", "identity"):
            out = x
        elif node.op in CONV_OPS:
            kh, kw, stride, c_out = node.get("kernel_h"), node.get("kernel_w"), node.get("stride"), node.get("channels")
            if len(x) == 2 and kh != 1:
                raise _fail(i, node, f"kernel_h={kh} but the data is 1-D {x}; 1-D convolutions need kernel_h 1.")
            spatial = tuple((d - 1) // stride + 1 for d in x[1:])
            out = (c_out,) + spatial
            window = kw if len(x) == 2 else kh * kw
            bias_or_bn = 2 * c_out if node.get("batch_norm") else c_out
            if node.op == "conv":
                params = x[0] * c_out * window + bias_or_bn
            else:
                params = hyper_embeddings(x[0], c_out) + bias_or_bn
                if (kh, kw) not in generators:  # the first hyperconv of its kernel size holds the generator
                    generators.add((kh, kw))
                    params += hyper_generator_params(window)
            flops = 2 * x[0] * c_out * window * math.prod(spatial)
        elif node.op == "pool":
            size = node.get("size")
            if any(d < size for d in x[1:]):
                raise _fail(i, node, f"input {x} is smaller than the pool size {size}; remove the pool "
                            "or a stride before it.")
            out = (x[0],) + tuple(d // size for d in x[1:])
        elif node.op in ("add", "concat"):
            out, projections, flops = _merge(i, node, ins)
            params = sum(p.params for p in projections if p is not None)
        elif node.op == "signal":
            out = (1, x[0])
        elif node.op == "cell":
            try:
                spec = cell_spec(node.attr_dict)
            except ValueError as exc:
                raise _fail(i, node, str(exc)) from None
            out = (node.get("units"),)
            params = cell_params(spec, x[0], node.get("units"))
            flops = 2 * params * x[1]  # every weight once per step
        elif node.op == "global_pool":
            out = (x[0],)
        elif node.op == "flatten":
            out = (math.prod(x),)
        else:  # dense or head
            units = node.get("units") if node.op == "dense" else num_classes
            out = (units,)
            params = x[0] * units + units
            flops = 2 * x[0] * units
        if node.op == "head" and i != arch.output:
            raise _fail(i, node, "the head must be the last node.")
        shapes.append(out)
        plans.append(NodePlan(i, node, ins, out, params, flops, projections))
    if arch.nodes[-1].op != "head":
        raise _fail(arch.output, arch.nodes[-1], "the last node must be the head (the classifier layer).")
    unused = [i for i in range(arch.output) if not arch.consumers(i)]
    if unused:
        raise ArchitectureError(f"nodes {unused} feed nothing; every node but the head must be an input of a "
                                "later node.")
    return Plan(tuple(input_shape), num_classes, tuple(plans))
