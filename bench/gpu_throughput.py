"""GPU throughput: one MNIST-1D random search on the CPU and on CUDA, trials per hour on each.

    python bench/gpu_throughput.py [--trials 200] [--epochs 10] [--device both|cpu|cuda]
                                   [--concurrency 8,16,32] [--cpu-trials 200] [--data-dir DIR]
                                   [--row-seconds S] [--save FILE.json] [--with OTHER.json]

The search is the product's loop (`nas.loop.run_loop`, asynchronous) with random search
over the auto space's candidates, trained in-process by `nas.train` (no Prefect, no MLflow,
so it runs on a bare GPU machine). The CPU row is the default of a 2-core machine: two
trials at once, one torch thread each (pinned to two cores where the machine has more).
Each CUDA row runs the same search with N trial threads sharing the GPU, each trial on its
own stream with CUDA graphs; two ablations follow on the first --ablation-trials candidates:
graphs off at the largest N, and the old path (one trial at a time, no graphs). GPU
utilisation is sampled with NVML every 0.1 s during each CUDA row.

`--save` keeps the rows as JSON; `--with` adds rows saved on another machine, so the GPU
machine's rows can be set against this project's 2-core CPU (`--device cpu --with
gpu.json` here). `--row-seconds` stops asking for trials after that long (a row then says
how many it trained). Without CUDA the script measures the CPU and says so.

Targets (the GPU issue): trials per hour on CUDA >= 30x the 2-core CPU's, GPU utilisation
>= 70% on average, and the found networks' accuracy unchanged within noise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from nas.data import prepare, read_meta  # noqa: E402
from nas.loop import run_loop, time_limit  # noqa: E402
from nas.space import SearchSpace, resolve_space  # noqa: E402
from nas.strategies import RandomSearch  # noqa: E402
from nas.train import TrainData, load_data, train  # noqa: E402
from nas.trial import Budget, Evaluation  # noqa: E402

CPU_CORES = 2  # the machine this project is developed on


@dataclass
class Row:
    name: str
    device: str
    concurrency: int
    cuda_graphs: bool
    trials: int
    failed: int
    seconds: float
    best_val: float
    best_test: float
    gpu_util: float | None = None
    accs: dict[str, float] | None = None  # val accuracy by candidate, to compare devices

    @property
    def per_hour(self) -> float:
        return 3600 * self.trials / self.seconds


class Utilisation:
    """Mean GPU utilisation (NVML's percent of time a kernel ran) while the block runs."""

    def __init__(self, enabled: bool) -> None:
        self.samples: list[int] = []
        self.enabled = enabled
        self._stop = threading.Event()

    def __enter__(self) -> Utilisation:
        if not self.enabled:
            return self
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        except Exception as error:  # no NVML: the row says n/a
            print(f"(GPU utilisation not sampled: {error})")
            return self

        def sample() -> None:
            while not self._stop.wait(0.1):
                self.samples.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.samples) if self.samples else None


class Captures(logging.Handler):
    """Counts the trials whose training step became a CUDA graph (nas.gpu logs each capture)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.captured = self.eager = 0
        logger = logging.getLogger("nas.gpu")
        logger.setLevel(logging.DEBUG)
        logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.eager += 1
            if self.eager == 1:
                print(f"  first trial left eager: {record.getMessage()}")
        else:
            self.captured += 1

    def __str__(self) -> str:
        captured, self.captured, eager, self.eager = self.captured, 0, self.eager, 0
        return f"; {captured} steps captured, {eager} left eager" if captured or eager else ""


CAPTURES = Captures()


def search(name: str, space: SearchSpace, data: TrainData, device: str, concurrency: int, trials: int,
           epochs: int, cuda_graphs: bool = True, threads: int = 1, seconds: float | None = None) -> Row:
    """The random search of seed 0 for `trials` trials, `concurrency` at a time; its row."""
    def run(candidate):
        torch.set_num_threads(threads)
        return train(candidate, data, device=device, cuda_graphs=cuda_graphs).evaluation

    strategy = RandomSearch(space, Budget(epochs, None), seed=0)
    with ThreadPoolExecutor(concurrency) as pool, Utilisation(device == "cuda") as util:
        started = time.perf_counter()
        results = run_loop(strategy, lambda c: pool.submit(run, c), trials=trials, concurrency=concurrency,
                           asynchronous=True, stop=time_limit(seconds) if seconds else None).evaluations
        seconds = time.perf_counter() - started
    ok = [e for e in results if e.ok]
    best = max(ok, key=lambda e: e.val_acc) if ok else None
    row = Row(name, device, concurrency, cuda_graphs, len(results), len(results) - len(ok), seconds,
              best.val_acc if best else 0.0, (best.test_acc or 0.0) if best else 0.0,
              util.mean, {_key(e): e.val_acc for e in ok})
    util_text = f", GPU busy {row.gpu_util:.0f}%" if row.gpu_util is not None else ""
    print(f"{name:<34} {row.trials:>4} trials in {seconds:7.1f} s = {row.per_hour:>8,.0f} trials/hour "
          f"({row.failed} failed; best val {row.best_val:.4f}, its test {row.best_test:.4f}{util_text}{CAPTURES})",
          flush=True)
    return row


def _key(e: Evaluation) -> str:
    return f"{e.arch_id}:{json.dumps(e.candidate.hparams.to_json(), sort_keys=True)}"


def cpu_row(space: SearchSpace, data_dir: Path, trials: int, epochs: int, seconds: float | None) -> Row:
    """The 2-core machine's default: two trials at once, one torch thread each."""
    cores = os.sched_getaffinity(0)
    if len(cores) > CPU_CORES:  # a bigger machine stands in for the 2-core one
        os.sched_setaffinity(0, sorted(cores)[:CPU_CORES])
    try:
        return search(f"cpu, {CPU_CORES} cores, 2 at once", space, load_data(data_dir, "cpu"), "cpu", 2, trials,
                      epochs, seconds=seconds)
    finally:
        os.sched_setaffinity(0, cores)


