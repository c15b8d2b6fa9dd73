"""SMASH (Brock et al. 2018): one hypernetwork writes the weights of any network of a space.

The hypernetwork trains on a new network of the space for every batch, then scores many
networks at once, each by its validation accuracy with generated weights and no
training of its own. `nas.strategies.smash` trains the best of them as ordinary trials.

How weights are written: the "slice of a maximal tensor" scheme, not the paper's memory
bank. Every parameter has a *role*: the k-th node of its op (layers after a reduction
count apart) and its path in that node's module, so the first conv of every network
shares one memory, whatever pools and skips come before it. Per role the hypernetwork
keeps a memory tensor as large as the largest that role takes in a sample of the space.
A network reads the leading slice (channels), the central one (kernel taps), or positions
spread evenly (a flattened signal, so a pooled position reads where its inputs were), and
the architecture's embedding z (a small MLP over the space's vector encoding) adds a
low-rank correction of its own: W = M[slice] + U[rows] diag(z) V[:, cols]. Why: the memory
bank suits DenseNet-like blocks that read and write one shared memory; slices need
nothing but the builder's names and shapes, so one hypernetwork serves every space file
(convolutions, dense layers, projected skips, recurrent cells, hyperconv).

Scale: memories start at He's scale for their largest fan-in, and a slice with fewer
inputs is scaled up to its own, so every network starts where the builder would start it;
batch norm's scales are 1 + generated. Dropout is off and batch norm uses each batch's
statistics, in training and in scoring, since no network has running statistics of its own.

What it costs and gives, on MNIST-1D with spaces/conv1d.yaml (`bench/smash.py`): 12,000
steps take about 3 minutes on 2 CPU cores, and 500 networks are scored in about 10 s. Fewer
steps rank worse: Kendall's tau against trained accuracy rose from 0.2 at 1500 steps to
0.5 at 4000 and 0.62 at 6000 (0.55 at 12,000: 50 networks measure it to about 0.07). At
equal wall time with 40-epoch trials, SMASH beat random search in 2 of 5 seeds with 6000
steps and in 3 of 5 with 12,000, hence the default.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from safetensors.torch import save as save_tensors
from torch import nn
from torch.func import functional_call

from nas.build import Network
from nas.ids import derive_seed
from nas.progress import progress
from nas.reports import one_shot_plot
from nas.space import Architecture, HParams, SearchSpace
from nas.space.shapes import infer
from nas.train import TrainData, load_data, pick_device

log = logging.getLogger(__name__)

EMBEDDING = 8  # the architecture embedding z, and so the rank of each correction
ROLE_SAMPLE = 500  # networks sampled to size the memory of every role
STEPS = 12_000  # hypernetwork training steps, one batch of a new network each: about 3 minutes on 2 cores
BATCH = 64
CLIP = 1.0  # gradient norm: a network whose generated weights blow up must not wreck the others
MAX_SKIPPED = 10  # networks with a non-finite loss skipped before training gives up, or half the steps when more
LEARNING_RATE = 3e-3  # Adam's, cosine-decayed over the steps
REDUCTIONS = ("global_pool", "flatten", "cell")


@dataclass(frozen=True)
class Role:
    """Which memory a parameter reads: the k-th node of its op (counting from 1), its path in
    that node's module, and its rank. The first conv of every network shares one memory
    whatever pools and skips come before it; node numbers would not line up across networks."""

    op: str
    k: int
    path: str
    view: tuple[int, ...]  # the parameter's shape as the memory holds it
    flattened: bool = False  # a weight over flattened features, viewed as (out, C, positions...)

    def key(self, k: int | None = None) -> str:
        return f"{self.op}{self.k if k is None else k}/{self.path}".replace(".", "/")  # no dots in ParameterDict keys


def _roles(arch: Architecture, network: Network) -> dict[str, Role]:
    seen: dict[str, int] = {}
    ordinal, reduction = {}, ""
    for i, node in enumerate(arch.nodes):
        # Layers after a reduction read its features: flatten's and global pooling's differ in kind.
        op = f"{node.op}@{reduction}" if reduction else node.op
        if node.op in REDUCTIONS:
            reduction = node.op
        seen[op] = seen.get(op, 0) + 1
        ordinal[i] = (op, seen[op])
    roles = {}
    for name, p in network.named_parameters():
        _, index, rest = name.split(".", 2)
        op, k = ordinal[int(index)]
        view, source = tuple(p.shape), arch.nodes[int(index)].inputs[0]
        flattened = arch.nodes[source].op == "flatten" and p.ndim == 2
        if flattened:  # (out, C*L) read as (out, C, L): channels meet channels, positions positions
            view = (view[0], *network.plan.nodes[source].in_shapes[0])
        roles[name] = Role(op, k, f"{rest}#{len(view)}", view, flattened)
    return roles


def _gain(key: str) -> float:
    return 1.0 if key.startswith("head") else 2.0  # He's gain, but none for the logits


def _indices(size: int, memory: int, how: str, device: torch.device) -> torch.Tensor:
    """Which memory entries a dimension of `size` reads: the leading ones (channels), the
    central ones (kernel taps), or entries spread evenly over the memory (positions of a
    flattened signal, so that a pooled position reads where its inputs were)."""
    if how == "spread":
        return torch.arange(size, device=device) * memory // size
    start = (memory - size) // 2 if how == "centre" and size <= memory else 0
    return (torch.arange(size, device=device) + start) % memory  # past the memory's size, wrap around


def _blank_network(space: SearchSpace, arch: Architecture, seed: int) -> Network:
    """The module of `arch` with no memory of its own: the hypernetwork supplies every tensor."""
    shape, classes = space.bound()
    return Network(arch, infer(arch, shape, classes), derive_seed(seed, "dropout"))


def _with_batch_statistics(network: Network) -> Network:
    """Batch norm normalises by each batch (no network has running statistics); dropout is off,
    in training as in scoring, so a score is the network's, not a draw of masks."""
    network.eval()
    for module in network.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train()
    return network


