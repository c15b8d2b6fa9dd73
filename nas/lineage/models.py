"""Servable models: logging a trained network as an MLflow model, loading it back, registering it.

Apart from the rest of the store because mlflow.pytorch and the Model Registry read MLflow's
process-global tracking URI instead of taking a client, so every call here points that URI at
this store for its duration (_global_tracking_uri).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow

from nas.lineage.connection import StoreConnection

if TYPE_CHECKING:
    import numpy as np
    import torch

MODEL_NAME = "model"
CHAMPION = "champion"  # the registry alias of the model the latest pipeline chose


class StoreModels(StoreConnection):
    """Logged and registered models of the store's runs."""

    def model_source(self, run_id: str) -> str | None:
        """The trial whose network `log_model` stored in this run, if any (tag nas.model_of)."""
        return self._get_run(run_id).data.tags.get("nas.model_of")

    def log_model(self, run_id: str, model: torch.nn.Module, input_example: np.ndarray,
                  source_run_id: str | None = None) -> str:
        """Log a servable copy of model into run_id; returns its models:/ URI.

        Pickle format, not MLflow's default pt2: torch.export fails on data-dependent control
        flow, bakes in train/eval mode and fixes size-1 batch dimensions, while pickle stores
        any module as it is. Its classes must be importable where it is loaded, so when the
        model uses this package's classes the package travels with it (code_paths).
        """
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        self._get_run(run_id)
        with torch.no_grad():
            logits = model(torch.as_tensor(input_example)).float().numpy()
        signature = infer_signature(input_example, logits)  # inputs: the example's shape; outputs: class logits
        package = Path(__file__).resolve().parents[1]  # nas/, the whole package: this file is nas/lineage/models.py
        uses_package = any(type(m).__module__.split(".")[0] == package.name for m in model.modules())
        # Under the write lock: log_model writes to the database too, through its own client.
        # Its warning about pickle restates the trade-off chosen above, on every search.
        with self._writing() as client, _global_tracking_uri(self.tracking_uri), \
                _quiet_logger("mlflow.pytorch"):
            # Created here so that the model lands in this experiment: log_model would
            # otherwise file it under whatever experiment the process-global state names.
            logged = client.create_logged_model(self.experiment_id, name=MODEL_NAME, source_run_id=run_id)
            info = mlflow.pytorch.log_model(
                model,
                name=MODEL_NAME,
                model_id=logged.model_id,
                run_id=run_id,
                input_example=input_example,
                signature=signature,
                # Explicit, because inferring them costs seconds; the local "+cpu" tag of a
                # wheel is not installable from PyPI.
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                serialization_format="pickle",
                code_paths=[str(package)] if uses_package else None,
            )
        tags = {"nas.model_uri": info.model_uri}
        if source_run_id is not None:
            tags["nas.model_of"] = source_run_id
        self._set_tags(run_id, tags)
        return info.model_uri

    def load_model(self, model_uri: str) -> torch.nn.Module:
        import mlflow.pytorch

        with _global_tracking_uri(self.tracking_uri), _quiet_logger("mlflow.pytorch"):
            return mlflow.pytorch.load_model(model_uri, map_location="cpu")

    def register(self, model_uri: str, name: str, source_run_id: str, tags: dict[str, str],
                 alias: str = CHAMPION) -> str:
        """Put a logged model in the Model Registry under `name` and point `alias` at it; its version number.

        Registering the same run's model again returns the existing version, so a repeated
        pipeline does not pile up identical versions. Users load `models:/NAME@champion`,
        which follows the latest pipeline's model without naming a version.
        """
        version = self._registered_version(name, source_run_id)
        if version is None:
            version_tags = {**tags, "nas.source_run": source_run_id}
            with self._writing(), _global_tracking_uri(self.tracking_uri), _quiet_logger("mlflow"):
                version = str(mlflow.register_model(model_uri, name, tags=version_tags).version)
        with self._writing() as client:
            client.set_registered_model_alias(name, alias, version)
        return version

    def _registered_version(self, name: str, source_run_id: str) -> str | None:
        with self._writing() as client:
            for version in client.search_model_versions(f"name = '{name}'"):
                if version.tags.get("nas.source_run") == source_run_id:
                    return str(version.version)
        return None


@contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's process-global tracking URI at uri for the duration.

    mlflow.pytorch.log_model takes no client or URI: it reads the global one. Restores both
    the global and $MLFLOW_TRACKING_URI (which set_tracking_uri overwrites) afterwards.
    """
    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    saved = mlflow.get_tracking_uri() if mlflow.tracking.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved)
        if saved_env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


@contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