def accuracy_agreement(a: Row, b: Row) -> str:
    common = sorted(set(a.accs or {}) & set(b.accs or {}))
    if not common:
        return "no candidate trained on both devices"
    gaps = [abs(a.accs[k] - b.accs[k]) for k in common]
    mean_a, mean_b = (statistics.fmean(r.accs[k] for k in common) for r in (a, b))
    return (f"{len(common)} candidates on both: mean val {mean_a:.4f} ({a.device}) vs {mean_b:.4f} ({b.device}), "
            f"mean |difference| {statistics.fmean(gaps):.4f}, largest {max(gaps):.4f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--device", choices=["both", "cpu", "cuda"], default="both")
    parser.add_argument("--concurrency", default="8,16,32", help="trial threads on the GPU, one row each")
    parser.add_argument("--cpu-trials", type=int, help="trials of the CPU row (default: --trials)")
    parser.add_argument("--ablation-trials", type=int, default=48)

    parser.add_argument("--data-dir", help="a prepared MNIST-1D folder (default: prepare one, which needs mnist1d)")
    parser.add_argument("--row-seconds", type=float, help="stop asking for trials after this long, per row")
    parser.add_argument("--save", help="write the rows as JSON here")
    parser.add_argument("--with", dest="others", action="append", default=[],
                        help="rows this script saved on another machine, to compare with")
    args = parser.parse_args()

    if args.data_dir:
        data_dir = Path(args.data_dir)
        meta = read_meta(data_dir)
    else:
        data_dir = Path("data/mnist1d").resolve()
        meta = prepare("mnist1d", data_dir)
    space_file, note = resolve_space("auto", tuple(meta.shape))
    space = SearchSpace.load(space_file).bind(tuple(meta.shape), len(meta.classes)).with_hparams(epochs=args.epochs)
    print(f"MNIST-1D random search, {args.trials} trials x {args.epochs} epochs, {note}; torch {torch.__version__}")
    has_cuda = torch.cuda.is_available()
    rows: list[Row] = []
    if args.device in ("both", "cpu"):
        rows.append(cpu_row(space, data_dir, args.cpu_trials or args.trials, args.epochs, args.row_seconds))
    if args.device in ("both", "cuda") and not has_cuda:
        print("no CUDA device visible to torch: the GPU rows are skipped on this machine.")
    elif args.device in ("both", "cuda"):
        print(f"device: {torch.cuda.get_device_name(0)}, {os.cpu_count()} CPU cores")
        data = load_data(data_dir, "cuda")
        # CUDA, cuDNN and cuBLAS load lazily: one short trial first, so the first row pays no start-up.
        search("cuda, warm-up", space, data, "cuda", 1, 1, 1)
        levels = [int(n) for n in args.concurrency.split(",")]
        for n in levels:
            rows.append(search(f"cuda, {n} at once, graphs", space, data, "cuda", n, args.trials, args.epochs,
                               seconds=args.row_seconds))
        few = min(args.ablation_trials, args.trials)
        if few:  # the same GPU without graphs, and as trials ran on it before
            rows.append(search(f"cuda, {max(levels)} at once, no graphs", space, data, "cuda", max(levels), few,
                               args.epochs, cuda_graphs=False, seconds=args.row_seconds))
            rows.append(search("cuda, 1 at a time, no graphs (before)", space, data, "cuda", 1, min(few, 16),
                               args.epochs, cuda_graphs=False, seconds=args.row_seconds))
    if args.save:
        Path(args.save).write_text(json.dumps([asdict(r) for r in rows], indent=1))
    for other in args.others:
        rows += [Row(**r) for r in json.loads(Path(other).read_text())]
    summarise(rows)
    return 0


def summarise(rows: list[Row]) -> None:
    """The fastest full CUDA row against the fullest CPU row: speed-up, utilisation, accuracy."""
    cpu = max((r for r in rows if r.device == "cpu"), key=lambda r: r.trials, default=None)
    gpu = [r for r in rows if r.device == "cuda"]
    if not gpu:
        return
    most = max(r.trials for r in gpu)
    top = max((r for r in gpu if r.trials == most), key=lambda r: r.per_hour)
    busy = f"{top.gpu_util:.0f}%" if top.gpu_util is not None else "n/a"
    print(f"\nfastest CUDA row: {top.name}: {top.per_hour:,.0f} trials/hour, GPU busy {busy} on average "
          "(target >= 70%)")
    if cpu is not None:
        print(f"speed-up over '{cpu.name}' ({cpu.per_hour:,.0f} trials/hour): {top.per_hour / cpu.per_hour:.1f}x "
              f"(target >= 30x)\naccuracy: best val {cpu.best_val:.4f} (cpu) vs {top.best_val:.4f} (cuda); "
              + accuracy_agreement(cpu, top))


if __name__ == "__main__":
    sys.exit(main())
