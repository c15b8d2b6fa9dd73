"""Several trials of one architecture trained as one batched network (torch.func + vmap).

A small network leaves the hardware mostly idle, and every step pays Python and kernel
launch overhead. Trials that share a graph and differ only in learning rate, weight decay
or initialisation (refinement's grid, evolution's identity children, a Hyperband rung)
can instead run as one network whose every weight and buffer has a leading member axis
(`torch.func.stack_module_state`): `vmap` over `functional_call` turns each layer into
one batched kernel (a conv becomes a grouped conv), so one launch serves N trials.

Each member reproduces its own `nas.train.train` run (folds=1): it is built from its own
trial seed (same initial weights), draws its own shuffled order, and steps with torch's
SGD / Adam / AdamW formulas applied to the stacked tensors with its own learning-rate
schedule and weight decay. On the CPU the results equal separate training up to float
rounding: batched kernels sum in another order. Those differences start near 1e-7 and,
like any rounding change (a different thread count does the same), training amplifies them
over epochs: a few val examples apart after several epochs at a high learning rate.

    >>> from nas.batched import groups, train_together
    >>> for group in groups(candidates):                                  # doctest: +SKIP
    ...     for outcome in train_together(group, data, seed=0):
    ...         print(outcome.evaluation.val_acc)
"""

from __future__ import annotations

import copy
import gc
import math
import time
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from nas.build import build
from nas.ids import derive_seed
from nas.space.architecture import Architecture, ArchitectureError, learned_run
from nas.space.shapes import infer
from nas.train import (CLIP_NORM, EVAL_BATCH, TrainData, TrainOutcome, _batches, _cosine, _divergence_reason,
                       _is_out_of_memory, _not_finite_reason, _out_of_memory_reason, _time_limit_reason,
                       clips_gradients, pick_device, train)
from nas.trial import Candidate, Evaluation, TrialSetting, TrialStatus

__all__ = ["groups", "train_together"]

Stacked = dict[str, torch.Tensor]  # state-dict key -> tensor with a leading member axis
_KEY_NAMES = ("architecture", "batch_size", "optimizer", "hparams.epochs", "budget.epochs")


def _key(c: Candidate) -> tuple:
    return c.arch.arch_id, c.hparams.batch_size, c.hparams.optimizer, c.hparams.epochs, c.budget.epochs


def _has_dropout(arch: Architecture) -> bool:
    return any(float(node.get("dropout", 0) or 0) > 0 for node in arch.nodes)


def _alone_because(c: Candidate) -> str | None:
    """Why a candidate must train by itself, or None when it can join a group."""
    if c.resume_from is not None:
        return "it resumes a checkpoint (resume_from)"
    if c.inherit_from is not None:
        return "it inherits a parent's weights (inherit_from)"
    if c.budget.epochs < c.hparams.epochs:
        return "its budget ends before its schedule does, so it must keep a checkpoint"
    if learned_run(c.hparams.optimizer):
        return "it uses a learned optimiser, whose step is not batched"
    if _has_dropout(c.arch):  # masks come from a generator the network owns, which vmap cannot batch
        return "its architecture has dropout"
    return None


def groups(candidates: Iterable[Candidate], max_size: int | None = None) -> list[list[Candidate]]:
    """The candidates (order kept) split into groups that `train_together` can train at once.

    A group shares architecture, batch size, optimizer, hparams.epochs and budget.epochs;
    a candidate that resumes, inherits, stops before its schedule ends or uses dropout is
    a group of its own. `max_size` caps a group (device memory grows with it).
    """
    out: list[list[Candidate]] = []
    open_groups: dict[tuple, list[Candidate]] = {}
    for c in candidates:
        if _alone_because(c) is not None:
            out.append([c])
            continue
        group = open_groups.get(_key(c))
        if group is None or (max_size is not None and len(group) >= max_size):
            group = open_groups[_key(c)] = []
            out.append(group)
        group.append(c)
    return out


