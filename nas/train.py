"""Training one candidate: seeded, per-epoch metrics, and failures as results, never crashes.

Trials run as threads of one process, so everything random here comes from generators
owned by the trial (`nas.build` owns init and dropout, this module the shuffling), and
nothing touches torch's global seed or thread count. Threads cannot be interrupted from
outside either, so the loop enforces the per-trial time limit itself.

    >>> import random
    >>> from nas.space import SearchSpace
    >>> from nas.trial import Budget
    >>> data = load_data("data/digits")                                   # doctest: +SKIP
    >>> space = SearchSpace.load("spaces/cnn.yaml").bind(data.shape, data.num_classes)
    >>> arch, hparams = space.sample(random.Random(0))
    >>> fit(arch, hparams, data, Budget(epochs=3)).val_acc                # doctest: +SKIP
    0.95...
"""

from __future__ import annotations

import contextlib
import gc
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nas import data as datasets
from nas.build import Dropout, build
from nas.gpu import GraphedStep, trial_stream
from nas.ids import derive_seed
from nas.space.architecture import Architecture, ArchitectureError, HParams, learned_run
from nas.space.shapes import infer
from nas.trial import Budget, Candidate, Evaluation, TrialSetting, TrialStatus

__all__ = ["CLIP_NORM", "TrainData", "TrainOutcome", "clips_gradients", "fit", "load_data", "pick_device",
           "predict_accuracy", "train", "with_validation"]

EVAL_BATCH = 4096  # evaluation keeps no activations for backward, so batches can be large
DIVERGENCE_FACTOR = 10.0  # an epoch's mean loss this many times the first epoch's ...
DIVERGENCE_FLOOR = 10.0  # ... and above this, is divergence (small losses may wobble freely)
DEVICE_DATA_FRACTION = 0.25  # data larger than this share of free GPU memory stays on the host
CLIP_NORM = 1.0  # a recurrent network's gradient norm limit: backpropagation through time can explode

# Called with a step and metrics named as in Evaluation.curves, as each epoch (or fold) ends.
OnMetrics = Callable[[int, dict[str, float]], None]


def with_validation(fingerprint: str) -> str:
    """The fingerprint of a prepared data set whose val split joined its training split."""
    return f"{fingerprint}+val"


