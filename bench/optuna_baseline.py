"""A plain Optuna baseline for the project's search, on MNIST-1D.

Measures what Optuna's RandomSampler and TPESampler reach in a layer-list CNN space
similar to spaces/cnn.yaml (0..4 conv blocks with pooling and optional residual add,
global-pool or flatten, 0..2 dense layers, optimizer / lr / weight decay / batch size),
training every trial for a fixed number of epochs with a cosine schedule. For each
sampler it reports the best validation accuracy, the test accuracy of the trial with
the best validation accuracy, and the wall time. Only the data splits come from the
project (`nas.data`); the model builder and training loop here are independent.

Run:  python bench/optuna_baseline.py [--trials 40] [--epochs 20] [--samplers random,tpe]
                                      [--seed 0] [--data-dir DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from nas.data import load_split, prepare  # noqa: E402  (only the data splits come from the project)

ACTS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "none": nn.Identity}


class Block(nn.Module):
    """conv -> [bn] -> act -> [pool] -> [+ input, projected when shapes differ]."""

    def __init__(self, c_in: int, length: int, p: dict):
        super().__init__()
        k, s = p["kernel"], p["stride"]
        self.conv = nn.Conv1d(c_in, p["channels"], k, stride=s, padding=k // 2, bias=not p["bn"])
        self.bn = nn.BatchNorm1d(p["channels"]) if p["bn"] else nn.Identity()
        self.act = ACTS[p["act"]]()
        length = (length + 2 * (k // 2) - k) // s + 1
        self.pool = nn.Identity()
        if p["pool"] != "none" and length >= 2:
            self.pool = (nn.MaxPool1d if p["pool"] == "max" else nn.AvgPool1d)(2)
            length //= 2
        self.skip = p["skip"] == "add"
        self.proj = nn.Conv1d(c_in, p["channels"], 1) if self.skip and c_in != p["channels"] else nn.Identity()
        self.out_channels, self.out_length = p["channels"], length

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(self.act(self.bn(self.conv(x))))
        if self.skip:
            r = self.proj(x)
            if r.shape[-1] != y.shape[-1]:
                r = F.adaptive_avg_pool1d(r, y.shape[-1])
            y = y + r
        return y


def suggest_model(trial: optuna.Trial, shape: tuple[int, int], classes: int) -> nn.Module:
    """Define-by-run space: each block's and dense layer's parameters exist only if it does."""
    channels, length = shape
    layers: list[nn.Module] = []
    for i in range(trial.suggest_int("conv_blocks", 0, 4)):
        p = {
            "channels": trial.suggest_categorical(f"b{i}_channels", [8, 16, 32, 64]),
            "kernel": trial.suggest_int(f"b{i}_kernel", 1, 7, step=2),
            "stride": trial.suggest_categorical(f"b{i}_stride", [1, 2]),
            "bn": trial.suggest_categorical(f"b{i}_bn", [True, False]),
            "act": trial.suggest_categorical(f"b{i}_act", list(ACTS)),
            "pool": trial.suggest_categorical(f"b{i}_pool", ["none", "max", "avg"]),
            "skip": trial.suggest_categorical(f"b{i}_skip", ["none", "add"]),
        }
        block = Block(channels, length, p)
        layers.append(block)
        channels, length = block.out_channels, block.out_length
    if trial.suggest_categorical("reduce", ["global_pool", "flatten"]) == "global_pool":
        layers += [nn.AdaptiveAvgPool1d(1), nn.Flatten()]
        width = channels
    else:
        layers.append(nn.Flatten())
        width = channels * length
    for i in range(trial.suggest_int("dense_layers", 0, 2)):
        units = trial.suggest_categorical(f"d{i}_units", [32, 64, 128, 256])
        act = trial.suggest_categorical(f"d{i}_act", ["relu", "gelu", "tanh"])
        drop = trial.suggest_categorical(f"d{i}_dropout", [0.0, 0.1, 0.3])
        layers += [nn.Linear(width, units), ACTS[act](), nn.Dropout(drop)]
        width = units
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


def make_objective(data: dict, epochs: int, seed: int):
    (xtr, ytr), (xva, yva), (xte, yte) = data["train"], data["val"], data["test"]
    classes = int(max(ytr.max(), yva.max(), yte.max())) + 1

    def objective(trial: optuna.Trial) -> float:
        torch.manual_seed(seed + trial.number)
        model = suggest_model(trial, tuple(xtr.shape[1:]), classes)
        name = trial.suggest_categorical("optimizer", ["adam", "adamw", "sgd"])
        lr = trial.suggest_float("lr", 3e-4, 1e-2, log=True)
        wd = trial.suggest_categorical("weight_decay", [0.0, 1e-5, 1e-4])
        bs = trial.suggest_categorical("batch_size", [32, 64, 128])
        if name == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=wd)
        else:
            opt = (torch.optim.Adam if name == "adam" else torch.optim.AdamW)(model.parameters(), lr=lr, weight_decay=wd)
        steps_per_epoch = math.ceil(len(ytr) / bs)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
        for _ in range(epochs):
            model.train()
            order = torch.randperm(len(ytr))
            for start in range(0, len(ytr), bs):
                idx = order[start:start + bs]
                if len(idx) < 2:  # batch norm cannot train on a single example
                    continue
                loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        val, test = accuracy(model, xva, yva), accuracy(model, xte, yte)
        trial.set_user_attr("test_acc", test)
        return val

    return objective


def run_sampler(kind: str, data: dict, trials: int, epochs: int, seed: int) -> dict:
    sampler = {"random": optuna.samplers.RandomSampler, "tpe": optuna.samplers.TPESampler}[kind](seed=seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    objective = make_objective(data, epochs, seed)

    def report(study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        secs = t.duration.total_seconds() if t.duration else float("nan")
        print(f"[{kind}] trial {t.number:3d}  val {t.value:.4f}  test {t.user_attrs['test_acc']:.4f}  "
              f"best {study.best_value:.4f}  {secs:5.1f}s", flush=True)

    started = time.perf_counter()
    study.optimize(objective, n_trials=trials, callbacks=[report])
    wall = time.perf_counter() - started
    best = study.best_trial
    return {"sampler": kind, "trials": trials, "epochs": epochs, "best_val_acc": best.value,
            "test_acc_of_best_val": best.user_attrs["test_acc"], "best_trial": best.number,
            "wall_s": wall, "s_per_trial": wall / trials, "best_params": best.params}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--samplers", default="random,tpe")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", help="prepare MNIST-1D here (default: a temporary directory)")
    ap.add_argument("--json", help="write the summary numbers to this JSON file")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(2)

    with tempfile.TemporaryDirectory() as tmp:
        out = args.data_dir or tmp
        prepare("mnist1d", out)
        data = {s: tuple(torch.from_numpy(a) for a in load_split(out, s)) for s in ("train", "val", "test")}
    results = [run_sampler(k.strip(), data, args.trials, args.epochs, args.seed)
               for k in args.samplers.split(",") if k.strip()]

    print(f"\n{'sampler':<8} {'trials':>6} {'best val':>9} {'test@best':>10} {'wall s':>8} {'s/trial':>8}")
    for r in results:
        print(f"{r['sampler']:<8} {r['trials']:>6} {r['best_val_acc']:>9.4f} {r['test_acc_of_best_val']:>10.4f} "
              f"{r['wall_s']:>8.1f} {r['s_per_trial']:>8.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"epochs": args.epochs, "seed": args.seed, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