def _check_group(candidates: Sequence[Candidate]) -> None:
    for i, c in enumerate(candidates):
        why = _alone_because(c)
        if why is not None:
            raise ValueError(f"candidate {i} cannot train in a group: {why}; train it alone with nas.train.train.")
    first = _key(candidates[0])
    for i, c in enumerate(candidates[1:], start=1):
        for name, a, b in zip(_KEY_NAMES, first, _key(c)):
            if a != b:
                raise ValueError(f"candidates 0 and {i} differ in {name} ({a!r} vs {b!r}); split them with "
                                 "nas.batched.groups first.")


class _StackedOptimizer:
    """torch's single-tensor SGD (momentum 0.9, nesterov), Adam and AdamW on stacked tensors.

    The formulas and their order of operations are those of torch.optim on the CPU; only
    lr and weight decay become per-member columns. Per-member scalars are computed in
    Python floats first, as torch does, so they round to float32 the same way.
    """

    def __init__(self, kind: str, weight_decay: list[float], device: torch.device) -> None:
        self.kind, self.weight_decay, self.device = kind, weight_decay, device
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        self.steps = 0

    def _columns(self, values: list[float]) -> Callable[[torch.Tensor], torch.Tensor]:
        """The values as an [N, 1, 1, ...] float32 column shaped to broadcast over a stacked tensor."""
        column = torch.tensor(values, dtype=torch.float32, device=self.device)
        return lambda like: column.view(-1, *[1] * (like.dim() - 1))

    def keep(self, rows: torch.Tensor) -> None:
        """Drop the members not in `rows` (they failed)."""
        self.weight_decay = [self.weight_decay[r] for r in rows.tolist()]
        self.state = {k: {n: t[rows] for n, t in s.items()} for k, s in self.state.items()}

    @torch.no_grad()
    def step(self, params: Stacked, lrs: list[float]) -> None:
        self.steps += 1
        t, wds = self.steps, self.weight_decay
        # One small host-to-device copy per quantity per step, shared by every tensor.
        wd = self._columns(wds)
        if self.kind == "sgd":
            neg_lr = self._columns([-lr for lr in lrs])
        else:
            decay = self._columns([1 - lr * w for lr, w in zip(lrs, wds)])
            neg_step = self._columns([-(lr / (1 - 0.9**t)) for lr in lrs])
            bias_correction2_sqrt = (1 - 0.999**t) ** 0.5
        for name, p in params.items():
            grad, state = p.grad, self.state.setdefault(name, {})
            if self.kind == "sgd":
                grad = grad + wd(p) * p
                if "momentum" not in state:
                    state["momentum"] = buf = grad.detach().clone()
                else:
                    buf = state["momentum"].mul_(0.9).add_(grad)
                grad = grad.add(buf, alpha=0.9)
                p.add_(neg_lr(p) * grad)
                continue
            if self.kind == "adamw":  # decoupled: p *= 1 - lr * wd
                p.mul_(decay(p))
            else:  # adam: L2 added to the gradient
                grad = grad + wd(p) * p
            if not state:
                state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            exp_avg.lerp_(grad, 1 - 0.9)
            exp_avg_sq.mul_(0.999).addcmul_(grad, grad, value=1 - 0.999)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(1e-8)
            p.add_(neg_step(p) * exp_avg / denom)  # addcdiv's order: (value * t1) / t2


def _forward(base: nn.Module, params: Stacked, buffers: Stacked, x: torch.Tensor,
             shared_x: bool = False) -> torch.Tensor:
    """Logits [N, B, classes]: each member's weights on its own inputs [N, B, ...] (or all on x [B, ...]).

    In train mode batch norm updates its running stats in place; the stacked buffers are
    vmapped too, so each member's update lands in its own row of the stacked tensor.
    """
    def one(p: Stacked, b: Stacked, xi: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (p, b), (xi,))
    return vmap(one, in_dims=(0, 0, None if shared_x else 0))(params, buffers, x)


def _clip_each(params: Stacked) -> None:
    """`clip_grad_norm_` for every member on its own: each row's gradient norm at most CLIP_NORM."""
    grads = [p.grad for p in params.values() if p.grad is not None]
    norms = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
    scale = (CLIP_NORM / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *[1] * (g.dim() - 1)))


