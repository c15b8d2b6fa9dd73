"""prefect-dask's task runner for trials (imported only when a search runs on Dask)."""

from __future__ import annotations

import contextlib
from typing import Any

import dask
from prefect_dask import DaskTaskRunner

from nas.cluster import GPU, declared_gpus


class TrialDaskRunner(DaskTaskRunner):
    """Where the cluster's workers declare GPUs as a resource (nas.cluster), each task asks for
    one: a worker trains one trial per GPU at a time, however many threads it has."""

    _one_per_gpu: bool | None = None  # asked of the scheduler at the first submission

    def submit(self, task: Any, parameters: dict[str, Any], wait_for: Any = None, dependencies: Any = None) -> Any:
        if self._one_per_gpu is None:
            self._one_per_gpu = declared_gpus(self.client) > 0
        with dask.annotate(resources={GPU: 1}) if self._one_per_gpu else contextlib.nullcontext():
            return super().submit(task, parameters, wait_for, dependencies)
