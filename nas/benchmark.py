"""The project's own tabular benchmark: every network of a finite space trained once, looked up ever after.

NAS-Bench and HPOBench compare search methods by answering trials from a table of
results measured in advance, so a thousand-trial search takes seconds and twenty seeds of
every method fit in a coffee break. `build_rows` trains each network of a space's grid at
increasing fidelities (epochs), each fidelity continuing the last one's checkpoint as
Hyperband's promotions do, and keeps one row per (network, fidelity, seed): the sentence,
its encoding, validation and test accuracy, the per-epoch curves, size and training time.
`BenchmarkTable` reads such a Parquet table and answers a strategy's candidates:

- at a stored fidelity, with that row;
- at any other budget up to the largest fidelity, from the largest fidelity's curve:
  a shorter budget trains a prefix of the longer run (the learning-rate schedule spans
  the largest fidelity), so its validation accuracy after e epochs is exact; its test
  accuracy was not measured, and its time is the longer run's, pro rata;
- anything else (a longer budget, a network outside the grid built by hand) as a failed
  trial that says so. The table's space admits only the grid's networks, so mutations and
  controllers propose nothing a lookup cannot answer.

A search of seed s sees the rows of one of the table's seeds (s modulo their number), as
a real search sees one training of each network; regret is measured on scores averaged
over all the table's seeds (NAS-Bench-101's protocol), so one seed's luck does not decide it.
A search that finds its seed's validation optimum still has a test regret, `floor`: the
gap between that network and the test-best, which a small table's searches reach early.

Weight inheritance and transfer are not simulated: a lookup answers as if the network
trained from scratch. The table records which data and seeds it was built on, so a result
is never looked up for other data.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from nas.data import DataError
from nas.loop import LoopOutcome, run_loop
from nas.space import Architecture, HParams, SearchSpace
from nas.strategies.base import proposal_key
from nas.trial import Budget, Candidate, Evaluation, TrialSetting, TrialStatus

META_KEY = b"nas.benchmark"


class BenchmarkError(DataError):
    """A table that cannot be read, or a search of it that cannot run (a user error: the CLI prints it alone)."""


@dataclass(frozen=True)
class BenchmarkMeta:
    """What a table was built from: enough to rebuild its space and to refuse other data."""

    space: dict[str, Any]  # the space file's content, so a table stands alone
    data: str  # the data source, e.g. "mnist1d"
    data_fingerprint: str
    shape: tuple[int, ...]
    classes: int
    fidelities: tuple[int, ...]  # epochs, increasing
    seeds: tuple[int, ...]

    def bound_space(self) -> SearchSpace:
        space = SearchSpace.from_dict(self.space, f"benchmark space '{self.space.get('name')}'")
        return space.bind(self.shape, self.classes).with_hparams(epochs=max(self.fidelities))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> BenchmarkMeta:
        return BenchmarkMeta(**{**data, "shape": tuple(data["shape"]), "fidelities": tuple(data["fidelities"]),
                                "seeds": tuple(data["seeds"])})


# ---- building ------------------------------------------------------------------------

def networks(space: SearchSpace) -> list[tuple[Architecture, HParams]]:
    """The grid the table covers, in the space's fixed enumeration order."""
    return list(space.enumerate())


def build_rows(space: SearchSpace, grid: Iterable[tuple[Architecture, HParams]], data: Any,
               fidelities: tuple[int, ...], seed: int, device: str = "cpu") -> Iterator[dict[str, Any]]:
    """One row per network and fidelity, each fidelity continuing the previous one's run.

    `data` is a `nas.train.TrainData`; `space` is bound, its epochs the largest fidelity.
    """
    from nas.train import train  # torch is needed to build a table, not to read one

    for arch, hparams in grid:
        checkpoint, spent = None, 0.0
        for fidelity in fidelities:
            outcome = train(Candidate(arch, hparams, Budget(fidelity)), data, seed=seed, device=device,
                            resume=checkpoint, max_params=space.max_params)
            spent += outcome.evaluation.seconds
            yield _row(space, outcome.evaluation, fidelity, seed, spent)
            checkpoint = outcome.checkpoint
            if checkpoint is None and fidelity != fidelities[-1]:  # it failed: the longer runs fail alike
                for longer in fidelities[fidelities.index(fidelity) + 1:]:
                    yield _row(space, outcome.evaluation, longer, seed, spent)
                break


def _row(space: SearchSpace, e: Evaluation, fidelity: int, seed: int, seconds: float) -> dict[str, Any]:
    arch, hparams = e.candidate.arch, e.candidate.hparams
    return {
        "key": proposal_key(arch, hparams), "arch_id": arch.arch_id,
        "arch": json.dumps(arch.to_json(), sort_keys=True), "hparams": json.dumps(hparams.to_json(), sort_keys=True),
        "encoding": space.encode(arch, hparams), "fidelity": fidelity, "seed": seed, "status": e.status.value,
        "reason": e.reason, "val_acc": e.val_acc, "val_loss": e.val_loss, "test_acc": e.test_acc,
        "val_curve": list(e.val_accs), "train_loss": list(e.train_loss), "params": e.params, "flops": e.flops,
        "seconds": seconds,
    }