def _is_norm_scale(network: Network, name: str) -> bool:
    owner, _, attr = name.rpartition(".")
    return attr == "weight" and isinstance(network.get_submodule(owner), nn.modules.batchnorm._BatchNorm)


class OneShot(nn.Module):
    """The hypernetwork of one bound space: `weights(arch)` is a state dict for `arch`'s network."""

    def __init__(self, space: SearchSpace, hparams: HParams, seed: int = 0, sample: int = ROLE_SAMPLE) -> None:
        super().__init__()
        self.space, self.hparams, self.seed = space, hparams, seed
        self._ordinals: dict[tuple[str, str], set[int]] = {}  # which k each (op, path) has a memory for
        rng = random.Random(derive_seed(seed, "smash-roles"))
        largest: dict[str, list[int]] = {}
        for _ in range(sample):
            arch = space.sample_arch(rng)
            network = _blank_network(space, arch, seed)
            for role in _roles(arch, network).values():
                key = role.key()
                largest[key] = [max(a, b) for a, b in zip(largest.get(key, role.view), role.view)]
                self._ordinals.setdefault((role.op, role.path), set()).add(role.k)
        generator = torch.Generator().manual_seed(derive_seed(seed, "smash-init"))
        self.encoder = nn.Sequential(nn.Linear(space.encoding_size, 64), nn.ReLU(), nn.Linear(64, EMBEDDING),
                                     nn.Tanh())
        for layer in (self.encoder[0], self.encoder[2]):
            nn.init.normal_(layer.weight, std=layer.in_features ** -0.5, generator=generator)
            nn.init.zeros_(layer.bias)
        self.memory, self.rows, self.cols = nn.ParameterDict(), nn.ParameterDict(), nn.ParameterDict()
        for key, size in sorted(largest.items()):
            weight = len(size) > 1
            memory = torch.randn(size, generator=generator) * (_gain(key) / math.prod(size[1:])) ** 0.5 if weight \
                else torch.zeros(size)
            self.memory[key] = nn.Parameter(memory)
            self.rows[key] = nn.Parameter(0.1 * torch.randn(size[0], EMBEDDING, generator=generator))
            if weight:
                self.cols[key] = nn.Parameter(torch.randn(EMBEDDING, *size[1:], generator=generator) / EMBEDDING ** 0.5)

    def _memory_key(self, name: str, role: Role) -> str:
        """The memory a parameter reads: its own role's, else that of the nearest node of the same op."""
        known = self._ordinals.get((role.op, role.path))
        if not known:
            raise ValueError(f"the hypernetwork has no memory for parameter '{name}' ({role.op} {role.path}): none "
                             f"of its {ROLE_SAMPLE} sampled networks had that kind of layer; build the hypernetwork "
                             "from the same space file as the networks it scores.")
        return role.key(min(known, key=lambda j: (abs(j - role.k), j)))

    def embed(self, arch: Architecture) -> torch.Tensor:
        encoding = torch.tensor(self.space.encode(arch, self.hparams), dtype=torch.float32,
                                device=self.rows_device)
        return self.encoder(encoding)

    @property
    def rows_device(self) -> torch.device:
        return next(self.parameters()).device

    def weights(self, arch: Architecture, network: Network | None = None) -> dict[str, torch.Tensor]:
        """Every parameter of `arch`'s network, in the shapes the builder gives them."""
        network = network or _blank_network(self.space, arch, self.seed)
        z = self.embed(arch)
        device = z.device
        out: dict[str, torch.Tensor] = {}
        for name, role in _roles(arch, network).items():
            key, view, shape = self._memory_key(name, role), role.view, network.get_parameter(name).shape
            memory = self.memory[key]
            positions = "spread" if role.flattened else "centre"
            picks = [_indices(n, m, positions if d >= 2 else "lead", device)
                     for d, (n, m) in enumerate(zip(view, memory.shape))]
            rows = self.rows[key][picks[0]] * z
            if len(view) == 1:
                value = memory[picks[0]] + rows.sum(dim=1)
                out[name] = 1 + value if _is_norm_scale(network, name) else value
                continue
            sliced, cols = memory[picks[0]], self.cols[key]
            for d in range(1, len(view)):
                sliced, cols = sliced.index_select(d, picks[d]), cols.index_select(d, picks[d])
            # The correction's factors live at unit scale, so one learning rate suits them and the memory.
            fan_in = math.prod(memory.shape[1:])
            correction = (rows @ cols.flatten(1)).reshape(view) * (_gain(key) / fan_in) ** 0.5
            # A slice with fewer inputs than the memory is scaled up to the variance He's init gives it.
            weight = (sliced + correction) * (fan_in / math.prod(view[1:])) ** 0.5
            out[name] = weight.reshape(shape)
        return out

    def forward(self, arch: Architecture, x: torch.Tensor, network: Network | None = None) -> torch.Tensor:
        """Logits of `arch` on `x` with generated weights (batch statistics in every batch norm)."""
        network = network or _with_batch_statistics(_blank_network(self.space, arch, self.seed))
        buffers = {name: (torch.ones if name.endswith("running_var") else torch.zeros)(b.shape, dtype=b.dtype,
                                                                                       device=x.device)
                   for name, b in network.named_buffers()}
        return functional_call(network, {**self.weights(arch, network), **buffers}, (x,))