@torch.no_grad()
def _evaluate(base: nn.Module, params: Stacked, buffers: Stacked, x: torch.Tensor, y: torch.Tensor,
              device: torch.device) -> tuple[list[float], list[float]]:
    """Every member's accuracy and mean cross-entropy on (x, y), as nas.train._evaluate computes them."""
    base.eval()
    n = len(next(iter(params.values())))
    correct = torch.zeros(n, dtype=torch.int64, device=device)
    loss_sum = torch.zeros(n, dtype=torch.float32, device=device)
    for start in range(0, len(y), EVAL_BATCH):
        xb = x[start:start + EVAL_BATCH].to(device, non_blocking=True)
        yb = y[start:start + EVAL_BATCH].to(device, non_blocking=True)
        logits = _forward(base, params, buffers, xb, shared_x=True)
        correct += (logits.argmax(dim=2) == yb).sum(dim=1)
        loss_sum += vmap(lambda lg: F.cross_entropy(lg, yb, reduction="sum"))(logits.float())
    total = max(len(y), 1)
    return [c / total for c in correct.tolist()], [s / total for s in loss_sum.tolist()]


def _fail(evaluation: Evaluation, reason: str, status: TrialStatus = TrialStatus.FAILED) -> None:
    evaluation.status, evaluation.reason = status, reason


def _train_group(outcomes: list[TrainOutcome], data: TrainData, seeds: list[int], device: torch.device,
                 max_params: int | None, measure_test: bool, started: float) -> None:
    """The body of `train_together`: trains the members, failing each on its own as nas.train would."""
    evals = [o.evaluation for o in outcomes]
    cands = [e.candidate for e in evals]
    arch, hparams, budget = cands[0].arch, cands[0].hparams, cands[0].budget
    plan = infer(arch, data.shape, data.num_classes)
    for e in evals:
        e.params, e.flops = plan.params, plan.flops
    models = [build(arch, data.shape, data.num_classes, seed=s, init=c.hparams.init, max_params=max_params)
              for s, c in zip(seeds, cands)]
    base = copy.deepcopy(models[0]).to("meta")  # the code of the network; the weights come from the stacks
    stacked_params, stacked_buffers = stack_module_state(models)
    params = {k: v.detach().to(device).requires_grad_() for k, v in stacked_params.items()}
    buffers = {k: v.to(device) for k, v in stacked_buffers.items()}
    batches = _batches(len(data.y_train), hparams.batch_size)
    if not batches:
        raise ValueError("the training split is empty; prepare the data again with `nas prepare`.")
    total_steps = max(hparams.epochs, budget.epochs) * len(batches)
    seen = sum(end - start for start, end in batches)
    shuffles = [torch.Generator().manual_seed(derive_seed(s, "shuffle")) for s in seeds]
    optimizer = _StackedOptimizer(hparams.optimizer, [c.hparams.weight_decay for c in cands], device)
    # The group shares one clock, so the tightest member's limit binds them all.
    limits = [c.budget.max_seconds for c in cands if c.budget.max_seconds is not None]
    limit = min(limits) if limits else None
    clip = clips_gradients(arch)
    live = list(range(len(cands)))  # row r of every stack is member live[r]
    step = 0
    for epoch in range(1, budget.epochs + 1):
        base.train()
        orders = torch.stack([torch.randperm(len(data.y_train), generator=shuffles[m]) for m in live])
        orders = orders.to(data.device)
        loss_sum = torch.zeros(len(live), dtype=torch.float32, device=device)
        for start, end in batches:
            index = orders[:, start:end]
            xb = data.x_train[index].to(device, non_blocking=True)
            yb = data.y_train[index].to(device, non_blocking=True)
            # float32 on the GPU too: under vmap, batch norm's backward rejects autocast's
            # bf16 activations against float32 running statistics.
            logits = _forward(base, params, buffers, xb)
            losses = vmap(F.cross_entropy)(logits.float(), yb)  # each member's mean loss
            for p in params.values():
                p.grad = None
            # Members share no weights, so the gradient of the sum is each member's own gradient.
            losses.sum().backward()
            if clip:
                _clip_each(params)
            optimizer.step(params, [_cosine(cands[m].hparams.lr, step, total_steps) for m in live])
            loss_sum += losses.detach() * (end - start)
            step += 1
            if limit is not None and time.perf_counter() - started > limit:
                for m in live:
                    _fail(evals[m], _time_limit_reason(limit, epoch), TrialStatus.ERROR)
                return
        mean_losses = [s / seen for s in loss_sum.tolist()]
        val_accs, val_losses = _evaluate(base, params, buffers, data.x_val, data.y_val, device)
        for m, mean_loss, val_acc, val_loss in zip(live, mean_losses, val_accs, val_losses):
            e, lr = evals[m], cands[m].hparams.lr
            if not math.isfinite(mean_loss):
                _fail(e, _not_finite_reason(mean_loss, epoch, lr))
                continue
            e.train_loss.append(mean_loss)
            e.val_accs.append(val_acc)
            e.val_loss, e.epochs_trained = val_loss, epoch
            diverged = _divergence_reason(e.train_loss, lr)
            if diverged:
                _fail(e, diverged)
        rows = [r for r, m in enumerate(live) if evals[m].ok]
        if len(rows) < len(live):  # failed members leave the stacks: no more compute, no NaN moments
            keep = torch.tensor(rows, device=device)
            params = {k: v.detach()[keep].requires_grad_() for k, v in params.items()}
            buffers = {k: v[keep] for k, v in buffers.items()}
            optimizer.keep(keep)
            live = [live[r] for r in rows]
            if not live:
                return
    test_accs = _evaluate(base, params, buffers, data.x_test, data.y_test, device)[0] if measure_test else None
    keys = list(models[0].state_dict())
    for r, m in enumerate(live):
        e = evals[m]
        e.val_acc = e.val_accs[-1]
        if test_accs is not None:
            e.test_acc = test_accs[r]
        weights = {k: (params[k] if k in params else buffers[k])[r].detach().to("cpu", copy=True) for k in keys}
        models[m].load_state_dict(weights)
        outcomes[m].weights, outcomes[m].model = weights, models[m].to(device)


