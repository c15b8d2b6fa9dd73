"""PathNet (Fernando et al. 2017): evolution channels gradient descent in a super network.

"PathNet: Evolution Channels Gradient Descent in Super Neural Networks" trains one large
network, the *fabric*: L layers of M modules each (small conv or dense units with ReLU).
A *path* picks at most N modules per layer; the outputs of a layer's picked modules are
summed and fed to the next layer's, and a per-task linear head reads the last layer. A
population of paths shares the fabric's weights. The paper's binary tournament: draw two
paths, train each for T mini-batches of gradient descent (only the modules on the path
and the task's head learn), compare their fitness, copy the winner over the loser and
mutate the copy. Evolution so decides *which* weights gradient descent may change.

Transfer between tasks is the point of the method: once task A is learnt, its best path's
modules are frozen (never changed again), every other module is re-initialised, a new
head is added, and task B evolves a fresh population whose paths may route through the
frozen modules, reusing their features without retraining them. The paper's measure is
the speed-up: the time to reach a level on task B from scratch, over the time with the
frozen task-A path (bench/pathnet_transfer.py measures it on MNIST-1D).

Choices made here, and why:

- Fitness is the path's mean training accuracy over its own T steps, as the paper's
  supervised runs scored a path by its classification error while training: it costs no
  extra forward pass, and the validation split stays unused by selection, for the stopping
  test (`target_accuracy`) and the report (`best_val_acc`, measured on each round's winner).
- Plain SGD (no momentum). An SGD step keeps no state, so training two paths in turn needs
  no per-path optimizer moments, and the fabric's weights alone are the whole training
  state: that is what makes resuming exact. (Adam's moments would have to follow each
  module from path to path, and into every checkpoint.)
- Every random draw of round r (the pair, the mini-batches, the mutation) comes from
  generators seeded by `derive_seed(seed, ...round r...)`, so a resumed run needs only
  the round index, the population and the weights to replay the rest bit for bit.
- A path stores its distinct modules per layer (the lineage store's sentence). The
  paper's genotype has N slots per layer, duplicates allowed; `Path.mutate` reads the
  N - k missing slots as copies of active modules, so its rule is the paper's and a path
  can regain modules after two slots collided (with the set alone paths could only shrink).

    >>> import random, torch
    >>> spec = FabricSpec.from_settings({"layers": 2, "modules": 4, "max_active": 2, "width": 4})
    >>> path = Path.random(spec, random.Random(0))
    >>> path.to_sentence(), Path.from_sentence(path.to_sentence()) == path
    ('L1:3|L2:0,2', True)
    >>> fabric = Fabric(spec, (1, 40), seed=0)
    >>> fabric.add_task("A", classes=5)
    >>> fabric(torch.zeros(3, 1, 40), path, "A").shape
    torch.Size([3, 5])
    >>> g = torch.Generator().manual_seed(0)
    >>> data = TaskData(torch.randn(64, 1, 40, generator=g), torch.arange(64) % 5,
    ...                 torch.randn(20, 1, 40, generator=g), torch.arange(20) % 5, num_classes=5)
    >>> result = tournament(fabric, data, task="A", population=4, steps_per_evaluation=2, generations=3)
    >>> result.rounds, result.steps, len(result.records)
    (3, 12, 3)
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from nas.ids import derive_seed

__all__ = ["Fabric", "FabricSpec", "Path", "PathNetResult", "RoundRecord", "TaskData", "evaluate",
           "frozen_tensors", "split_by_classes", "train_path", "transfer", "tournament"]

MODULE_KINDS = ("conv", "dense")
STATE_VERSION = 1
EVAL_BATCH = 4096
SHIFT = 2  # the paper's mutation moves an index by an integer in [-2, 2]


# --------------------------------------------------------------------------- the fabric's shape


@dataclass(frozen=True)
class FabricSpec:
    """L layers of M modules, each a conv (on (C, L) or (C, H, W) inputs) or dense unit of
    `width` outputs; a path uses 1..max_active (the paper's N) modules per layer."""

    layers: int = 3
    modules: int = 10
    module: str = "conv"
    width: int = 8
    max_active: int = 3
    kernel: int = 5  # conv modules only: odd, "same" padding

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "module" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"methods.pathnet.{f.name} must be a positive integer, got {value!r}; "
                                 f"e.g. {f.name}: {f.default}.")
        if self.module not in MODULE_KINDS:
            raise ValueError(f"methods.pathnet.module must be one of {list(MODULE_KINDS)}, got {self.module!r}.")
        if self.max_active > self.modules:
            raise ValueError(f"methods.pathnet.max_active ({self.max_active}) exceeds modules ({self.modules}): a "
                             "path cannot use more modules than a layer has; lower max_active or raise modules.")
        if self.kernel % 2 == 0:
            raise ValueError(f"methods.pathnet.kernel must be odd (same padding), got {self.kernel}; e.g. 3 or 5.")

    @classmethod
    def from_settings(cls, settings: dict[str, Any] | None) -> FabricSpec:
        """The spec of a space file's `methods: pathnet:` mapping; missing keys keep the defaults."""
        if settings is not None and not isinstance(settings, dict):
            raise ValueError(f"methods.pathnet must be a mapping of fabric settings, got {type(settings).__name__}; "
                             "write e.g. `pathnet: {layers: 3, modules: 10, max_active: 3}`.")
        known = [f.name for f in fields(cls)]
        unknown = sorted(str(key) for key in set(settings or {}) - set(known))
        if unknown:
            raise ValueError(f"methods.pathnet: unknown setting(s) {unknown}; the fabric takes {known}. "
                             "Remove or rename them.")
        return cls(**(settings or {}))

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# --------------------------------------------------------------------------- paths


