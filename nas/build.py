"""The model builder: an Architecture becomes a torch module that follows its shape plan.

`build` asks `nas.space.shapes.infer` for the plan first, so a network over the parameter
limit is rejected before a single weight exists. Modules are created on the meta device
(no memory, no draws from torch's global generator) and then materialised and
initialised from a generator seeded by the caller: trials run as threads of one process,
and a global RNG would make each trial's weights depend on its neighbours.

    >>> import random
    >>> from nas.space import SearchSpace
    >>> arch, hparams = SearchSpace.load("spaces/cnn.yaml").bind((1, 8, 8), 10).sample(random.Random(0))
    >>> net = build(arch, (1, 8, 8), 10, seed=0, init=hparams.init)
    >>> net(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    >>> sum(p.numel() for p in net.parameters()) == net.plan.params
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from nas.cells import CellRNN
from nas.ids import derive_seed
from nas.space.architecture import INITS, Architecture, ArchitectureError
from nas.space.cell import cell_spec
from nas.space.shapes import HYPER_BLOCK, HYPER_Z, NodePlan, Plan, Projection, Shape, hyper_blocks, infer

__all__ = ["Ensemble", "Network", "build", "inherited_weights", "remap_state"]


_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "elu": nn.ELU,
                "none": nn.Identity}


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ArchitectureError(f"activation '{name}' is unknown; use one of {sorted(_ACTIVATIONS)}.")
    return _ACTIVATIONS[name]()


def _gain_name(activation: str) -> str:
    """The nonlinearity torch.nn.init should scale for: relu-like, tanh, sigmoid or linear."""
    return {"relu": "relu", "gelu": "relu", "elu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}.get(activation, "linear")


class DropoutGenerators:
    """Dropout masks drawn from generators owned by one network, one per device it runs on.

    A CUDA tensor needs a CUDA generator, so each device gets its own, created lazily from
    the same seed: a network gives the same masks on every run of the same device.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._by_device: dict[str, torch.Generator] = {}

    def on(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._by_device:
            self._by_device[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._by_device[key]

    # Generators do not deep-copy or pickle; their states do.
    def __getstate__(self) -> dict:
        return {"seed": self.seed, "states": {k: g.get_state() for k, g in self._by_device.items()}}

    def __setstate__(self, state: dict) -> None:
        self.seed = state["seed"]
        self._by_device = {}
        for key, rng_state in state["states"].items():
            self._by_device[key] = torch.Generator(device=key)
            self._by_device[key].set_state(rng_state)


class Dropout(nn.Module):
    """Inverted dropout whose masks come from the network's own generator, not torch's global one."""

    def __init__(self, p: float, generators: DropoutGenerators) -> None:
        super().__init__()
        self.p = float(p)
        self.generators = generators

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty_like(x).bernoulli_(keep, generator=self.generators.on(x.device))
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ConvBlock(nn.Module):
    def __init__(self, in_shape: Shape, plan: NodePlan) -> None:
        super().__init__()
        node = plan.node
        channels, stride, kw = int(node.get("channels")), int(node.get("stride")), int(node.get("kernel_w"))
        batch_norm = bool(node.get("batch_norm"))
        if len(in_shape) == 3:
            kh = int(node.get("kernel_h"))
            self.conv: nn.Module = nn.Conv2d(in_shape[0], channels, (kh, kw), stride, (kh // 2, kw // 2),
                                             bias=not batch_norm, device="meta")
            self.norm: nn.Module = nn.BatchNorm2d(channels, device="meta") if batch_norm else nn.Identity()
        else:
            self.conv = nn.Conv1d(in_shape[0], channels, kw, stride, kw // 2, bias=not batch_norm, device="meta")
            self.norm = nn.BatchNorm1d(channels, device="meta") if batch_norm else nn.Identity()
        self.activation_name = str(node.get("activation"))
        self.act = _activation(self.activation_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class KernelGenerator(nn.Module):
    """Ha et al.'s static hypernetwork: an embedding z becomes HYPER_BLOCK vectors a_i = W_i z + b_i,
    and each a_i the kernels of one input channel of a block, W_out a_i + b_out."""

    def __init__(self, window: int) -> None:
        super().__init__()
        self.window = window
        self.inner = nn.Linear(HYPER_Z, HYPER_BLOCK * HYPER_Z, device="meta")
        self.outer = nn.Linear(HYPER_Z, HYPER_BLOCK * window, device="meta")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Embeddings (n, Z) -> kernel blocks (n, out HYPER_BLOCK, in HYPER_BLOCK, window)."""
        a = self.inner(z).view(-1, HYPER_BLOCK, HYPER_Z)
        return self.outer(a).view(-1, HYPER_BLOCK, HYPER_BLOCK, self.window).transpose(1, 2)


class HyperConvBlock(nn.Module):
    """A convolution whose kernel the network's shared generator makes from this layer's
    embeddings, one per block of channels (a partial block is generated whole and cut)."""

    def __init__(self, in_shape: Shape, plan: NodePlan, generators: dict[tuple[int, int], KernelGenerator]) -> None:
        super().__init__()
        node = plan.node
        self.in_channels, self.channels = in_shape[0], int(node.get("channels"))
        self.kernel = (int(node.get("kernel_h")), int(node.get("kernel_w"))) if len(in_shape) == 3 \
            else (int(node.get("kernel_w")),)
        self.stride = int(node.get("stride"))
        key = (int(node.get("kernel_h")), int(node.get("kernel_w")))
        if key not in generators:  # the first hyperconv of this kernel size holds the generator (the plan agrees)
            self.generator = generators[key] = KernelGenerator(math.prod(self.kernel))
        self._shared = [generators[key]]  # a plain list: the others use it without owning its parameters
        self.embeddings = nn.Parameter(torch.empty(hyper_blocks(self.channels), hyper_blocks(self.in_channels),
                                                   HYPER_Z, device="meta"))
        batch_norm = bool(node.get("batch_norm"))
        self.bias = None if batch_norm else nn.Parameter(torch.empty(self.channels, device="meta"))
        norm = nn.BatchNorm2d if len(in_shape) == 3 else nn.BatchNorm1d
        self.norm: nn.Module = norm(self.channels, device="meta") if batch_norm else nn.Identity()
        self.activation_name = str(node.get("activation"))
        self.act = _activation(self.activation_name)
        # Generated kernels start near unit variance (see _initialise); this keeps them at He et al.'s scale.
        self.gain = math.sqrt(2.0 / (self.in_channels * math.prod(self.kernel)))

    def weight(self) -> torch.Tensor:
        out_blocks, in_blocks, _ = self.embeddings.shape
        blocks = self._shared[0](self.embeddings.reshape(-1, HYPER_Z))
        blocks = blocks.view(out_blocks, in_blocks, HYPER_BLOCK, HYPER_BLOCK, -1).permute(0, 2, 1, 3, 4)
        kernel = blocks.reshape(out_blocks * HYPER_BLOCK, in_blocks * HYPER_BLOCK, -1)
        return (kernel[:self.channels, :self.in_channels] * self.gain).reshape(
            self.channels, self.in_channels, *self.kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = nn.functional.conv2d if len(self.kernel) == 2 else nn.functional.conv1d
        padding = tuple(k // 2 for k in self.kernel)
        return self.act(self.norm(conv(x, self.weight(), self.bias, self.stride, padding)))


class Pool(nn.Module):
    def __init__(self, in_shape: Shape, kind: str, size: int) -> None:
        super().__init__()
        if len(in_shape) == 3:
            self.pool: nn.Module = nn.MaxPool2d(size, size) if kind == "max" else nn.AvgPool2d(size, size)
        else:
            self.pool = nn.MaxPool1d(size, size) if kind == "max" else nn.AvgPool1d(size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x)


class GlobalPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=tuple(range(2, x.dim())))


class Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class Project(nn.Module):
    """Bring one merge input to the merge's shape: resample space, then mix channels."""

    def __init__(self, projection: Projection, rank: int) -> None:
        super().__init__()
        self.resample: nn.Module = nn.Identity()
        if projection.resample_to is not None:
            size = tuple(projection.resample_to)
            self.resample = nn.AdaptiveAvgPool2d(size) if len(size) == 2 else nn.AdaptiveAvgPool1d(size)
        self.mix: nn.Module = nn.Identity()
        if projection.out_channels is not None:
            c_in, c_out = projection.in_channels, projection.out_channels
            if rank == 3:
                self.mix = nn.Conv2d(c_in, c_out, 1, device="meta")
            elif rank == 2:
                self.mix = nn.Conv1d(c_in, c_out, 1, device="meta")
            else:
                self.mix = nn.Linear(c_in, c_out, device="meta")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(self.resample(x))


class Merge(nn.Module):
    """add (sum) or concat (along channels) of projected inputs; `proj` is keyed by input position."""

    def __init__(self, plan: NodePlan) -> None:
        super().__init__()
        self.op = plan.node.op
        rank = len(plan.in_shapes[0])
        self.proj = nn.ModuleDict({str(k): Project(p, rank) for k, p in enumerate(plan.projections) if p is not None})

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        xs = [self.proj[str(k)](x) if str(k) in self.proj else x for k, x in enumerate(inputs)]
        if self.op == "add":
            total = xs[0]
            for x in xs[1:]:
                total = total + x
            return total
        return torch.cat(xs, dim=1)


class Dense(nn.Module):
    def __init__(self, in_features: int, plan: NodePlan, generators: DropoutGenerators) -> None:
        super().__init__()
        node = plan.node
        self.linear = nn.Linear(in_features, int(node.get("units")), device="meta")
        self.activation_name = str(node.get("activation"))
        self.act = _activation(self.activation_name)
        self.drop = Dropout(float(node.get("dropout")), generators)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.act(self.linear(x)))


class Recurrent(nn.Module):
    """A cell unrolled over a signal (C, L), read as L steps of C features: its last hidden state."""

    def __init__(self, in_shape: Shape, plan: NodePlan) -> None:
        super().__init__()
        self.rnn = CellRNN(cell_spec(plan.node.attr_dict), in_shape[0], plan.out_shape[0], device="meta")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x.transpose(1, 2))


def _node_module(plan: NodePlan, num_classes: int, generators: DropoutGenerators,
                 kernels: dict[tuple[int, int], KernelGenerator]) -> nn.Module:
    node, x = plan.node, plan.in_shapes[0]
    if node.op == "conv":
        return ConvBlock(x, plan)
    if node.op == "hyperconv":
        return HyperConvBlock(x, plan, kernels)
    if node.op == "pool":
        return Pool(x, str(node.get("kind")), int(node.get("size")))
    if node.op in ("add", "concat"):
        return Merge(plan)
    if node.op == "global_pool":
        return GlobalPool()
    if node.op == "flatten":
        return Flatten()
    if node.op == "signal":
        return nn.Unflatten(1, (1, x[0]))
    if node.op == "dense":
        return Dense(x[0], plan, generators)
    if node.op == "head":
        return nn.Linear(x[0], num_classes, device="meta")
    if node.op == "identity":
        return nn.Identity()
    if node.op == "cell":
        return Recurrent(x, plan)
    raise ArchitectureError(f"node {plan.index}: the builder has no module for op '{node.op}'.")


class Network(nn.Module):
    """The module of one architecture. `nodes[str(i)]` computes node i; node 0 is the input."""

    def __init__(self, arch: Architecture, plan: Plan, dropout_seed: int) -> None:
        super().__init__()
        self.arch = arch
        self.plan = plan
        self.dropout_generators = DropoutGenerators(dropout_seed)
        kernels: dict[tuple[int, int], KernelGenerator] = {}  # hyperconv generators, one per kernel size
        self.nodes = nn.ModuleDict({str(p.index): _node_module(p, plan.num_classes, self.dropout_generators, kernels)
                                    for p in plan.nodes[1:]})
        self._inputs = tuple(node.inputs for node in arch.nodes)
        # After node i runs, the outputs in _release[i] have no later reader and are dropped.
        last_reader = {j: i for i, node in enumerate(arch.nodes) for j in node.inputs}
        self._release = tuple(tuple(j for j in sorted(set(node.inputs)) if last_reader[j] == i)
                              for i, node in enumerate(arch.nodes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: dict[int, torch.Tensor] = {0: x}
        for i in range(1, len(self._inputs)):
            module = self.nodes[str(i)]
            ins = self._inputs[i]
            values[i] = module([values[j] for j in ins]) if isinstance(module, Merge) else module(values[ins[0]])
            for j in self._release[i]:
                del values[j]
        return values[len(self._inputs) - 1]

    def weight_layers(self) -> Iterator[tuple[nn.Module, str]]:
        """Every conv or linear layer with the nonlinearity that follows it, in node order."""
        for module in self.nodes.values():
            if isinstance(module, ConvBlock):
                yield module.conv, _gain_name(module.activation_name)
            elif isinstance(module, Dense):
                yield module.linear, _gain_name(module.activation_name)
            elif isinstance(module, Merge):
                for project in module.proj.values():
                    if not isinstance(project.mix, nn.Identity):
                        yield project.mix, "linear"
            elif isinstance(module, nn.Linear):
                yield module, "linear"
            elif isinstance(module, Recurrent):  # gain 1 keeps the recurrent weights near unit scale
                yield module.rnn.cell.w, "linear"
                yield module.rnn.cell.u, "linear"


class Ensemble(nn.Module):
    """Networks of one architecture trained with different seeds, as one model.

    Its output is the log of the members' mean class probabilities: softmax of it is that
    mean, and its argmax the ensemble's prediction. Averaging seeds removes the part of a
    network's test errors that is the luck of its initialisation and batch order.
    """

    def __init__(self, members: Sequence[Network]) -> None:
        super().__init__()
        if len({m.arch.arch_id for m in members}) != 1:
            raise ValueError("an Ensemble holds networks of one architecture, trained with different seeds")
        self.members = nn.ModuleList(members)

    @property
    def arch(self) -> Architecture:
        return self.members[0].arch

    @property
    def plan(self) -> Plan:
        return self.members[0].plan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = torch.stack([torch.softmax(m(x).float(), dim=1) for m in self.members]).mean(dim=0)
        return probabilities.log()


def _init_layer(layer: nn.Module, scheme: str, nonlinearity: str, generator: torch.Generator) -> None:
    weight, bias = layer.weight, layer.bias
    fan_in = weight.shape[1] * math.prod(weight.shape[2:])
    if scheme == "kaiming":
        nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity=nonlinearity, generator=generator)
    elif scheme == "xavier":
        nn.init.xavier_uniform_(weight, gain=nn.init.calculate_gain(nonlinearity), generator=generator)
    else:  # "default": what Linear/Conv reset_parameters do, with our generator
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    if bias is not None:
        if scheme == "default":
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            nn.init.uniform_(bias, -bound, bound, generator=generator)
        else:
            nn.init.zeros_(bias)


@torch.no_grad()
def _initialise(network: Network, scheme: str, generator: torch.Generator) -> None:
    for layer, nonlinearity in network.weight_layers():
        _init_layer(layer, scheme, nonlinearity, generator)
    for module in network.modules():
        if isinstance(module, HyperConvBlock):  # whatever the scheme: unit-variance kernels, scaled by its gain
            nn.init.normal_(module.embeddings, generator=generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, KernelGenerator):
            for layer in (module.inner, module.outer):
                nn.init.normal_(layer.weight, std=HYPER_Z ** -0.5, generator=generator)
                nn.init.zeros_(layer.bias)
    for module in network.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            module.reset_running_stats()


def build(arch: Architecture, input_shape: Sequence[int], num_classes: int, *, seed: int = 0,
          init: str = "kaiming", max_params: int | None = None) -> Network:
    """The network of `arch` on CPU, initialised from `seed`; ArchitectureError if impossible or too big."""
    if init not in INITS:
        raise ArchitectureError(f"init '{init}' is not one of {list(INITS)}; set hparams.init to one of them.")
    plan = infer(arch, tuple(input_shape), num_classes)
    if max_params is not None and plan.params > max_params:
        raise ArchitectureError(
            f"the network has {plan.params:,} parameters, over the parameter limit max_params={max_params:,}; "
            "use fewer channels or units, pool more before flatten, or raise max_params.")
    network = Network(arch, plan, derive_seed(seed, "dropout"))
    counted = sum(p.numel() for p in network.parameters())
    if counted != plan.params:  # the builder and shape inference must never disagree
        raise RuntimeError(f"builder bug: the module has {counted:,} parameters but the plan counts "
                           f"{plan.params:,} for architecture {arch.arch_id}; report it with architecture.json.")
    network.to_empty(device="cpu")
    _initialise(network, init, torch.Generator().manual_seed(seed))
    return network


def inherited_weights(parent: dict[str, torch.Tensor],
                      node_map: dict[str, int] | None) -> dict[str, torch.Tensor]:
    """A parent's weights for its child: renamed through the mutation's node map (child -> parent,
    string keys as candidates carry them in JSON) when there is one, else as they are."""
    return parent if node_map is None else remap_state(parent, {int(c): p for c, p in node_map.items()})


def remap_state(state: dict[str, torch.Tensor], node_map: dict[int, int]) -> dict[str, torch.Tensor]:
    """A parent's state dict renamed for a child network: `node_map` maps child node -> parent node.

    Mutations insert and remove nodes, which shifts the node numbers in the `nodes.<i>.`
    keys; nodes missing from the map get nothing and keep their fresh initialisation.
    """
    by_parent: dict[int, list[int]] = {}
    for child, parent in node_map.items():
        by_parent.setdefault(int(parent), []).append(int(child))
    renamed = {}
    for key, tensor in state.items():
        prefix, index, rest = (key.split(".", 2) + ["", ""])[:3]
        if prefix == "nodes" and index.isdigit():
            for child in by_parent.get(int(index), []):
                renamed[f"nodes.{child}.{rest}"] = tensor
    return renamed