@dataclass
class TrainData:
    """All splits as tensors, already on the device training will use."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    shape: tuple[int, ...]
    num_classes: int
    fingerprint: str

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def with_validation_in_training(self) -> TrainData:
        """Train on train+val, for the final model once validation has chosen it.

        The val split stays as a progress signal, now measured on data the model trains on;
        the fingerprint changes, so such a run never shares a trial key with an ordinary one.
        """
        return replace(self, x_train=torch.cat([self.x_train, self.x_val]),
                       y_train=torch.cat([self.y_train, self.y_val]), fingerprint=with_validation(self.fingerprint))


@dataclass
class TrainOutcome:
    evaluation: Evaluation
    weights: dict[str, torch.Tensor] | None = None  # CPU state dict of the final model; None on failure
    model: nn.Module | None = None
    # Everything needed to continue the run exactly, kept when the budget stopped it before
    # its learning-rate schedule (hparams.epochs) ended: Hyperband promotes such runs.
    checkpoint: dict[str, Any] | None = None

    @property
    def inherited(self) -> list[str]:
        """State-dict keys taken from init_weights."""
        return self.evaluation.inherited


class _Stop(Exception):
    """A trial that must end early; `reason` says why and what to do, `status` whose fault it was."""

    def __init__(self, reason: str, status: TrialStatus = TrialStatus.FAILED) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def pick_device(preference: str | torch.device | None = None) -> torch.device:
    """CUDA when available, else CPU; an explicit "cpu" or "cuda[:n]" is honoured or refused."""
    if preference is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(preference)
    except RuntimeError:
        raise ValueError(f"device {preference!r} is not understood; use 'cpu', 'cuda' or 'cuda:N'.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {preference!r} was asked for but torch sees no CUDA GPU (torch "
                         f"{torch.__version__}); install a CUDA build of torch or use device 'cpu'.")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {preference!r} is not supported; use 'cpu', 'cuda' or 'cuda:N'.")
    return device


def _data_home(nbytes: int, device: torch.device) -> torch.device:
    """Where the data tensors live: on the GPU when they fit comfortably, else on the host."""
    if device.type != "cuda":
        return device
    free, _total = torch.cuda.mem_get_info(device)
    return device if nbytes <= DEVICE_DATA_FRACTION * free else torch.device("cpu")


def load_data(data_dir: str | Path, device: str | torch.device | None = None) -> TrainData:
    """A prepared data folder (see nas.data.prepare) as tensors on the training device."""
    device = pick_device(device)
    meta = datasets.read_meta(data_dir)
    arrays = {split: datasets.load_split(data_dir, split) for split in datasets.SPLITS}
    nbytes = sum(x.nbytes + y.nbytes for x, y in arrays.values())
    home = _data_home(nbytes, device)
    tensors = {split: (torch.from_numpy(x).to(home), torch.from_numpy(y).to(home)) for split, (x, y) in arrays.items()}
    return TrainData(
        x_train=tensors["train"][0], y_train=tensors["train"][1],
        x_val=tensors["val"][0], y_val=tensors["val"][1],
        x_test=tensors["test"][0], y_test=tensors["test"][1],
        shape=tuple(meta.shape), num_classes=len(meta.classes), fingerprint=meta.fingerprint)


def _optimizer(model: nn.Module, hparams: HParams, device: torch.device,
               learned: nn.Module | None = None) -> torch.optim.Optimizer:
    params = model.parameters()
    if learned_run(hparams.optimizer):
        if learned is None:
            raise ArchitectureError(f"optimizer '{hparams.optimizer}' is a learned optimiser, and none was loaded; "
                                    "train through a search, whose runner reads it from the lineage store.")
        from nas.learned_opt import LearnedOptimizer

        return LearnedOptimizer(params, learned.to(device), lr=hparams.lr)
    # On CUDA: fused kernels (one launch per step) and the learning rate as a device tensor,
    # which a captured step reads at each replay (see nas.gpu.GraphedStep). The CPU keeps
    # torch's default implementation, so earlier CPU results stay bit-identical.
    fast = device.type == "cuda"
    lr = torch.tensor(hparams.lr, device=device) if fast else hparams.lr
    if hparams.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=hparams.weight_decay,
                               fused=fast or None)
    if hparams.optimizer in ("adam", "adamw"):
        kind = torch.optim.Adam if hparams.optimizer == "adam" else torch.optim.AdamW
        return kind(params, lr=lr, weight_decay=hparams.weight_decay, fused=fast or None, capturable=fast)
    raise ArchitectureError(f"optimizer '{hparams.optimizer}' is unknown; use sgd, adam, adamw or learned:<run id>.")


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)  # in place: a captured step holds its address
        else:
            group["lr"] = lr


def _cosine(base_lr: float, step: int, total: int) -> float:
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def _batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    # A last batch of one example breaks batch norm over 1x1 feature maps; it is dropped.
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds.pop()
    return bounds


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    # bf16 on the GPU for speed; CPU stays float32 so a seed gives bit-identical runs.
    # No cast cache: a captured step must cast the weights afresh at every replay.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> tuple[float, float]:
    """Accuracy and mean cross-entropy loss."""
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float32, device=device)
    for start in range(0, len(y), EVAL_BATCH):
        xb = x[start:start + EVAL_BATCH].to(device, non_blocking=True)
        yb = y[start:start + EVAL_BATCH].to(device, non_blocking=True)
        with _autocast(device):
            logits = model(xb)
        correct += (logits.argmax(dim=1) == yb).sum()
        loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum")
    return correct.item() / max(len(y), 1), loss_sum.item() / max(len(y), 1)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    return _evaluate(model, x, y, device)[0]


def test_accuracy(arch: Architecture, weights: dict[str, torch.Tensor], data: TrainData) -> float:
    """The test-split accuracy of a trained network, rebuilt from its architecture and weights."""
    model = build(arch, data.shape, data.num_classes)
    model.load_state_dict(weights)
    return _accuracy(model.to(data.device), data.x_test, data.y_test, data.device)


def predict_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of a (loaded) model on host arrays, on the CPU: how a served model is judged."""
    return _accuracy(model.cpu(), torch.from_numpy(x), torch.from_numpy(y), torch.device("cpu"))


