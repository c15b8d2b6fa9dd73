"""A searched recurrent cell against torch's LSTM and GRU, on the adding problem and MNIST-1D.

    python bench/rnn_cells.py [--length 100] [--trials 16] [--search-epochs 4] [--epochs 20]
                              [--hidden 64] [--seeds 0,1] [--space spaces/rnn-cell.yaml]
                              [--only adding|mnist1d] [--out bench/results/rnn_cells.json]

For each data set (the adding problem of length --length, and MNIST-1D read as a 40-step
sequence), nas-rl searches --space for --trials networks of --search-epochs epochs, in
process through the ordinary training path. The best cell's tree then gets --hidden units
and is trained next to torch.nn.LSTM and torch.nn.GRU of the same hidden size with one
recipe written here for all three (Adam, --lr, cosine decay, gradient clipping 1.0, batch
64, --epochs epochs): each reads the sequence and a linear head reads its last hidden state.
Reported: the test accuracy at the epoch of best validation accuracy, per seed, and the mean.
Target: the searched cell >= the LSTM on both data sets. On this 2-core CPU the defaults take
about 25 minutes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from nas.build import build
from nas.data import prepare
from nas.loop import run_loop
from nas.space import Architecture, Node, SearchSpace
from nas.space.cell import cell_spec
from nas.strategies import make_search
from nas.train import TrainData, load_data, train
from nas.trial import Budget

ROOT = Path(__file__).resolve().parents[1]


class TorchRNN(nn.Module):
    """torch's LSTM or GRU over a signal (B, C, L), then a linear head on the last hidden state."""

    def __init__(self, kind: type[nn.Module], channels: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.rnn = kind(channels, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.transpose(1, 2))
        return self.head(out[:, -1])


def search_best_cell(data: TrainData, args: argparse.Namespace) -> tuple[dict, float]:
    """nas-rl over the cell space: the best network's cell attributes and its validation accuracy."""
    space = SearchSpace.load(args.space).bind(data.shape, data.num_classes) \
        .with_hparams(epochs=args.search_epochs)
    strategy = make_search("nas-rl", space, Budget(args.search_epochs), seed=0, concurrency=2)
    results = []

    def submit(candidate):
        future: Future = Future()
        evaluation = train(candidate, data, seed=0, device="cpu", max_params=space.max_params).evaluation
        results.append(evaluation)
        print(f"    trial {len(results):>2}: val {evaluation.val_acc or 0:.4f} (lr {candidate.hparams.lr:.3g}, "
              f"{evaluation.params:,} params, {evaluation.seconds:.0f} s)", flush=True)
        future.set_result(evaluation)
        return future

    run_loop(strategy, submit, trials=args.trials)
    best = max((e for e in results if e.ok), key=lambda e: e.val_acc)
    cell = next(n for n in best.candidate.arch.nodes if n.op == "cell")
    return cell.attr_dict, best.val_acc


def fit(model: nn.Module, data: TrainData, args: argparse.Namespace, seed: int) -> dict:
    """The one recipe: test accuracy at the epoch of best validation accuracy."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs)
    generator = torch.Generator().manual_seed(seed)
    best = {"val_acc": -1.0}
    started = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(data.y_train), generator=generator)
        for batch in order.split(64):
            loss = nn.functional.cross_entropy(model(data.x_train[batch]), data.y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        schedule.step()
        val, test = accuracy(model, data.x_val, data.y_val), accuracy(model, data.x_test, data.y_test)
        if val > best["val_acc"]:
            best = {"val_acc": val, "test_acc": test, "epoch": epoch + 1}
    best["seconds"] = round(time.perf_counter() - started, 1)
    best["params"] = sum(p.numel() for p in model.parameters())
    return best


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return sum((model(xb).argmax(1) == yb).sum().item() for xb, yb in zip(x.split(512), y.split(512))) / len(y)


def compare(name: str, source: str, args: argparse.Namespace) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"nas-bench-rnn-{name}-"))
    prepare(source, folder)
    data = load_data(folder, "cpu")
    print(f"\n{name} ({source}: {tuple(data.shape)}, {data.num_classes} classes): nas-rl searches cells", flush=True)
    attrs, search_val = search_best_cell(data, args)
    attrs = {**attrs, "units": args.hidden}
    print(f"  best cell: {cell_spec(attrs).describe()}")
    cell = Architecture((Node.make("input"), Node.make("cell", [0], **attrs), Node.make("head", [1])))
    channels = data.shape[0]
    runs: dict[str, list[dict]] = {"searched cell": [], "LSTM": [], "GRU": []}
    for seed in args.seeds:
        models = {"searched cell": build(cell, data.shape, data.num_classes, seed=seed),
                  "LSTM": TorchRNN(nn.LSTM, channels, args.hidden, data.num_classes),
                  "GRU": TorchRNN(nn.GRU, channels, args.hidden, data.num_classes)}
        for model_name, model in models.items():
            result = fit(model, data, args, seed)
            runs[model_name].append(result)
            print(f"  seed {seed} {model_name:>13}: test {result['test_acc']:.4f} (val {result['val_acc']:.4f}, "
                  f"epoch {result['epoch']}, {result['params']:,} params, {result['seconds']:.0f} s)", flush=True)
    means = {m: statistics.mean(r["test_acc"] for r in rs) for m, rs in runs.items()}
    print("  mean test: " + ", ".join(f"{m} {v:.4f}" for m, v in means.items())
          + f"; searched cell >= LSTM: {means['searched cell'] >= means['LSTM']}")
    return {"source": source, "cell": attrs, "search_val_acc": search_val, "runs": runs, "mean_test": means}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=100, help="adding problem sequence length")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--search-epochs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--space", default=str(ROOT / "spaces/rnn-cell.yaml"), help="the cell space nas-rl searches")
    parser.add_argument("--only", choices=["adding", "mnist1d"], help="one data set instead of both")
    parser.add_argument("--out", default="bench/results/rnn_cells.json")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(2)
    started = time.perf_counter()
    sources = {"adding": f"adding:{args.length}", "mnist1d": "mnist1d"}
    names = [args.only] if args.only else list(sources)
    results: dict = {"config": {k: v for k, v in vars(args).items()}}
    results.update({name: compare(name, sources[name], args) for name in names})
    results["seconds"] = round(time.perf_counter() - started)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    print(f"\nsearched cell >= LSTM on {' and '.join(names)}: "
          f"{all(results[d]['mean_test']['searched cell'] >= results[d]['mean_test']['LSTM'] for d in names)}"
          f"; {results['seconds']} s in all")


if __name__ == "__main__":
    main()
