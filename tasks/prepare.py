"""Prefect task: prepare a data source into Parquet splits (nas.data.prepare)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.context import TaskRunContext

from nas.data import prepare, source_fingerprint
from nas.ids import digest


def _prepare_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    # A user's file is part of the key by content, so editing it prepares the data again.
    return "prepare-" + digest({**parameters, "source_fp": source_fingerprint(parameters["source"])})


@task(name="prepare-data", cache_key_fn=_prepare_cache_key, persist_result=True, result_serializer="json")
def prepare_data(source: str, out_dir: str, label_column: str = "label", shape: list[int] | None = None,
                 seed: int = 0) -> dict[str, Any]:
    meta = prepare(source, out_dir, label_column=label_column, shape=tuple(shape) if shape else None, seed=seed)
    return meta.to_json()