def load_matching(model: nn.Module, weights: dict[str, torch.Tensor]) -> list[str]:
    """Load every tensor whose key and shape match; the rest keep their fresh initialisation."""
    own = model.state_dict()
    matching = {k: v for k, v in weights.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    model.load_state_dict(matching, strict=False)
    return [k for k in own if k in matching]


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def _to_host(value: Any) -> Any:
    """A copy on the CPU of a tensor, or of every tensor in a (nested) dict or list."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, list):
        return [_to_host(v) for v in value]
    return {k: _to_host(v) for k, v in value.items()} if isinstance(value, dict) else value


def _checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, shuffle: torch.Generator,
                evaluation: Evaluation) -> dict[str, Any]:
    return {"epoch": evaluation.epochs_trained, "model": _to_host(model.state_dict()),
            "optimizer": _to_host(optimizer.state_dict()), "shuffle": shuffle.get_state(),
            "dropout": model.dropout_generators.__getstate__(),
            "train_loss": list(evaluation.train_loss), "val_accs": list(evaluation.val_accs)}


def _time_limit_reason(seconds: float, epoch: int) -> str:
    return (f"exceeded the per-trial time limit of {seconds:g} s in epoch {epoch}; raise budget.max_seconds, or "
            "train a smaller network or fewer epochs.")


def _not_finite_reason(mean_loss: float, epoch: int, lr: float) -> str:
    return (f"loss became {'NaN' if math.isnan(mean_loss) else 'infinite'} at epoch {epoch}; lower the learning "
            f"rate (now {lr:g}), add batch norm, or check the data for NaN or infinite values.")


def _divergence_reason(train_loss: list[float], lr: float) -> str | None:
    """Why the epoch mean losses so far (the last one just ended) count as divergence, if they do."""
    first, last = train_loss[0], train_loss[-1]
    if last > DIVERGENCE_FACTOR * first and last > DIVERGENCE_FLOOR:
        return (f"training diverged: the mean loss rose from {first:.3g} in epoch 1 to {last:.3g} in epoch "
                f"{len(train_loss)}; lower the learning rate (now {lr:g}).")
    return None


def _out_of_memory_reason(evaluation: Evaluation, device: torch.device) -> str:
    return (f"ran out of memory on {device} in epoch {evaluation.epochs_trained + 1}; use a smaller batch size (now "
            f"{evaluation.candidate.hparams.batch_size}) or a smaller network, or run fewer trials at once on this "
            "device.")


def clips_gradients(arch: Architecture) -> bool:
    """Whether training clips the gradient norm at CLIP_NORM: for recurrent networks, as RNN training does.

    Without it a gated cell of the language reached 0.27 validation accuracy on MNIST-1D in 20
    epochs; with it, 0.75.
    """
    return any(node.op == "cell" for node in arch.nodes)


def _training_step(model: nn.Module, optimizer: torch.optim.Optimizer, data: TrainData,
                   device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """One optimizer step on the training rows `index`; it returns the batch's summed loss."""
    clip = clips_gradients(model.arch)

    def step(index: torch.Tensor) -> torch.Tensor:
        xb = data.x_train[index].to(device, non_blocking=True)
        yb = data.y_train[index].to(device, non_blocking=True)
        with _autocast(device):
            logits = model(xb)
        loss = F.cross_entropy(logits.float(), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
        optimizer.step()
        return loss.detach() * len(index)
    return step


def _dropout_generators(model: nn.Module, device: torch.device) -> list[torch.Generator]:
    """The generator a network draws its dropout masks from on `device`, if it uses dropout at all."""
    uses = any(isinstance(m, Dropout) and m.p > 0 for m in model.modules())
    return [model.dropout_generators.on(device)] if uses else []


def _run_epochs(model: nn.Module, candidate: Candidate, data: TrainData, evaluation: Evaluation, seed: int,
                device: torch.device, started: float, resume: dict[str, Any] | None,
                on_metrics: OnMetrics | None, cuda_graphs: bool,
                learned: nn.Module | None = None) -> dict[str, Any] | None:
    """Train up to the budget's epochs, appending each epoch's metrics to `evaluation` (and
    handing them to `on_metrics`) as it goes.

    Returns a checkpoint when the schedule is unfinished. `resume` (such a checkpoint)
    continues a run where it stopped: same weights, optimizer moments, data order and
    dropout masks, so a run resumed from epoch k equals one trained straight through.
    `cuda_graphs` replays each full batch's step as a CUDA graph (CUDA with the data on the device).
    `learned` is the network of a learned optimiser (hparams.optimizer "learned:<run id>").
    """
    hparams, budget = candidate.hparams, candidate.budget
    optimizer = _optimizer(model, hparams, device, learned)
    batches = _batches(len(data.y_train), hparams.batch_size)
    if not batches:
        raise ValueError("the training split is empty; prepare the data again with `nas prepare`.")
    # The schedule spans hparams.epochs, so a shorter budget trains a prefix of the longer run.
    total_steps = max(hparams.epochs, budget.epochs) * len(batches)
    shuffle = torch.Generator().manual_seed(derive_seed(seed, "shuffle"))  # on the host: same order on any device
    first_epoch = 1
    if resume is not None:
        own_lrs = [group["lr"] for group in optimizer.param_groups]
        optimizer.load_state_dict(resume["optimizer"])
        for group, lr in zip(optimizer.param_groups, own_lrs):  # keep tensor learning rates on the device
            group["lr"] = lr
        shuffle.set_state(resume["shuffle"])
        model.dropout_generators.__setstate__(resume["dropout"])
        evaluation.train_loss, evaluation.val_accs = list(resume["train_loss"]), list(resume["val_accs"])
        evaluation.resumed_at = evaluation.epochs_trained = first_epoch = int(resume["epoch"])
        first_epoch += 1
    train_step = _training_step(model, optimizer, data, device)
    # A graph cannot copy from the host, and a learned optimiser's step is not made to be captured.
    if cuda_graphs and device.type == "cuda" and data.device.type == "cuda" and learned is None:
        train_step = GraphedStep(train_step, hparams.batch_size, device, _dropout_generators(model, data.device))
    step = (first_epoch - 1) * len(batches)
    for epoch in range(first_epoch, budget.epochs + 1):
        model.train()
        order = torch.randperm(len(data.y_train), generator=shuffle).to(data.device)
        loss_sum = torch.zeros((), dtype=torch.float32, device=device)
        for start, end in batches:
            _set_lr(optimizer, _cosine(hparams.lr, step, total_steps))
            loss_sum += train_step(order[start:end])
            step += 1
            if budget.max_seconds is not None and time.perf_counter() - started > budget.max_seconds:
                # A busy machine can cause this as well as the network: not remembered as a result.
                raise _Stop(_time_limit_reason(budget.max_seconds, epoch), TrialStatus.ERROR)
        mean_loss = loss_sum.item() / sum(end - start for start, end in batches)
        if not math.isfinite(mean_loss):
            raise _Stop(_not_finite_reason(mean_loss, epoch, hparams.lr))
        val_acc, evaluation.val_loss = _evaluate(model, data.x_val, data.y_val, device)
        evaluation.train_loss.append(mean_loss)
        evaluation.val_accs.append(val_acc)
        evaluation.epochs_trained = epoch
        if on_metrics is not None:
            on_metrics(epoch - 1, {"train_loss": mean_loss, "val_acc": val_acc})
        diverged = _divergence_reason(evaluation.train_loss, hparams.lr)
        if diverged:
            raise _Stop(diverged)
    if budget.epochs < hparams.epochs:
        return _checkpoint(model, optimizer, shuffle, evaluation)
    return None


def _train_into(outcome: TrainOutcome, data: TrainData, seed: int, device: torch.device,
                max_params: int | None, init_weights: dict[str, torch.Tensor] | None,
                resume: dict[str, Any] | None, measure_test: bool, started: float,
                on_metrics: OnMetrics | None, cuda_graphs: bool, learned: nn.Module | None) -> None:
    """The body of `train`. A separate frame, so on failure the model and optimizer die with it."""
    evaluation = outcome.evaluation
    candidate = evaluation.candidate
    plan = infer(candidate.arch, data.shape, data.num_classes)
    evaluation.params, evaluation.flops = plan.params, plan.flops
    model = build(candidate.arch, data.shape, data.num_classes, seed=seed, init=candidate.hparams.init,
                  max_params=max_params)
    if init_weights:
        evaluation.inherited = load_matching(model, init_weights)
    if resume is not None:
        model.load_state_dict(resume["model"])
    model.to(device)
    outcome.checkpoint = _run_epochs(model, candidate, data, evaluation, seed, device, started, resume, on_metrics,
                                     cuda_graphs, learned)
    if evaluation.val_loss is None:  # no epoch ran here: a budget of 0 scores the initial (or inherited) weights
        val_acc, evaluation.val_loss = _evaluate(model, data.x_val, data.y_val, device)
        if not evaluation.val_accs:
            evaluation.val_accs.append(val_acc)
    evaluation.val_acc = evaluation.val_accs[-1]
    if measure_test:
        evaluation.test_acc = _accuracy(model, data.x_test, data.y_test, device)
    # A checkpoint already holds the weights on the host: copy them off the device once.
    outcome.weights = outcome.checkpoint["model"] if outcome.checkpoint else _to_host(model.state_dict())
    outcome.model = model


def train(candidate: Candidate, data: TrainData, *, seed: int = 0, device: str | torch.device | None = None,
          max_params: int | None = None, init_weights: dict[str, torch.Tensor] | None = None,
          resume: dict[str, Any] | None = None, measure_test: bool = True, folds: int = 1,
          on_metrics: OnMetrics | None = None, cuda_graphs: bool = True,
          learned: nn.Module | None = None) -> TrainOutcome:
    """Train `candidate` on `data`; every failure comes back as a failed evaluation with a reason.

    `seed` is the search's: the trial trains with its own seed derived from it and the
    candidate (`Candidate.trial_seed`).

    `device` defaults to CUDA when present; data left on the host is moved batch by batch.
    `init_weights` (a state dict, e.g. a parent's) initialises every tensor whose key and
    shape match; `inherited` lists them. `resume` (a shorter run's `checkpoint`) continues
    that run up to this candidate's budget instead of starting afresh. `measure_test=False`
    leaves the test split untouched (refinement decides on validation accuracy alone).

    `folds` > 1 scores the trial by stratified K-fold cross-validation (see `_cross_validate`)
    instead of on the val split. `on_metrics(step, metrics)` hears each epoch's metrics as
    it ends (step = epoch - 1; a resumed run only its new epochs), or, cross-validating,
    each fold's (step = fold index), so a store can show them while the trial trains.

    On CUDA the trial runs on a stream of its own, so trials in other threads share the GPU,
    and `cuda_graphs` replays its training steps as CUDA graphs (see nas.gpu); the switch
    is there to rule the graphs out when a network misbehaves on the GPU only.

    `learned` is the `nas.learned_opt.OptimizerNet` of a candidate whose optimizer is
    "learned:<run id>" (the runner reads it from the lineage store).
    """
    started = time.perf_counter()
    device = pick_device(device)
    setting = TrialSetting(data.fingerprint, seed, device.type, max_params, folds)
    trial_key, trial_seed = candidate.trial_key(setting), candidate.trial_seed(setting)
    if folds > 1 and resume is not None:
        raise ValueError("a cross-validated trial cannot resume a checkpoint (it keeps none); train it from "
                         "scratch, without `resume`.")
    with trial_stream(device):
        if folds > 1:
            outcome = _cross_validate(candidate, trial_key, data, folds, trial_seed, device, max_params,
                                      init_weights, measure_test, started, on_metrics, cuda_graphs, learned)
        else:
            outcome = _train_once(candidate, trial_key, data, trial_seed, device, max_params, init_weights, resume,
                                  measure_test, started, on_metrics, cuda_graphs, learned)
    outcome.evaluation.seconds = time.perf_counter() - started
    return outcome


def _train_once(candidate: Candidate, trial_key: str, data: TrainData, seed: int, device: torch.device,
                max_params: int | None, init_weights: dict[str, torch.Tensor] | None,
                resume: dict[str, Any] | None, measure_test: bool, started: float,
                on_metrics: OnMetrics | None, cuda_graphs: bool, learned: nn.Module | None = None) -> TrainOutcome:
    """One network trained on data's train split and scored on its val split."""
    evaluation = Evaluation(candidate, trial_key, device=str(device))
    outcome = TrainOutcome(evaluation)
    out_of_memory = False
    try:
        _train_into(outcome, data, seed, device, max_params, init_weights, resume, measure_test, started, on_metrics,
                    cuda_graphs, learned)
    except ArchitectureError as exc:
        evaluation.status, evaluation.reason = TrialStatus.FAILED, str(exc)
    except _Stop as stop:
        evaluation.status, evaluation.reason = stop.status, stop.reason
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as exc:
        if not _is_out_of_memory(exc):
            raise
        out_of_memory = True
        evaluation.status = TrialStatus.ERROR  # another time, or fewer trials at once, it may fit
        evaluation.reason = _out_of_memory_reason(evaluation, device)
    if not evaluation.ok:
        outcome.model, outcome.weights, outcome.checkpoint = None, None, None
    if out_of_memory:  # the failed frames are gone now, so their tensors can really be released
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return outcome


def _cross_validate(candidate: Candidate, trial_key: str, data: TrainData, folds: int, seed: int,
                    device: torch.device, max_params: int | None, init_weights: dict[str, torch.Tensor] | None,
                    measure_test: bool, started: float, on_metrics: OnMetrics | None,
                    cuda_graphs: bool, learned: nn.Module | None) -> TrainOutcome:
    """Stratified K-fold over the pooled train+val rows: K networks, scored by their means.

    A small val split ties many networks at the same accuracy and ranks them by luck; every
    row validating once does not. Every fold starts from the trial's initial weights, so
    folds differ by their data alone. Then, as a cross-validated grid search refits, one
    network trains on all of train+val and stands for the trial: its weights are what a
    child inherits, its test accuracy what `measure_test` reports. It keeps no checkpoint:
    a longer budget (a Hyperband promotion) trains again from scratch. The time limit spans all.
    """
    from sklearn.model_selection import StratifiedKFold

    x, y = torch.cat([data.x_train, data.x_val]), torch.cat([data.y_train, data.y_val])
    # Stratifying needs a class with a row in every fold; data that small gets fewer folds.
    folds = min(folds, int(torch.bincount(y).max()))
    splitter = StratifiedKFold(folds, shuffle=True, random_state=derive_seed(seed, "folds") % 2**32)
    scored: list[Evaluation] = []
    for fold, (train_rows, val_rows) in enumerate(splitter.split(np.zeros(len(y)), y.cpu().numpy())):
        train_rows, val_rows = torch.from_numpy(train_rows).to(x.device), torch.from_numpy(val_rows).to(x.device)
        fold_data = replace(data, x_train=x[train_rows], y_train=y[train_rows], x_val=x[val_rows], y_val=y[val_rows])
        outcome = _train_once(candidate, trial_key, fold_data, seed, device, max_params, init_weights, None,
                              False, started, None, cuda_graphs, learned)
        if not outcome.evaluation.ok:
            outcome.evaluation.reason = f"fold {fold + 1} of {folds}: {outcome.evaluation.reason}"
            return outcome
        if on_metrics is not None:
            on_metrics(fold, {"fold_val_acc": outcome.evaluation.val_acc, "fold_val_loss": outcome.evaluation.val_loss})
        scored.append(outcome.evaluation)
    refit = _train_once(candidate, trial_key, data.with_validation_in_training(), seed, device, max_params,
                        init_weights, None, measure_test, started, None, cuda_graphs, learned)
    if not refit.evaluation.ok:
        refit.evaluation.reason = f"the refit on train+val: {refit.evaluation.reason}"
        return refit
    mean = statistics.fmean
    refit.evaluation = replace(
        refit.evaluation, val_acc=mean(e.val_acc for e in scored), val_loss=mean(e.val_loss for e in scored),
        train_loss=[mean(epoch) for epoch in zip(*(e.train_loss for e in scored))],
        val_accs=[mean(epoch) for epoch in zip(*(e.val_accs for e in scored))],
        fold_val_accs=[e.val_acc for e in scored], fold_val_losses=[e.val_loss for e in scored])
    refit.checkpoint = None
    return refit


def fit(arch: Architecture, hparams: HParams, data: TrainData, budget: Budget,
        init_weights: dict[str, torch.Tensor] | None = None, *, seed: int = 0,
        device: str | torch.device | None = None, max_params: int | None = None) -> Evaluation:
    """The training contract of DESIGN.md: train one (arch, hparams) for a budget, return its Evaluation."""
    candidate = Candidate(arch, hparams, budget)
    return train(candidate, data, seed=seed, device=device, max_params=max_params,
                 init_weights=init_weights).evaluation
