"""The benchmark flow: train every network of a finite space at each fidelity and seed, and
store the results as one Parquet table (`nas bench build`, the `benchmark` stage of dvc.yaml).

The grid is cut into parts of PART_SIZE networks, each a task that writes its own
Parquet file next to the table; a killed build resumes at the first missing part, and a
changed space, data, fidelity or seed gets a fresh folder of parts.
"""

from __future__ import annotations

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
    parts = out_path.parent / f".{out_path.name}.parts" / digest(meta.to_json(), 12)
    parts.mkdir(parents=True, exist_ok=True)
    logger.info("building %s: %d networks x fidelities %s x seeds %s on %s, %d networks per part in %s",
                out, size, list(meta.fidelities), list(seeds), source, PART_SIZE, parts)
    paths = []
    with progress(size * len(seeds), "benchmark", "network") as bar:
        for seed in seeds:
            for start in range(0, size, PART_SIZE):
                stop = min(size, start + PART_SIZE)
                paths.append(parts / f"seed{seed}-{start:05d}.parquet")
                train_part(meta.to_json(), str(data_dir), seed, start, stop, str(paths[-1]),
                           threads=torch_threads(1))
                bar.update(stop - start)
    write_table([row for path in paths for row in read_rows(path)[1]], meta, out_path)
    table = BenchmarkTable(out_path)
    summary = {"table": str(out_path), "networks": len(table), "rows": len(table.rows),
               "best_test_acc": table.best(),
               "train_seconds": sum(r["seconds"] for r in table.rows.values() if r["fidelity"] == table.top)}
    logger.info("wrote %s: %d networks, best test accuracy %.4f, %.0f s of training", out, len(table),
                summary["best_test_acc"], summary["train_seconds"])
    return summary
