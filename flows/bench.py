"""The benchmark flow: train every network of a finite space at each fidelity and seed, and
store the results as one Parquet table (`nas bench build`, the `benchmark` stage of dvc.yaml).

The grid is cut into parts of PART_SIZE networks, each a task that writes its own
Parquet file next to the table; a killed build resumes at the first missing part, and a
changed space, data or fidelity gets a fresh folder of parts. Seeds are independent: a
table that gains a seed (`--seeds 0,1` after `--seeds 0`) keeps the rows of the seeds the
table at `out` already holds and trains only the new one.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger

from nas.benchmark import BenchmarkMeta, BenchmarkTable, networks, read_rows, write_table
from nas.config import DataConfig
from nas.data import DataMeta
from nas.ids import digest
from nas.progress import progress
from nas.threads import torch_threads
from tasks.bench import train_part
from tasks.prepare import prepare_data


PART_SIZE = 24  # networks per task: a killed build loses at most one part's training


@flow(name="nas-bench-build", log_prints=True)
def build_benchmark(space_file: str, source: str, out: str, fidelities: list[int], seeds: list[int]) -> dict[str, Any]:
    logger = get_run_logger()
    data_dir = DataConfig(source=source).resolved_dir(Path.cwd())
    data = DataMeta.from_json(prepare_data(source=source, out_dir=str(data_dir)))
    meta = BenchmarkMeta(space=yaml.safe_load(Path(space_file).read_text()), data=source,
                         data_fingerprint=data.fingerprint, shape=data.shape, classes=len(data.classes),
                         fidelities=tuple(sorted(fidelities)), seeds=tuple(seeds))
    size = len(networks(meta.bound_space()))
    out_path = Path(out)
    parts = out_path.parent / f".{out_path.name}.parts" / digest(replace(meta, seeds=()).to_json(), 12)
    parts.mkdir(parents=True, exist_ok=True)
    built = built_seeds(out_path, meta)
    logger.info("building %s: %d networks x fidelities %s x seeds %s on %s, %d networks per part in %s%s",
                out, size, list(meta.fidelities), list(seeds), source, PART_SIZE, parts,
                f"; seeds {sorted(built)} kept from the table there" if built else "")
    rows = []
    with progress(size * len(seeds), "benchmark", "network") as bar:
        for seed in seeds:
            if seed in built:
                rows += built[seed]
                bar.update(size)
                continue
            for start in range(0, size, PART_SIZE):
                stop = min(size, start + PART_SIZE)
                path = parts / f"seed{seed}-{start:05d}.parquet"
                train_part(meta.to_json(), str(data_dir), seed, start, stop, str(path), threads=torch_threads(1))
                rows += read_rows(path)[1]
                bar.update(stop - start)
    write_table(rows, meta, out_path)
    table = BenchmarkTable(out_path)
    summary = {"table": str(out_path), "networks": len(table), "rows": len(table.rows),
               "best_test_acc": table.best(),
               "train_seconds": sum(r["seconds"] for r in table.rows.values() if r["fidelity"] == table.top)}
    logger.info("wrote %s: %d networks, best test accuracy %.4f, %.0f s of training", out, len(table),
                summary["best_test_acc"], summary["train_seconds"])
    return summary


def built_seeds(out: Path, meta: BenchmarkMeta) -> dict[int, list[dict[str, Any]]]:
    """The rows per seed of a table already at `out` that was built like `meta` but for its seeds."""
    if not out.exists():
        return {}
    old, rows = read_rows(out)
    if replace(old, seeds=()) != replace(meta, seeds=()):
        return {}
    return {seed: [r for r in rows if r["seed"] == seed] for seed in old.seeds if seed in meta.seeds}