def write_table(rows: list[dict[str, Any]], meta: BenchmarkMeta, path: str | Path) -> None:
    """Rows as a Parquet table, with `meta` in the schema's metadata; written atomically."""
    path = Path(path)
    table = pa.Table.from_pylist(rows)
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta.to_json()).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    pq.write_table(table, partial)
    partial.replace(path)


def build_part(meta: BenchmarkMeta, data_dir: str | Path, seed: int, start: int, stop: int,
               path: str | Path) -> int:
    """Networks [start, stop) of the grid at every fidelity, written to the Parquet file `path`;
    a part already written is kept, so an interrupted build resumes where it stopped."""
    from nas.train import load_data

    path = Path(path)
    if not path.exists():
        space = meta.bound_space()
        data = load_data(data_dir, "cpu")
        if data.fingerprint != meta.data_fingerprint:
            raise BenchmarkError(f"the data in {data_dir} changed while the table was built; build it again.")
        rows = list(build_rows(space, networks(space)[start:stop], data, meta.fidelities, seed))
        write_table(rows, meta, path)
    return pq.read_metadata(path).num_rows


def read_rows(path: str | Path) -> tuple[BenchmarkMeta, list[dict[str, Any]]]:
    path = Path(path)
    try:
        table = pq.read_table(path)
        meta = BenchmarkMeta.from_json(json.loads(table.schema.metadata[META_KEY]))
    except FileNotFoundError:
        raise BenchmarkError(f"no benchmark table at {path}; build one with `nas bench build --out {path}` "
                             "(bench/mnist1d.parquet ships with the project).") from None
    except (pa.ArrowException, KeyError, TypeError, ValueError) as error:
        raise BenchmarkError(f"{path} is not a benchmark table of this project ({type(error).__name__}: "
                             f"{error}); rebuild it with `nas bench build --out {path}`.") from None
    return meta, table.to_pylist()


# ---- looking up ----------------------------------------------------------------------