@dataclass(frozen=True)
class Path:
    """The modules a path uses: per layer a sorted tuple of distinct module indices."""

    layers: tuple[tuple[int, ...], ...]

    @classmethod
    def random(cls, spec: FabricSpec, rng: random.Random) -> Path:
        """The paper's initial genotype: N slots per layer, each a uniform module index."""
        return cls(tuple(tuple(sorted({rng.randrange(spec.modules) for _ in range(spec.max_active)}))
                         for _ in range(spec.layers)))

    def check(self, spec: FabricSpec) -> Path:
        """This path, or a ValueError naming the layer that does not fit `spec`."""
        if len(self.layers) != spec.layers:
            raise ValueError(f"path {self.to_sentence()} has {len(self.layers)} layers; the fabric has {spec.layers}.")
        for number, active in enumerate(self.layers, start=1):
            if not 1 <= len(active) <= spec.max_active or list(active) != sorted(set(active)):
                raise ValueError(f"path layer L{number} is {list(active)}; it needs 1 to {spec.max_active} distinct "
                                 "module indices in increasing order.")
            if not all(0 <= m < spec.modules for m in active):
                raise ValueError(f"path layer L{number} is {list(active)}; module indices run from 0 to "
                                 f"{spec.modules - 1}.")
        return self

    def mutate(self, rng: random.Random, spec: FabricSpec, rate: float | None = None) -> Path:
        """The paper's mutation: each of a layer's N slots, with probability `rate` (default
        1/(L*N)), moves by a uniform integer in [-2, 2], wrapped modulo M; duplicates merge.
        The N - k slots a k-module layer does not show are copies of its active modules."""
        rate = 1.0 / (spec.layers * spec.max_active) if rate is None else rate
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"mutation rate must lie in [0, 1], got {rate}.")
        layers = []
        for active in self.layers:
            slots = list(active) + [rng.choice(active) for _ in range(spec.max_active - len(active))]
            moved = [(s + rng.randint(-SHIFT, SHIFT)) % spec.modules if rng.random() < rate else s for s in slots]
            layers.append(tuple(sorted(set(moved))))
        return Path(tuple(layers))

    def modules(self) -> list[tuple[int, int]]:
        """(layer, module) pairs of the path."""
        return [(layer, m) for layer, active in enumerate(self.layers) for m in active]

    def to_sentence(self) -> str:
        return "|".join(f"L{n}:{','.join(map(str, active))}" for n, active in enumerate(self.layers, start=1))

    @classmethod
    def from_sentence(cls, text: str) -> Path:
        try:
            parts = [part.split(":", 1) for part in text.split("|")]
            if [name for name, _ in parts] != [f"L{n}" for n in range(1, len(parts) + 1)]:
                raise ValueError("layers must be named L1, L2, ... in order")
            return cls(tuple(tuple(int(m) for m in body.split(",")) for _, body in parts))
        except ValueError as exc:
            raise ValueError(f"cannot read the path {text!r} ({exc}); write it like 'L1:0,3,7|L2:1|L3:2,5'.") from None

    def to_json(self) -> dict[str, Any]:
        return {"layers": [list(active) for active in self.layers]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Path:
        return cls(tuple(tuple(int(m) for m in active) for active in d["layers"]))


# --------------------------------------------------------------------------- the network


class _Unit(nn.Module):
    """One module of the fabric: a conv or dense layer followed by ReLU."""

    def __init__(self, spec: FabricSpec, in_shape: tuple[int, ...]) -> None:
        super().__init__()
        if spec.module == "dense":
            self.op: nn.Module = nn.Linear(math.prod(in_shape), spec.width)
        elif len(in_shape) == 2:
            self.op = nn.Conv1d(in_shape[0], spec.width, spec.kernel, padding=spec.kernel // 2)
        elif len(in_shape) == 3:
            self.op = nn.Conv2d(in_shape[0], spec.width, spec.kernel, padding=spec.kernel // 2)
        else:
            raise ValueError(f"conv modules need inputs of shape (C, L) or (C, H, W), got {in_shape}; set "
                             "methods.pathnet.module to dense for flat features.")
        self.flatten = spec.module == "dense"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.op(x.flatten(1) if self.flatten else x))


def _summed(spec: FabricSpec, units: list[_Unit], x: torch.Tensor) -> torch.Tensor:
    """The sum of the units' outputs on x, as the paper combines a layer's active modules.

    The units' weights are stacked into one layer so a layer costs one call, not one per
    module: these modules are so small that each call's fixed cost outweighs its arithmetic.
    """
    if len(units) == 1:
        return units[0](x)
    weight = torch.cat([u.op.weight for u in units])
    bias = torch.cat([u.op.bias for u in units])
    if spec.module == "dense":
        out = F.linear(x.flatten(1), weight, bias)
    else:
        conv = F.conv1d if x.dim() == 3 else F.conv2d
        out = conv(x, weight, bias, padding=spec.kernel // 2)
    return F.relu(out).unflatten(1, (len(units), spec.width)).sum(dim=1)


def _after_layer(spec: FabricSpec, shape: tuple[int, ...]) -> tuple[int, ...]:
    if spec.module == "dense":
        return (spec.width,)
    spatial = shape[1:]
    # Pooling by 2 after each conv layer (while every side allows it) keeps the head small
    # and widens what later layers see, as in the usual conv stacks.
    return (spec.width, *(s // 2 for s in spatial)) if min(spatial) >= 2 else (spec.width, *spatial)


@torch.no_grad()
def _initialise(layer: nn.Module, seed: int) -> None:
    """torch's default Linear/Conv initialisation, drawn from a generator of our own."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.empty(layer.weight.shape)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    bound = 1.0 / math.sqrt(math.prod(layer.weight.shape[1:]))
    bias = torch.empty(layer.bias.shape).uniform_(-bound, bound, generator=generator)
    layer.weight.copy_(weight)
    layer.bias.copy_(bias)


class Fabric(nn.Module):
    """L x M modules shared by every path, and one linear head per task.

    Weights are drawn from generators seeded by (`seed`, module, purpose), never from
    torch's global generator: trials run as threads of one process.
    """

    def __init__(self, spec: FabricSpec, input_shape: Sequence[int], *, seed: int = 0) -> None:
        super().__init__()
        self.spec, self.input_shape, self.seed = spec, tuple(int(s) for s in input_shape), seed
        shape, layers = self.input_shape, []
        with torch.device("meta"):  # built without memory or global draws, then initialised below
            for _ in range(spec.layers):
                layers.append(nn.ModuleList(_Unit(spec, shape) for _ in range(spec.modules)))
                shape = _after_layer(spec, shape)
        self.layers = nn.ModuleList(layers)
        self.layers.to_empty(device="cpu")
        self.features = math.prod(shape)
        self.heads = nn.ModuleDict()
        self._classes: dict[str, int] = {}
        self._frozen: set[tuple[int, int]] = set()
        self.reinitialise()

    @property
    def device(self) -> torch.device:
        return self.layers[0][0].op.weight.device

    @property
    def tasks(self) -> dict[str, int]:
        """Task name -> its number of classes."""
        return dict(self._classes)

    @property
    def frozen(self) -> frozenset[tuple[int, int]]:
        """(layer, module) pairs that no training changes any more."""
        return frozenset(self._frozen)

    def add_task(self, name: str, classes: int) -> None:
        """A fresh linear head for task `name`, reading the last layer's summed output."""
        if name in self._classes:
            raise ValueError(f"the fabric already has a head for task {name!r}; pick another task name.")
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
            raise ValueError(f"task {name!r} needs at least 2 classes, got {classes!r}.")
        head = nn.Linear(self.features, classes, device="meta").to_empty(device=self.device)
        _initialise(head, derive_seed(self.seed, f"pathnet:head:{name}"))
        self.heads[name] = head
        self._classes[name] = classes

    def freeze(self, path: Path) -> None:
        """Fix the path's modules for good: no gradient, no optimizer, bit-identical from now on."""
        path.check(self.spec)
        self._frozen.update(path.modules())
        for layer, m in path.modules():
            self.layers[layer][m].requires_grad_(False)

    def reinitialise(self) -> None:
        """Every module that is not frozen back to its initial draw (seeded by fabric seed and
        module), so a fabric after `transfer` differs from a fresh one of the same seed in its
        frozen modules alone: the from-scratch control is then paired, not merely similar."""
        for layer, units in enumerate(self.layers):
            for m, unit in enumerate(units):
                if (layer, m) not in self._frozen:
                    _initialise(unit.op, derive_seed(self.seed, f"pathnet:module:{layer}:{m}"))

    def trainable(self, path: Path, task: str) -> list[nn.Parameter]:
        """What training `path` on `task` may change: its unfrozen modules and the task's head."""
        params = [p for layer, m in path.modules() if (layer, m) not in self._frozen
                  for p in self.layers[layer][m].parameters()]
        return params + list(self.head(task).parameters())

    def head(self, task: str) -> nn.Module:
        """The linear head of `task`; a ValueError saying how to add it when there is none."""
        if task not in self._classes:
            raise ValueError(f"the fabric has no head for task {task!r} (it has {sorted(self._classes)}); call "
                             f"fabric.add_task({task!r}, classes) or transfer(...) first.")
        return self.heads[task]

    def forward(self, x: torch.Tensor, path: Path, task: str) -> torch.Tensor:
        if len(path.layers) != self.spec.layers:
            path.check(self.spec)
        for units, active in zip(self.layers, path.layers):
            x = _summed(self.spec, [units[m] for m in active], x)
            if self.spec.module == "conv" and min(x.shape[2:]) >= 2:
                x = F.max_pool1d(x, 2) if x.dim() == 3 else F.max_pool2d(x, 2)
        return self.head(task)(x.flatten(1))

    def snapshot(self) -> dict[str, Any]:
        """Weights (CPU tensors, safetensors-ready), frozen modules and tasks: all a resume needs."""
        return {"weights": {k: v.detach().to("cpu", copy=True) for k, v in self.state_dict().items()},
                "frozen": sorted([layer, m] for layer, m in self._frozen), "tasks": dict(self._classes)}

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Load a `snapshot()`: adds its missing heads, then its weights and frozen set."""
        for name, classes in snapshot["tasks"].items():
            if name not in self._classes:
                self.add_task(name, int(classes))
            elif self._classes[name] != int(classes):
                raise ValueError(f"task {name!r} has {self._classes[name]} classes here but {classes} in the "
                                 "state; resume into a fabric built for the same tasks.")
        self.load_state_dict(snapshot["weights"])
        self._frozen = {(int(layer), int(m)) for layer, m in snapshot["frozen"]}
        for layer, units in enumerate(self.layers):
            for m, unit in enumerate(units):
                unit.requires_grad_((layer, m) not in self._frozen)


def transfer(fabric: Fabric, best_path: Path, new_task: str, classes: int) -> Fabric:
    """The paper's step between tasks: freeze `best_path`'s modules, re-initialise every other
    module, add a head for `new_task`. Earlier frozen modules and heads stay as they are."""
    fabric.freeze(best_path)
    fabric.reinitialise()
    fabric.add_task(new_task, classes)
    return fabric


# --------------------------------------------------------------------------- data


class Splits(Protocol):
    """What the functions here read: nas.train.TrainData and TaskData both qualify."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


@dataclass
class TaskData:
    """Train and val (and, when the source has one, test) tensors of one task."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    x_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None


def split_by_classes(data: Splits, classes: Sequence[int]) -> TaskData:
    """The rows of `classes` only, relabelled 0..k-1 in the order given (e.g. digits 5-9 -> 0-4)."""
    classes = [int(c) for c in classes]
    if len(set(classes)) < 2:
        raise ValueError(f"a task needs at least two distinct classes, got {classes}.")
    lookup = torch.full((max(classes) + 1,), -1, dtype=torch.int64)
    lookup[classes] = torch.arange(len(classes))

    def pick(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = torch.isin(y, torch.tensor(classes, device=y.device))
        return x[keep], lookup.to(y.device)[y[keep]]

    splits = {"train": pick(data.x_train, data.y_train), "val": pick(data.x_val, data.y_val)}
    if getattr(data, "x_test", None) is not None:
        splits["test"] = pick(data.x_test, data.y_test)
    for name, (_, y) in splits.items():
        if len(y) == 0:
            raise ValueError(f"the {name} split holds no rows of classes {classes}; check the class numbers.")
    test = splits.get("test", (None, None))
    return TaskData(*splits["train"], *splits["val"], num_classes=len(classes), x_test=test[0], y_test=test[1])


# --------------------------------------------------------------------------- training one path


def train_path(fabric: Fabric, path: Path, task: str, x: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float,
               batch_size: int, generator: torch.Generator) -> float:
    """`steps` steps of plain SGD on mini-batches drawn with replacement from (x, y); only the
    path's unfrozen modules and the task's head change. Returns the mean training accuracy
    over those steps (the paper's fitness)."""
    params = fabric.trainable(path, task)
    fabric.train()
    device = fabric.device
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for _ in range(steps):
        index = torch.randint(len(y), (batch_size,), generator=generator)  # drawn on the host: same on any device
        xb, yb = x[index.to(x.device)].to(device), y[index.to(y.device)].to(device)
        logits = fabric(xb, path, task)
        # Plain SGD by hand: no optimizer object to build per path, and no .grad left behind
        # on modules of other paths.
        grads = torch.autograd.grad(F.cross_entropy(logits, yb), params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.add_(g, alpha=-lr)
        correct += (logits.detach().argmax(dim=1) == yb).sum()
    return correct.item() / max(steps * batch_size, 1)


@torch.no_grad()
def evaluate(fabric: Fabric, path: Path, task: str, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of `path` with the task's head on (x, y)."""
    fabric.eval()
    correct = 0
    for start in range(0, len(y), EVAL_BATCH):
        logits = fabric(x[start:start + EVAL_BATCH].to(fabric.device), path, task)
        correct += int((logits.argmax(dim=1).cpu() == y[start:start + EVAL_BATCH].cpu()).sum())
    return correct / max(len(y), 1)


# --------------------------------------------------------------------------- the tournament


@dataclass(frozen=True)
class RoundRecord:
    """One binary tournament: two population slots trained, the loser's slot overwritten.

    `paths[winner]` is the parent of `child`, the mutated copy now in `slots[1 - winner]`.
    """

    round: int
    slots: tuple[int, int]
    paths: tuple[Path, Path]
    fitness: tuple[float, float]  # mean training accuracy over each path's T steps
    winner: int  # 0 or 1: which of the two won (ties go to the first)
    child: Path
    winner_val_acc: float  # the winner's validation accuracy, after its training
    best_val_acc: float  # the best winner_val_acc so far in this tournament
    steps: int  # SGD steps of this tournament so far, this round's included

    @property
    def parent(self) -> Path:
        return self.paths[self.winner]

    @property
    def loser_slot(self) -> int:
        return self.slots[1 - self.winner]

    def to_json(self) -> dict[str, Any]:
        return {"round": self.round, "slots": list(self.slots), "paths": [p.to_sentence() for p in self.paths],
                "fitness": list(self.fitness), "winner": self.winner, "child": self.child.to_sentence(),
                "winner_val_acc": self.winner_val_acc, "best_val_acc": self.best_val_acc, "steps": self.steps}


@dataclass(frozen=True)
class PathNetResult:
    task: str
    best_path: Path  # the round winner with the highest validation accuracy
    best_val_acc: float
    rounds: int  # rounds done in total, a resumed run's earlier ones included
    steps: int  # SGD steps in total
    steps_to_target: int | None  # steps when best_val_acc first reached target_accuracy; None if it did not
    rounds_to_target: int | None
    population: tuple[Path, ...]
    records: tuple[RoundRecord, ...]  # the rounds this call ran
    _state: dict[str, Any] = field(repr=False, compare=False)

    @property
    def reached(self) -> bool:
        return self.steps_to_target is not None

    def state(self) -> dict[str, Any]:
        """Everything to resume the tournament: pass it as `state=` with a fabric built from the
        same spec, input shape and seed. All of it is JSON-able but state["fabric"]["weights"],
        a flat dict of CPU tensors (safetensors-ready)."""
        fabric = self._state["fabric"]
        return {**self._state, "fabric": {**fabric, "weights": {k: v.clone() for k, v in fabric["weights"].items()}}}


OnRound = Callable[[RoundRecord], None]
OnCheckpoint = Callable[[dict[str, Any]], None]


def tournament(fabric: Fabric, data: Splits, *, task: str, population: int = 16, steps_per_evaluation: int = 20,
               generations: int = 100, lr: float = 0.05, batch_size: int = 32, seed: int = 0,
               target_accuracy: float | None = None, frozen_path: Path | None = None,
               on_round: OnRound | None = None, on_checkpoint: OnCheckpoint | None = None,
               checkpoint_every: int = 10, state: dict[str, Any] | None = None) -> PathNetResult:
    """Evolve paths for `task` by binary tournaments on the shared `fabric` (trained in place).

    Runs until `generations` rounds are done in total or the best winner's validation
    accuracy reaches `target_accuracy`. The paper used 64 paths and T = 50 mini-batches of
    16; the defaults are smaller for a CPU. `frozen_path`, when given, is frozen first
    (`transfer` has usually done so already). `on_round` hears each round as it ends;
    `on_checkpoint` gets the resumable state every `checkpoint_every` rounds and at the end.
    `state`, from `result.state()` or a checkpoint, continues a killed run: the rounds that
    follow are exactly those of an uninterrupted run.
    """
    settings = {"task": task, "population": population, "steps_per_evaluation": steps_per_evaluation, "lr": lr,
                "batch_size": batch_size, "seed": seed, "spec": fabric.spec.to_json()}
    if population < 2:
        raise ValueError(f"a binary tournament needs a population of at least 2 paths, got {population}.")
    if steps_per_evaluation < 1 or batch_size < 1:
        raise ValueError("steps_per_evaluation and batch_size must be at least 1, got "
                         f"{steps_per_evaluation} and {batch_size}.")
    if frozen_path is not None:
        fabric.freeze(frozen_path)
    if state is None:
        rng = random.Random(derive_seed(seed, f"pathnet:{task}:population"))
        paths = [Path.random(fabric.spec, rng) for _ in range(population)]
        done, steps, best_path, best_acc, to_target = 0, 0, paths[0], -1.0, None
    else:
        _check_resumable(state, settings)
        fabric.restore(state["fabric"])
        paths = [Path.from_json(p) for p in state["population"]]
        done, steps = int(state["round"]), int(state["steps"])
        best_path, best_acc = Path.from_json(state["best_path"]), float(state["best_val_acc"])
        to_target = state["to_target"]
    fabric.head(task)  # a missing head fails now, not after the first round

    def snapshot() -> dict[str, Any]:
        return {"version": STATE_VERSION, "settings": settings, "round": done, "steps": steps,
                "population": [p.to_json() for p in paths], "best_path": best_path.to_json(),
                "best_val_acc": best_acc, "to_target": to_target, "fabric": fabric.snapshot()}

    records = []
    while done < generations and not (target_accuracy is not None and best_acc >= target_accuracy):
        rng = random.Random(derive_seed(seed, f"pathnet:{task}:round:{done}"))
        batches = torch.Generator().manual_seed(derive_seed(seed, f"pathnet:{task}:batches:{done}"))
        slots = tuple(rng.sample(range(population), 2))
        pair = (paths[slots[0]], paths[slots[1]])
        fitness = tuple(train_path(fabric, p, task, data.x_train, data.y_train, steps=steps_per_evaluation, lr=lr,
                                   batch_size=batch_size, generator=batches) for p in pair)
        steps += 2 * steps_per_evaluation
        winner = 0 if fitness[0] >= fitness[1] else 1
        child = pair[winner].mutate(rng, fabric.spec)
        paths[slots[1 - winner]] = child
        val_acc = evaluate(fabric, pair[winner], task, data.x_val, data.y_val)
        if val_acc > best_acc:
            best_path, best_acc = pair[winner], val_acc
        done += 1
        if target_accuracy is not None and best_acc >= target_accuracy and to_target is None:
            to_target = [done, steps]
        record = RoundRecord(done - 1, slots, pair, fitness, winner, child, val_acc, best_acc, steps)
        records.append(record)
        if on_round is not None:
            on_round(record)
        if on_checkpoint is not None and done % max(checkpoint_every, 1) == 0:
            on_checkpoint(snapshot())
    final = snapshot()
    if on_checkpoint is not None and done % max(checkpoint_every, 1) != 0:
        on_checkpoint(final)
    return PathNetResult(task=task, best_path=best_path, best_val_acc=best_acc, rounds=done, steps=steps,
                         steps_to_target=to_target[1] if to_target else None,
                         rounds_to_target=to_target[0] if to_target else None, population=tuple(paths),
                         records=tuple(records), _state=final)


def _check_resumable(state: dict[str, Any], settings: dict[str, Any]) -> None:
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"tournament state version {state.get('version')!r} is not {STATE_VERSION}; start afresh.")
    for key, value in settings.items():
        if state["settings"].get(key) != value:
            raise ValueError(f"cannot resume: {key} was {state['settings'].get(key)!r} in the saved run and is "
                             f"{value!r} now; resume with the same {key}.")


def frozen_tensors(fabric: Fabric) -> dict[str, torch.Tensor]:
    """Copies of the frozen modules' tensors, by state-dict key (to check they never change)."""
    keys = {f"layers.{layer}.{m}." for layer, m in fabric.frozen}
    return {k: v.detach().clone() for k, v in fabric.state_dict().items() if any(k.startswith(p) for p in keys)}