def train_together(candidates: Sequence[Candidate], data: TrainData, *, seed: int = 0,
                   device: str | torch.device | None = None, max_params: int | None = None,
                   measure_test: bool = True) -> list[TrainOutcome]:
    """Train one group (see `groups`) at once: one outcome per candidate, in order, each as
    `nas.train.train` (folds=1) gives it for that candidate alone.

    A member that diverges or turns NaN fails alone and the others go on. The time limit
    (the smallest `budget.max_seconds` of the group) and running out of memory end every
    unfinished member with nas.train's error. `seconds` is the group's wall time split
    evenly. ValueError when the candidates cannot form one group.
    """
    candidates = list(candidates)
    if len(candidates) <= 1:
        return [train(c, data, seed=seed, device=device, max_params=max_params, measure_test=measure_test)
                for c in candidates]
    _check_group(candidates)
    started = time.perf_counter()
    device = pick_device(device)
    setting = TrialSetting(data.fingerprint, seed, device.type, max_params, 1)
    outcomes = [TrainOutcome(Evaluation(c, c.trial_key(setting), device=str(device))) for c in candidates]
    try:
        _train_group(outcomes, data, [c.trial_seed(setting) for c in candidates], device, max_params, measure_test,
                     started)
    except ArchitectureError as exc:
        for o in outcomes:
            _fail(o.evaluation, str(exc))
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as exc:
        if not _is_out_of_memory(exc):
            raise
        for o in outcomes:
            e = o.evaluation
            if e.ok:  # another time, or in a smaller group, it may fit
                _fail(e, _out_of_memory_reason(e, device), TrialStatus.ERROR)
        gc.collect()  # the failed frame is gone, so its tensors can really be released
        if device.type == "cuda":
            torch.cuda.empty_cache()
    seconds = (time.perf_counter() - started) / len(candidates)
    for o in outcomes:
        o.evaluation.seconds = seconds
        if not o.evaluation.ok:
            o.weights, o.model = None, None
    return outcomes