class BenchmarkTable:
    """A built table, answering candidates by lookup (see the module docstring).

        >>> table = BenchmarkTable("bench/mnist1d.parquet")                 # doctest: +SKIP
        >>> outcome = table.search("random", seed=0, trials=100)            # doctest: +SKIP
        >>> round(table.regret_curve(outcome.evaluations)[-1], 4)           # doctest: +SKIP
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.meta, rows = read_rows(self.path)
        self.space = self.meta.bound_space().admitting(r["arch_id"] for r in rows)
        self.rows = {(r["key"], r["fidelity"], r["seed"]): r for r in rows}
        self.top = max(self.meta.fidelities)
        self._scores = {on: self._seed_means(f"{on}_acc") for on in ("test", "val")}

    def __len__(self) -> int:
        return len(self.rows) // (len(self.meta.fidelities) * len(self.meta.seeds))

    def table_seed(self, seed: int) -> int:
        """The table's seed that answers a search of seed `seed` (tables hold few)."""
        return self.meta.seeds[seed % len(self.meta.seeds)]

    def lookup(self, candidate: Candidate, seed: int = 0) -> Evaluation:
        """The candidate's recorded result, as if trained now (see the module docstring)."""
        seed = self.table_seed(seed)
        key, epochs = proposal_key(candidate.arch, candidate.hparams), candidate.budget.epochs
        trial_key = candidate.trial_key(TrialSetting(self.meta.data_fingerprint, seed))
        row = self.rows.get((key, epochs, seed)) or self.rows.get((key, self.top, seed))
        if row is None or epochs > self.top:
            reason = (f"not in the benchmark table {self.path.name} (its space '{self.space.name}' holds "
                      f"{len(self)} networks, trained up to {self.top} epochs)")
            return Evaluation(candidate, trial_key, status=TrialStatus.FAILED, reason=reason)
        if row["status"] != TrialStatus.OK.value:
            return Evaluation(candidate, trial_key, status=TrialStatus.FAILED, reason=row["reason"])
        exact = row["fidelity"] == epochs
        return Evaluation(
            candidate, trial_key, val_acc=row["val_acc"] if exact else row["val_curve"][epochs - 1],
            val_loss=row["val_loss"] if exact else None, test_acc=row["test_acc"] if exact else None,
            train_loss=row["train_loss"][:epochs], val_accs=row["val_curve"][:epochs], params=row["params"],
            flops=row["flops"], seconds=row["seconds"] * (1 if exact else epochs / row["fidelity"]),
            epochs_trained=epochs)

    def runner(self, seed: int = 0) -> Callable[[Candidate], Future[Evaluation]]:
        """A runner for `nas.loop.run_loop` whose trials finish the moment they are submitted."""
        def submit(candidate: Candidate) -> Future[Evaluation]:
            future: Future[Evaluation] = Future()
            future.set_result(self.lookup(candidate, seed))
            return future
        return submit

    def search(self, strategy: str, seed: int = 0, trials: int = 100, concurrency: int = 1,
               asynchronous: bool = False, **options: Any) -> LoopOutcome:
        """A search of `trials` lookups with the named strategy (options as for
        `nas.strategies.make_search`, e.g. scheduler="hyperband"), budget the largest fidelity."""
        from nas.strategies import make_search, strategy_class

        try:
            if "scorer" in inspect.signature(strategy_class(strategy)).parameters:
                raise ValueError(f"strategy '{strategy}' ranks networks with weights trained on the data, which a "
                                 "benchmark table does not hold; search the table with another strategy.")
            found = make_search(strategy, self.space, Budget(self.top), seed=seed, trials=trials,
                                concurrency=concurrency, **options)
        except ValueError as error:  # an unknown strategy, an option out of its range
            raise BenchmarkError(str(error)) from None
        return run_loop(found, self.runner(seed), trials=trials, concurrency=concurrency, asynchronous=asynchronous)

    def scores(self, on: str = "test") -> dict[str, float]:
        """Each network's test (or validation) accuracy at the largest fidelity, averaged over the
        table's seeds (as NAS-Bench-101 reports): one seed's score carries that seed's luck, and
        a search that picks by it should be judged by what the network does on average."""
        if on not in self._scores:
            raise ValueError(f"on={on!r}: accuracy is measured on 'test' or 'val'.")
        return self._scores[on]

    def _seed_means(self, column: str) -> dict[str, float]:
        measured: dict[str, list[float]] = {}
        for (key, fidelity, _), row in self.rows.items():
            if fidelity == self.top and row[column] is not None:
                measured.setdefault(key, []).append(row[column])
        return {key: sum(values) / len(values) for key, values in measured.items()
                if len(values) == len(self.meta.seeds)}

    def best(self, on: str = "test") -> float:
        """The best seed-averaged test (or validation) accuracy of any network at the largest fidelity."""
        return max(self.scores(on).values())

    def score_of(self, evaluation: Evaluation, on: str = "test") -> float | None:
        """The seed-averaged test (or validation) accuracy of the evaluation's network at the largest fidelity."""
        return self.scores(on).get(proposal_key(evaluation.candidate.arch, evaluation.candidate.hparams))

    def regret_curve(self, evaluations: list[Evaluation], on: str = "test", seed: int = 0) -> list[float]:
        """After each trial, the regret of the network with the best validation accuracy so far.

        `on="test"`: the table's best seed-averaged test accuracy minus that network's (the
        user's view: they pick by validation and live with the network's expected test
        score). `on="val"`: the best validation accuracy of the table seed the search of
        `seed` saw, minus that network's (the search's own view: how fast it finds the top
        of what it optimises). Picking one seed's validation argmax is not picking the test
        argmax, so the test regret of a perfect search is not zero but `floor(seed)`.
        """
        reference = self.seen_val(seed) if on == "val" else self.scores(on)  # scores() refuses any other `on`
        best, curve, chosen = max(reference.values()), [], None
        for evaluation in evaluations:
            if evaluation.ok and (chosen is None or evaluation.rank_key > chosen.rank_key):
                chosen = evaluation
            key = proposal_key(chosen.candidate.arch, chosen.candidate.hparams) if chosen is not None else None
            score = reference.get(key)
            curve.append(best - score if score is not None else best)
        return curve

    def seen_val(self, seed: int = 0) -> dict[str, float]:
        """Each network's validation accuracy at the largest fidelity as a search of `seed` sees it."""
        return {key: row["val_acc"] for key, row in self._seen_rows(seed).items()}

    def floor(self, seed: int = 0) -> float:
        """The test regret of a perfect search of `seed`: of the network it would pick among all it
        can see (by validation accuracy, then loss, as `Evaluation.rank_key`). Below it, a search
        scores better only by stopping short of what it optimises."""
        seen = self._seen_rows(seed)
        pick = max(seen, key=lambda key: (seen[key]["val_acc"], -seen[key]["val_loss"]))
        return self.best() - self.scores()[pick]

    def _seen_rows(self, seed: int) -> dict[str, dict[str, Any]]:
        table_seed = self.table_seed(seed)
        return {key: row for (key, fidelity, row_seed), row in self.rows.items()
                if fidelity == self.top and row_seed == table_seed and row["val_acc"] is not None}
