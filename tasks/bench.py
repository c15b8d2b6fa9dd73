"""Prefect task: train one slice of a benchmark table's grid (nas.benchmark.build_part)."""

from __future__ import annotations

from typing import Any

from prefect import task

from nas.benchmark import BenchmarkMeta, build_part
from nas.threads import using_threads


@task(name="bench-part", task_run_name="bench-seed{seed}-{start}", retries=0)
def train_part(meta: dict[str, Any], data_dir: str, seed: int, start: int, stop: int, path: str,
               threads: int) -> int:
    # The part file is the record: a rerun skips it, so no Prefect result cache is needed.
    with using_threads(threads):
        return build_part(BenchmarkMeta.from_json(meta), data_dir, seed, start, stop, path)