@dataclass
class OneShotResult:
    model: OneShot
    curve: list[dict[str, float]] = field(default_factory=list)  # step, loss, accuracy of the batch, seconds
    skipped: list[str] = field(default_factory=list)  # ids of the sampled networks whose loss was not finite


def train_one_shot(space: SearchSpace, hparams: HParams, data: TrainData, *, steps: int = STEPS, seed: int = 0,
                   on_step: Callable[[int, float], None] | None = None) -> OneShotResult:
    """Train the hypernetwork: every step samples a new network of the space and one batch."""
    device = data.device
    model = OneShot(space, hparams, seed).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    rng = random.Random(derive_seed(seed, "smash-networks"))
    order = torch.Generator().manual_seed(derive_seed(seed, "smash-batches"))
    result, started, window = OneShotResult(model), time.perf_counter(), []
    every = max(1, steps // 50)
    for step in range(1, steps + 1):
        arch = space.sample_arch(rng)
        network = _with_batch_statistics(_blank_network(space, arch, seed))
        index = torch.randint(len(data.y_train), (BATCH,), generator=order).to(data.x_train.device)
        x, y = data.x_train[index].to(device), data.y_train[index].to(device)
        logits = model(arch, x, network)
        loss = F.cross_entropy(logits, y)
        if torch.isfinite(loss):
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            optimizer.step()
            window.append((loss.item(), (logits.argmax(1) == y).float().mean().item()))
        else:  # some networks overflow whatever their weights (a cell whose recurrence grows): skip them
            result.skipped.append(arch.arch_id)
            if len(result.skipped) > max(MAX_SKIPPED, step // 2):
                raise FloatingPointError(
                    f"the SMASH hypernetwork's loss was not finite on {len(result.skipped)} of the first {step} "
                    f"networks (the last: {arch.arch_id}); try another --seed or fewer --smash-steps.")
        schedule.step()
        if window and (step % every == 0 or step == steps):
            mean_loss, mean_acc = (sum(v) / len(window) for v in zip(*window))
            result.curve.append({"step": step, "loss": mean_loss, "accuracy": mean_acc,
                                 "seconds": time.perf_counter() - started})
            window = []
            if on_step is not None:
                on_step(step, mean_loss)
    return result


@torch.no_grad()
def score(model: OneShot, archs: Sequence[Architecture], data: TrainData) -> list[float]:
    """Each network's validation accuracy with generated weights."""
    scores = []
    x, y = data.x_val.to(model.rows_device), data.y_val.to(model.rows_device)
    for arch in archs:
        network = _with_batch_statistics(_blank_network(model.space, arch, model.seed))
        scores.append((model(arch, x, network).argmax(1) == y).float().mean().item())
    return scores


class OneShotScorer:
    """What `nas.strategies.smash` calls to score its candidates: trains the hypernetwork on
    the search's prepared data at the first call, then scores. `earlier` returns the scores
    an interrupted run of the same search logged (arch id -> score), so a resumed search does
    not train the hypernetwork again."""

    def __init__(self, space: SearchSpace, data_dir: str, *, steps: int = STEPS, seed: int = 0,
                 device: str | None = None, earlier: Callable[[], dict[str, float] | None] | None = None) -> None:
        self.space, self.data_dir, self.steps, self.seed = space, data_dir, steps, seed
        self.device, self.earlier = device, earlier
        self.result: OneShotResult | None = None
        self.scores: list[float] = []

    def __call__(self, archs: list[Architecture], hparams: HParams) -> list[float]:
        known = self.earlier() if self.earlier else None
        if known and all(a.arch_id in known for a in archs):
            log.info("SMASH: %d scores found on the search run; the hypernetwork is not trained again", len(archs))
            return [known[a.arch_id] for a in archs]
        data = load_data(self.data_dir, pick_device(self.device))
        log.info("SMASH: training the hypernetwork for %d steps, one new network each", self.steps)
        with progress(self.steps, "SMASH hypernetwork", "step", leave=False) as bar:
            def on_step(step: int, loss: float) -> None:
                bar.set_postfix(loss=f"{loss:.3f}")
                bar.update(step - bar.n)

            self.result = train_one_shot(self.space, hparams, data, steps=self.steps, seed=self.seed,
                                         on_step=on_step)
        if self.result.skipped:
            log.info("SMASH: %d of %d steps skipped: their network's loss was not finite",
                     len(self.result.skipped), self.steps)
        log.info("SMASH: scoring %d candidates with generated weights", len(archs))
        self.scores = score(self.result.model, archs, data)
        return self.scores

    def files(self) -> dict[str, bytes]:
        """The hypernetwork's weights, its training curve (a table and a picture with the scores'
        histogram), once trained in this process."""
        if self.result is None:
            return {}
        curve = io.StringIO()
        writer = csv.DictWriter(curve, fieldnames=["step", "loss", "accuracy", "seconds"])
        writer.writeheader()
        writer.writerows(self.result.curve)
        state = {k: v.detach().cpu().contiguous() for k, v in self.result.model.state_dict().items()}
        return {"smash/hypernetwork.safetensors": save_tensors(state), "smash/curve.csv": curve.getvalue().encode(),
                "smash/hypernetwork.png": one_shot_plot(self.result.curve, self.scores)}


__all__ = ["OneShot", "OneShotResult", "OneShotScorer", "score", "train_one_shot"]
