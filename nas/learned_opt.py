"""Learning to learn by gradient descent by gradient descent (Andrychowicz et al. 2016).

An LSTM reads each coordinate's gradient and writes that coordinate's update. One small
network (two LSTM layers of 20 units and a linear output) is shared by every coordinate,
so it serves a network of any size; each coordinate keeps its own LSTM state. It is
trained (`meta_train`) by unrolling the optimisation of many small problems and
back-propagating their summed loss into the LSTM's weights, then used like any torch
optimiser (`LearnedOptimizer`), e.g. as an hparam of ordinary training.

Deliberate choices, following the paper:

- Gradients are preprocessed (Appendix A) into two inputs that keep both their sign and
  their order of magnitude, so the LSTM sees gradients of 1e-8 and of 10 on one scale.
- Meta-training drops second derivatives: the optimisee's gradient enters the LSTM as a
  constant, so back-propagation never differentiates the optimisee's gradient itself.
- Truncated back-propagation through time: a `horizon` of optimisee steps is cut into
  pieces of `unroll` steps; the optimisee's weights and the LSTM state carry over from
  one piece to the next, detached.

`Task` is one problem of the paper's MNIST experiment (a small MLP on a data set, here
a seeded subset of MNIST-1D or scikit-learn's digits, trained full-batch) and
`QuadraticTask` its first experiment (f(theta) = ||W theta - y||^2). `meta_train` takes
anything with their two methods (`Problem`).

    >>> tasks = quadratic_family(range(4))
    >>> net, curve = meta_train(tasks, iterations=3, unroll=5, horizon=10)
    >>> curves = optimise(tasks[0], lambda ps: LearnedOptimizer(ps, net), steps=10, seed=1)
    >>> len(curves)  # the loss at the start and after each of the 10 steps
    11

What meta-training needs, measured on MNIST-1D (`bench/learned_opt.py`; one thread of a
2-core CPU; a few hundred meta-iterations):

- Early stopping (`validate`), as the paper does. With a problem or two per iteration
  the net wanders, and how well the *last* net does varies from seed to seed (after 400 iterations
  it beat tuned Adam on 5 of 5 held-out tasks with one seed, on 3 of 5 with another);
  the best of the nets validated every 25 iterations won 5 of 5 with each of 3 seeds.
- Short truncations. Within such a budget `unroll=5` trains better than the paper's 20:
  four times as many meta-updates. Without early stopping (150 iterations of 2 problems)
  unroll 10 beat Adam on 8 of 10 held-out tasks and unroll 20 on 3 of 10, while 50 and
  100 did not learn at all: the meta-gradient through that many steps is too rough.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import statistics
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nas.data import generate_mnist1d
from nas.ids import derive_seed

__all__ = ["LearnedOptimizer", "OptimizerNet", "Problem", "QuadraticTask", "Task", "from_bytes", "meta_train",
           "optimise", "preprocess_gradient", "quadratic_family", "task_family", "to_bytes"]

log = logging.getLogger(__name__)

FORMAT = "nas.learned_opt/1"
HEADER_KEY = "nas.learned_opt"  # where the constructor settings live in the safetensors metadata
STATE_KEYS = ("h0", "c0", "h1", "c1")  # per-parameter LSTM state in LearnedOptimizer.state[p]
SOURCES = ("mnist1d", "digits")
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"sigmoid": torch.sigmoid, "relu": torch.relu,
                                                       "tanh": torch.tanh}
_HOW_TO_GET_ONE = ("train one with `nas meta-train` (or nas.learned_opt.meta_train) and store it with "
                   "nas.learned_opt.to_bytes")

LSTMState = tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]  # ((h, c) of layer 0, (h, c) of layer 1)


def preprocess_gradient(grad: Tensor, p: float = 10.0) -> Tensor:
    """The paper's Appendix A: each gradient g becomes two inputs, (N,) -> (N, 2).

    (log|g| / p, sign(g)) when |g| >= e^-p, else (-1, e^p g): magnitudes on a log scale,
    signs kept, and tiny gradients (whose log would be huge and negative) scaled linearly.
    """
    magnitude = grad.abs()
    large = magnitude >= math.exp(-p)
    # The clamp only keeps log(0) out of the branch `where` discards (a NaN there would still poison gradients).
    log_part = torch.where(large, magnitude.clamp_min(math.exp(-p)).log() / p, torch.full_like(grad, -1.0))
    sign_part = torch.where(large, grad.sign(), grad * math.exp(p))
    return torch.stack([log_part, sign_part], dim=-1)


class OptimizerNet(nn.Module):
    """The coordinatewise LSTM optimiser: gradient in, update out, one coordinate per row.

    `forward(grad, state)` takes the gradient as a flat tensor (N,) and the LSTM state of
    those N coordinates (`initial_state(N)` to start), and returns the update (N,), to be
    *added* to the parameters, and the new state. The update is the linear output times
    `output_scale`, so an untrained net takes small steps.
    """

    def __init__(self, hidden: int = 20, preprocess: float = 10.0, output_scale: float = 0.1) -> None:
        super().__init__()
        if hidden < 1 or preprocess <= 0 or output_scale <= 0:
            raise ValueError(f"OptimizerNet needs hidden >= 1, preprocess > 0 and output_scale > 0; got hidden="
                             f"{hidden}, preprocess={preprocess}, output_scale={output_scale}.")
        self.hidden, self.preprocess, self.output_scale = int(hidden), float(preprocess), float(output_scale)
        self.cells = nn.ModuleList([nn.LSTMCell(2, self.hidden), nn.LSTMCell(self.hidden, self.hidden)])
        self.out = nn.Linear(self.hidden, 1)

    def config(self) -> dict[str, Any]:
        """The constructor's arguments: `OptimizerNet(**net.config())` builds a net of the same shape."""
        return {"hidden": self.hidden, "preprocess": self.preprocess, "output_scale": self.output_scale}

    def reset_parameters(self, generator: torch.Generator) -> OptimizerNet:
        """Torch's default initialisation (uniform within 1/sqrt(hidden)), drawn from `generator`,
        so meta-training is seeded without touching torch's global RNG."""
        bound = 1.0 / math.sqrt(self.hidden)
        with torch.no_grad():
            for param in self.parameters():
                fresh = torch.rand(param.shape, generator=generator, dtype=param.dtype) * 2 * bound - bound
                param.copy_(fresh)
        return self

    def initial_state(self, n: int, device: torch.device | str | None = None,
                      dtype: torch.dtype | None = None) -> LSTMState:
        """Zero state for n coordinates: (h, c) of both layers, each (n, hidden)."""
        like = self.out.weight
        device, dtype = device or like.device, dtype or like.dtype

        def zeros() -> Tensor:
            return torch.zeros(n, self.hidden, device=device, dtype=dtype)

        return (zeros(), zeros()), (zeros(), zeros())

    def forward(self, grad: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        x = preprocess_gradient(grad.reshape(-1).to(self.out.weight.dtype), self.preprocess)
        new_state = []
        for cell, (h, c) in zip(self.cells, state):
            h, c = cell(x, (h, c))
            new_state.append((h, c))
            x = h
        update = self.out(x).squeeze(-1) * self.output_scale
        return update, (new_state[0], new_state[1])


class LearnedOptimizer(torch.optim.Optimizer):
    """A torch optimiser whose update rule is an `OptimizerNet`: theta <- theta + net(grad).

    It holds a frozen copy of `net` (later training of `net` does not change it), copied
    once to each device its parameters live on; all parameters of a group on one device go
    through the net as one batch of coordinates. Each parameter's LSTM state lives in
    `self.state[p]` (tensors "h0", "c0", "h1", "c1", each (numel, hidden), updated in
    place, so a captured CUDA graph keeps working), so `state_dict()` and
    `load_state_dict()` carry a run across a checkpoint exactly.

    The step sizes are learned, so the group's "lr" does not scale the update by default.
    The key exists all the same, because training loops set it every step for their
    schedule. With `follow_lr=True` the update is multiplied by the group's "lr": with the
    default lr of 1.0 a schedule then becomes a multiplier on the learned steps.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], net: OptimizerNet, lr: float = 1.0,
                 *, follow_lr: bool = False) -> None:
        if not isinstance(net, OptimizerNet):
            raise TypeError(f"LearnedOptimizer needs an OptimizerNet, got {type(net).__name__}; "
                            f"{_HOW_TO_GET_ONE}, and load it with nas.learned_opt.from_bytes.")
        super().__init__(params, {"lr": lr, "follow_lr": follow_lr})
        self.net = copy.deepcopy(net).eval().requires_grad_(False)
        self._nets: dict[torch.device, OptimizerNet] = {}

    def _net_on(self, device: torch.device) -> OptimizerNet:
        if device not in self._nets:
            self._nets[device] = copy.deepcopy(self.net).to(device)
        return self._nets[device]

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            by_device: dict[torch.device, list[Tensor]] = {}
            for p in group["params"]:
                if p.grad is not None:
                    if p.grad.is_sparse:
                        raise RuntimeError("LearnedOptimizer does not support sparse gradients; use dense layers.")
                    by_device.setdefault(p.device, []).append(p)
            for device, params in by_device.items():
                self._step(params, self._net_on(device), group)
        return loss

    def _step(self, params: list[Tensor], net: OptimizerNet, group: dict[str, Any]) -> None:
        dtype = net.out.weight.dtype
        states = []
        for p in params:
            state = self.state[p]
            if not state:
                (h0, c0), (h1, c1) = net.initial_state(p.numel(), p.device, dtype)
                state.update(h0=h0, c0=c0, h1=h1, c1=c1)
            states.append(state)
        grad = torch.cat([p.grad.reshape(-1) for p in params])
        h0, c0, h1, c1 = (torch.cat([s[key] for s in states]).to(dtype) for key in STATE_KEYS)
        update, ((h0, c0), (h1, c1)) = net(grad, ((h0, c0), (h1, c1)))
        if group["follow_lr"]:
            update = update * group["lr"]
        sizes = [p.numel() for p in params]
        for key, new in zip(STATE_KEYS, (h0, c0, h1, c1)):
            for state, piece in zip(states, new.split(sizes)):
                state[key].copy_(piece)
        for p, piece in zip(params, update.split(sizes)):
            p.add_(piece.view_as(p).to(p.dtype))


# ---- storing ---------------------------------------------------------------------------


def to_bytes(net: OptimizerNet) -> bytes:
    """A safetensors file holding the weights, with the constructor settings in its metadata,
    so a stored optimiser stands alone. No pickle: loading one never runs code."""
    from safetensors.torch import save

    header = {"format": FORMAT, **net.config()}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    return save(tensors, metadata={HEADER_KEY: json.dumps(header, sort_keys=True)})


def from_bytes(data: bytes) -> OptimizerNet:
    """The net `to_bytes` wrote (on the CPU); ValueError for anything else."""
    from safetensors.torch import load

    def refuse(why: str) -> ValueError:
        return ValueError(f"these {len(data)} bytes are not a learned optimiser (format {FORMAT}): {why}. "
                          f"To get one, {_HOW_TO_GET_ONE}.")

    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(json.loads(data[8:8 + length])["__metadata__"][HEADER_KEY])
        if header.get("format") != FORMAT:
            raise ValueError(f"format {header.get('format')!r}")
        net = OptimizerNet(hidden=int(header["hidden"]), preprocess=float(header["preprocess"]),
                           output_scale=float(header["output_scale"]))
    except (struct.error, ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise refuse(f"{type(exc).__name__} {exc}") from None
    try:
        weights = load(bytes(data))
        net.load_state_dict(weights, strict=True)
    except Exception as exc:  # safetensors raises its own error types; a shape mismatch a RuntimeError
        detail = " ".join(str(exc).split())  # one line: state-dict errors span several
        raise refuse(f"its weights cannot be read ({type(exc).__name__}: {detail[:300]})") from None
    return net


# ---- problems to optimise ---------------------------------------------------------------


class Problem(Protocol):
    """What meta-training needs of an optimisee: fresh weights per seed, and a loss that
    autograd can differentiate through weights computed from other tensors."""

    def init(self, seed: int) -> list[Tensor]: ...

    def loss(self, params: Sequence[Tensor]) -> Tensor: ...


@dataclass(eq=False)  # tensors have no single truth value: identity is equality
class Task:
    """A small MLP trained full-batch on `x`, `y` (a seeded subset of a data set).

    `loss(params)` is the mean cross-entropy of the MLP whose weights are `params`
    ([w1, b1, w2, b2, ...], as `init` returns them), written functionally so that params
    computed by an unrolled optimisation carry their graph through the loss.
    """

    x: Tensor  # (rows, features), float32, standardised
    y: Tensor  # (rows,), int64 class indices
    num_classes: int
    hidden: tuple[int, ...] = (20,)
    activation: str = "sigmoid"  # the paper's MNIST experiment
    seed: int = 0  # drew the rows; mixed into every weight draw, so tasks differ in both

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is unknown; use one of {sorted(ACTIVATIONS)}.")

    def shapes(self) -> list[tuple[int, ...]]:
        widths = [self.x.shape[1], *self.hidden, self.num_classes]
        return [shape for fan_in, fan_out in zip(widths, widths[1:]) for shape in ((fan_out, fan_in), (fan_out,))]

    def init(self, seed: int) -> list[Tensor]:
        """Fresh weights, torch.nn.Linear's default distribution, drawn from (task seed, seed)."""
        generator = torch.Generator().manual_seed(derive_seed(f"{self.seed}:{seed}", "learned_opt.init"))
        params = []
        for shape in self.shapes():
            bound = 1.0 / math.sqrt(shape[1] if len(shape) == 2 else params[-1].shape[1])  # the layer's fan-in
            params.append((torch.rand(shape, generator=generator) * 2 - 1) * bound)
        return [p.to(self.x.device) for p in params]

    def loss(self, params: Sequence[Tensor]) -> Tensor:
        return F.cross_entropy(self.logits(params, self.x), self.y)

    def logits(self, params: Sequence[Tensor], x: Tensor) -> Tensor:
        act = ACTIVATIONS[self.activation]
        layers = len(params) // 2
        for i in range(layers):
            x = F.linear(x, params[2 * i], params[2 * i + 1])
            if i < layers - 1:
                x = act(x)
        return x

    def to(self, device: torch.device | str) -> Task:
        return replace(self, x=self.x.to(device), y=self.y.to(device))


@dataclass(eq=False)
class QuadraticTask:
    """f(theta) = ||W theta - y||^2 with W and y drawn from a standard normal (the paper's first experiment)."""

    w: Tensor  # (dim, dim)
    y: Tensor  # (dim,)
    seed: int = 0

    def init(self, seed: int) -> list[Tensor]:
        generator = torch.Generator().manual_seed(derive_seed(f"{self.seed}:{seed}", "learned_opt.quadratic.init"))
        return [torch.randn(self.w.shape[1], generator=generator, dtype=self.w.dtype).to(self.w.device)]

    def loss(self, params: Sequence[Tensor]) -> Tensor:
        return (self.w @ params[0] - self.y).square().sum()


def quadratic_family(seeds: Iterable[int], dim: int = 10) -> list[QuadraticTask]:
    """One `QuadraticTask` of `dim` dimensions per seed."""
    tasks = []
    for seed in seeds:
        generator = torch.Generator().manual_seed(derive_seed(seed, "learned_opt.quadratic"))
        tasks.append(QuadraticTask(torch.randn(dim, dim, generator=generator),
                                   torch.randn(dim, generator=generator), seed))
    return tasks


def _arrays(source: str) -> tuple[np.ndarray, np.ndarray]:
    """A built-in data set's training rows as (x float64 (N, F), y int64 (N,))."""
    if source == "digits":
        from sklearn.datasets import load_digits  # bundled with sklearn: no download

        bunch = load_digits()
        return bunch.data.astype(np.float64), bunch.target.astype(np.int64)
    if source == "mnist1d":
        d = generate_mnist1d()  # the published set's training split
        return np.asarray(d["x"], dtype=np.float64), np.asarray(d["y"], dtype=np.int64)
    raise ValueError(f"task source {source!r} is unknown; use one of {', '.join(SOURCES)}.")


def task_family(source: str, seeds: Iterable[int], rows: int = 512, hidden: tuple[int, ...] = (20,),
                activation: str = "sigmoid") -> list[Task]:
    """One `Task` per seed: `rows` rows of `source` ("mnist1d": its training split, or
    "digits") drawn by the seed, features standardised with the whole source's statistics,
    and an MLP with `hidden` units whose initial weights the seed also changes."""
    x, y = _arrays(source)
    if not 1 <= rows <= len(x):
        raise ValueError(f"rows must be between 1 and {len(x)} (the rows of {source}); got {rows}.")
    std = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    num_classes = int(y.max()) + 1
    tasks = []
    for seed in seeds:
        pick = np.random.default_rng(derive_seed(seed, "learned_opt.rows")).choice(len(x), rows, replace=False)
        tasks.append(Task(torch.from_numpy(x[pick]).float(), torch.from_numpy(y[pick]), num_classes,
                          tuple(hidden), activation, int(seed)))
    return tasks


# ---- meta-training and evaluation -------------------------------------------------------


def meta_train(tasks: Sequence[Problem], *, iterations: int = 200, unroll: int = 20, horizon: int = 100,
               meta_lr: float = 1e-3, seed: int = 0, on_iteration: Callable[[int, float], None] | None = None,
               net: OptimizerNet | None = None, batch: int = 1, clip: float | None = 1.0,
               anneal: bool = False, validate: Sequence[Problem] = (),
               validate_every: int = 25, checkpoint_every: int = 10,
               on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
               resume: dict[str, Any] | None = None) -> tuple[OptimizerNet, list[float]]:
    """Train an `OptimizerNet` to optimise `tasks` well; returns it and the meta-loss per iteration.

    Each iteration picks `batch` tasks (seeded, with replacement), starts each from fresh
    weights and runs `horizon` optimisee steps on them with the net. Every `unroll` steps the
    summed loss of those steps is back-propagated into the net and Adam (`meta_lr`) updates
    it; then the optimisees' weights and the LSTM state are detached and the next piece goes
    on from them. The meta-loss reported (and given to `on_iteration(i, meta_loss)`) is the
    optimisees' mean loss over the horizon's steps.

    Beyond the paper, all off by default except a gradient clip: `net` continues an existing
    net (a copy is trained) instead of a fresh one; `batch` > 1 averages each meta-gradient
    over that many problems (their coordinates go through the net as one batch); `clip`
    bounds the meta-gradient's norm, against the rare huge one early on; `anneal` lowers
    meta_lr to 0 along a cosine over the iterations, so the net ends on small steps.

    `validate` (problems not trained on) turns on the paper's early stopping: every
    `validate_every` iterations and at the end, the net as it is then trains each of them
    for `horizon` steps, and the net with the lowest mean final loss is returned. One
    problem per iteration makes the net wander: how well the last one does varies a lot
    from seed to seed, the best of several much less.

    Every `checkpoint_every` iterations and after the last, `on_checkpoint(state)` gets
    everything the loop holds (tensors and plain containers, for `torch.save`); `resume=state`
    goes on from there and ends exactly as the run that was never stopped.

    Deterministic on the CPU given `seed`.
    """
    if not tasks:
        raise ValueError("meta_train needs at least one task; build some with task_family or quadratic_family.")
    if iterations < 0 or unroll < 1 or horizon < 1 or batch < 1:
        raise ValueError(f"meta_train needs iterations >= 0, unroll >= 1, horizon >= 1 and batch >= 1; got "
                         f"iterations={iterations}, unroll={unroll}, horizon={horizon}, batch={batch}.")
    if net is None:
        net = OptimizerNet().reset_parameters(torch.Generator().manual_seed(derive_seed(seed, "learned_opt.net")))
    else:
        net = copy.deepcopy(net)
    net.train().requires_grad_(True)
    meta_optimizer = torch.optim.Adam(net.parameters(), lr=meta_lr)
    if validate_every < 1 or checkpoint_every < 1:
        raise ValueError(f"validate_every and checkpoint_every must be at least 1; got {validate_every} and "
                         f"{checkpoint_every}.")
    pick = random.Random(derive_seed(seed, "learned_opt.tasks"))
    curve: list[float] = []
    best: tuple[float, OptimizerNet] | None = None
    if resume is not None:
        net.load_state_dict(resume["net"])
        meta_optimizer.load_state_dict(resume["meta_optimizer"])
        pick.setstate(resume["pick"])
        curve = list(resume["curve"])
        if resume["best_score"] is not None:
            best = resume["best_score"], copy.deepcopy(net)
            best[1].load_state_dict(resume["best_net"])
    for i in range(len(curve), iterations):
        if anneal:
            for group in meta_optimizer.param_groups:
                group["lr"] = meta_lr * 0.5 * (1.0 + math.cos(math.pi * i / iterations))
        chosen = [tasks[pick.randrange(len(tasks))] for _ in range(batch)]
        starts = [task.init(derive_seed(seed, f"learned_opt.weights:{i}:{k}")) for k, task in enumerate(chosen)]
        net.to(starts[0][0].device)
        total = _unrolled_run(net, meta_optimizer, chosen, starts, unroll, horizon, clip)
        meta_loss = total / (horizon * batch)
        curve.append(meta_loss)
        if on_iteration is not None:
            on_iteration(i, meta_loss)
        if validate and ((i + 1) % validate_every == 0 or i + 1 == iterations):
            score = _validation_loss(net, validate, horizon, seed)
            log.info("meta-iteration %d: mean final loss on the validation problems %.4g", i + 1, score)
            if best is None or score < best[0]:
                best = score, copy.deepcopy(net)
        if on_checkpoint is not None and ((i + 1) % checkpoint_every == 0 or i + 1 == iterations):
            on_checkpoint({"net": net.state_dict(), "meta_optimizer": meta_optimizer.state_dict(),
                           "pick": pick.getstate(), "curve": curve, "best_score": best[0] if best else None,
                           "best_net": best[1].state_dict() if best else None})
    return (best[1] if best is not None else net).eval(), curve


def _validation_loss(net: OptimizerNet, problems: Sequence[Problem], steps: int, seed: int) -> float:
    """The mean loss of `problems` after `steps` steps of the net, from weights fixed by `seed`."""
    finals = [optimise(problem, lambda ps: LearnedOptimizer(ps, net), steps, derive_seed(seed, f"learned_opt.val:{k}"))
              [-1] for k, problem in enumerate(problems)]
    return statistics.fmean(f if math.isfinite(f) else math.inf for f in finals)


def _unrolled_run(net: OptimizerNet, meta_optimizer: torch.optim.Optimizer, tasks: list[Problem],
                  starts: list[list[Tensor]], unroll: int, horizon: int, clip: float | None) -> float:
    """`horizon` steps on each task from its start, the net updated every `unroll`; the summed loss."""
    sizes = [p.numel() for params in starts for p in params]  # every task's tensors, end to end
    bounds = np.cumsum([0, *(len(params) for params in starts)])
    state = net.initial_state(sum(sizes))
    params = [p.detach().requires_grad_(True) for ps in starts for p in ps]

    def losses(flat: list[Tensor]) -> list[Tensor]:
        return [task.loss(flat[a:b]) for task, a, b in zip(tasks, bounds, bounds[1:])]

    current = losses(params)
    total, done = 0.0, 0
    while done < horizon:
        steps = min(unroll, horizon - done)
        summed = current[0].new_zeros(())
        for _ in range(steps):
            # The optimisee's gradient is a constant to the net: no second derivatives.
            grads = torch.autograd.grad(current, params, retain_graph=True)
            update, state = net(torch.cat([g.reshape(-1) for g in grads]), state)
            params = [p + u.view_as(p) for p, u in zip(params, update.split(sizes))]
            current = losses(params)
            summed = summed + sum(current)
        done += steps
        if not torch.isfinite(summed):
            log.warning("meta-training: the optimisee's loss became %s; this run stops early and the net is not "
                        "updated from it (lower meta_lr if this repeats).", summed.item())
            return math.inf
        meta_optimizer.zero_grad(set_to_none=True)
        summed.backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(net.parameters(), clip)
        meta_optimizer.step()
        total += summed.item()
        state = tuple((h.detach(), c.detach()) for h, c in state)
        params = [p.detach().requires_grad_(True) for p in params]
        current = losses(params)
    return total


def optimise(task: Problem, make_optimizer: Callable[[list[Tensor]], torch.optim.Optimizer], steps: int,
             seed: int) -> list[float]:
    """Train `task` from fresh weights (`task.init(seed)`) with `make_optimizer(params)` for
    `steps` steps; the loss before the first step and after each: steps + 1 values.

        >>> task = quadratic_family([0])[0]
        >>> curve = optimise(task, lambda ps: torch.optim.Adam(ps, lr=0.1), steps=50, seed=0)
        >>> curve[-1] < curve[0]
        True
    """
    params = [nn.Parameter(p.detach().clone()) for p in task.init(seed)]
    optimizer = make_optimizer(params)
    curve = []
    for _ in range(steps):
        loss = task.loss(params)
        curve.append(loss.item())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        curve.append(task.loss(params).item())
    return curve
