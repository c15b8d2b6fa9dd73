"""Servable models: logging a trained network as an MLflow model, loading it back, registering it.

Apart from the rest of the store because model logging and the Model Registry read MLflow's
process-global tracking URI instead of taking a client, so every call here points that URI at
this store for its duration (_global_tracking_uri).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow

from nas.lineage.connection import LineageError, StoreConnection
from nas.lineage.layout import WEIGHTS_FILE

if TYPE_CHECKING:
    import numpy as np

    from nas.build import Ensemble, Network

MODEL_NAME = "model"
ENSEMBLE_NAME = "ensemble"  # an Ensemble's name in the run that also holds the first member's `model`
NETWORK_FILE = "network.json"  # a logged model's architecture, input shape and number of classes
SERVING_CODE = Path(__file__).with_name("serving.py")  # the model's code: MLflow runs it by path
CODE_MODEL_LOADER = "mlflow.pyfunc.loaders.code_model"  # how MLflow loads a pyfunc model from code
CHAMPION = "champion"  # the registry alias of the model the latest pipeline chose
MODEL_TAG = "nas.model_uri"  # a run's tag naming the model logged from its network
ENSEMBLE_TAG = "nas.ensemble_uri"  # the first final run's tag naming the ensemble of the final runs
ENSEMBLE_OF_TAG = "nas.ensemble_of"  # the final runs (ids, comma-separated) that ensemble averages


class StoreModels(StoreConnection):
    """Logged and registered models of the store's runs."""

    def model_source(self, run_id: str) -> str | None:
        """The trial whose network `log_model` stored in this run, if any (tag nas.model_of)."""
        return self._get_run(run_id).data.tags.get("nas.model_of")

    def log_model(self, run_id: str, model: Network | Ensemble, input_example: np.ndarray,
                  source_run_id: str | None = None) -> str:
        """Log a servable copy of model (a network of nas.build) into run_id; returns its models:/ URI.

        The run's tag nas.model_uri names it; an Ensemble is logged as `ensemble` beside the
        run's own `model`, and its tag is nas.ensemble_uri.

        A pyfunc model from code (serving.py) whose artifacts are data: the architecture as
        JSON and the weights as safetensors. Nothing in it is a pickle: the only code that
        loading runs is the model's serving.py, readable in its folder, and a network trained
        on CUDA loads on any machine.
        """
        import torch
        from mlflow.models import Model, infer_signature
        from safetensors.torch import save_file

        from nas.build import Ensemble, Network

        if not isinstance(model, (Network, Ensemble)):
            raise TypeError(f"log_model takes a network of nas.build.build, not a {type(model).__name__}: its "
                            "architecture is what the logged model rebuilds.")
        self._get_run(run_id)
        with torch.no_grad():
            probabilities = torch.softmax(model(torch.as_tensor(input_example)).float(), dim=1).numpy()
        signature = infer_signature(input_example, probabilities)  # what serving.NetworkModel.predict returns
        spec = {"architecture": model.arch.to_json(), "input_shape": list(model.plan.input_shape),
                "num_classes": model.plan.num_classes}
        name, tag = MODEL_NAME, MODEL_TAG
        if isinstance(model, Ensemble):
            spec["members"] = len(model.members)
            name, tag = ENSEMBLE_NAME, ENSEMBLE_TAG
        with tempfile.TemporaryDirectory(prefix="nas-model-") as folder:
            network, weights = Path(folder) / NETWORK_FILE, Path(folder) / WEIGHTS_FILE
            network.write_text(json.dumps(spec))
            # Copies on the CPU: safetensors refuses tensors on other devices or sharing storage.
            save_file({k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()},
                      str(weights))
            # Under the write lock: Model.log writes to the database too, through its own client.
            with self._writing() as client, _global_tracking_uri(self.tracking_uri):
                # Created here so that the model lands in this experiment: Model.log would
                # otherwise file it under whatever experiment the process-global state names.
                logged = client.create_logged_model(self.experiment_id, name=name, source_run_id=run_id)
                # Model.log rather than mlflow.pyfunc.log_model: only it takes the run to log into
                # (threads have no active run).
                info = Model.log(
                    artifact_path=None,
                    name=name,
                    flavor=mlflow.pyfunc,
                    model_id=logged.model_id,
                    run_id=run_id,
                    python_model=str(SERVING_CODE),
                    artifacts={NETWORK_FILE: str(network), WEIGHTS_FILE: str(weights)},
                    input_example=input_example,
                    signature=signature,
                    # Explicit, because inferring them costs seconds; the local "+cpu" tag of a
                    # wheel is not installable from PyPI.
                    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                                      f"safetensors=={version('safetensors')}"],
                )
        tags = {tag: info.model_uri}
        if source_run_id is not None:
            tags["nas.model_of"] = source_run_id
        self._set_tags(run_id, tags)
        return info.model_uri

    def log_ensemble(self, run_ids: list[str], input_example: np.ndarray) -> str:
        """The models logged in run_ids (seeds of one architecture) averaged as one model, logged
        into the first run under the tag nas.ensemble_uri; its models:/ URI (one run: its own model).

        Logged once: a rerun over the same runs finds it by the tag nas.ensemble_of.
        """
        from nas.build import Ensemble

        tags = self._get_run(run_ids[0]).data.tags
        if len(run_ids) == 1:
            return tags[MODEL_TAG]
        members = ",".join(run_ids)
        if tags.get(ENSEMBLE_OF_TAG) == members and ENSEMBLE_TAG in tags:
            return tags[ENSEMBLE_TAG]
        ensemble = Ensemble([self.load_model(self._get_run(r).data.tags[MODEL_TAG]) for r in run_ids])
        uri = self.log_model(run_ids[0], ensemble, input_example, source_run_id=run_ids[0])
        self._set_tags(run_ids[0], {ENSEMBLE_OF_TAG: members})
        return uri

    def load_model(self, model_uri: str) -> Network | Ensemble:
        """The network (or ensemble) of a model that log_model logged, on the CPU in eval mode.

        Rebuilt by this installed package from the model's data alone, `network.json` and the
        safetensors weights: the model's stored loader (serving.py) is never run here, nor is
        anything unpickled, so a tampered store can change numbers but run no code. A model of
        another kind (a pickle, mlflow.pytorch's format, which this project logged before) is
        refused. `mlflow.pyfunc.load_model` loads the same model by running its serving.py:
        that is for users who trust the store.
        """
        from mlflow.models import Model

        with tempfile.TemporaryDirectory(prefix="nas-model-") as folder, \
                _global_tracking_uri(self.tracking_uri):
            local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=folder)).resolve()
            pyfunc = Model.load(str(local)).flavors.get(mlflow.pyfunc.FLAVOR_NAME, {})
            stored = pyfunc.get("artifacts", {})
            if pyfunc.get("loader_module") != CODE_MODEL_LOADER or not {NETWORK_FILE, WEIGHTS_FILE} <= set(stored):
                raise LineageError(f"the model {model_uri} is not one that `LineageStore.log_model` logs (a "
                                   "pyfunc model from code with safetensors weights) and may hold a pickle, "
                                   "which this project never loads; log the network again: re-run `nas "
                                   "refine` (or the search) with this version of nas.")
            network, weights = (_inside(local, stored[name].get("path", ""), model_uri)
                                for name in (NETWORK_FILE, WEIGHTS_FILE))
            return rebuild(network, weights)

    def register(self, model_uri: str, name: str, source_run_id: str, tags: dict[str, str],
                 alias: str = CHAMPION) -> str:
        """Put a logged model in the Model Registry under `name` and point `alias` at it; its version number.

        Registering the same model again returns the existing version, so a repeated
        pipeline does not pile up identical versions. Users load `models:/NAME@champion`,
        which follows the latest pipeline's model without naming a version.
        """
        number = self._registered_version(name, model_uri)
        if number is None:
            version_tags = {**tags, "nas.source_run": source_run_id}
            with self._writing(), _global_tracking_uri(self.tracking_uri), _quiet_logger("mlflow"):
                number = str(mlflow.register_model(model_uri, name, tags=version_tags).version)
        with self._writing() as client:
            client.set_registered_model_alias(name, alias, number)
        return number

    def _registered_version(self, name: str, model_uri: str) -> str | None:
        with self._writing() as client:
            for found in client.search_model_versions(f"name = '{name}'"):
                if found.source == model_uri:
                    return str(found.version)
        return None


def rebuild(network_file: Path, weights_file: Path) -> Network | Ensemble:
    """A logged model's network, from its `network.json` and safetensors weights, on the CPU in eval mode."""
    from safetensors.torch import load_file

    from nas.build import Ensemble, build
    from nas.space.architecture import Architecture

    spec = json.loads(network_file.read_text())
    arch = Architecture.from_json(spec["architecture"])  # validated: an invalid graph is refused, never run
    members = [build(arch, spec["input_shape"], spec["num_classes"]) for _ in range(spec.get("members", 1))]
    model = Ensemble(members) if "members" in spec else members[0]
    model.load_state_dict(load_file(str(weights_file), device="cpu"))
    return model.eval()


def _inside(folder: Path, relative: str, model_uri: str) -> Path:
    """A file the model's record names, refused unless it lies inside the model's own folder."""
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder) or not path.is_file():
        raise LineageError(f"the model {model_uri} names the file '{relative}', which is not a file of the "
                           "model; the store was edited by hand. Log the network again (re-run `nas refine`).")
    return path


@contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's process-global tracking URI at uri for the duration.

    Model.log takes no client or URI: it reads the global one. Restores both
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
