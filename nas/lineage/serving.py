"""The served form of a network: an MLflow pyfunc "model from code" that holds no pickle.

`StoreModels.log_model` logs this file as the model's code, and `mlflow.pyfunc.load_model`
runs it by path (so the package never imports it): `set_model` below names the model.
Its artifacts are data: `network.json` (architecture, input shape, number of classes and,
for an ensemble of seeds, its number of members) and the weights as safetensors.
`load_context` rebuilds the network with `nas.lineage.models.rebuild`, so loading needs this
project installed, as a pytorch model needs torch. MLflow runs this file from the store when it
loads the model; this project's own loading path (`LineageStore.load_model`) never does.

    model = mlflow.pyfunc.load_model("models:/nas-digits@champion")
    probabilities = model.predict(x)                  # x: float32, (N, *input_shape)
    network = model.unwrap_python_model().model       # the torch module (Network or Ensemble), CPU, eval mode

`predict` takes a batch of examples prepared as `nas prepare` prepares them (standardised,
shaped like the model's input example) and returns class probabilities: float32 of shape
(N, num_classes), column i for class i of the prepared data's meta.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel
from mlflow.pyfunc.model import PythonModelContext

from nas.lineage.layout import WEIGHTS_FILE
from nas.lineage.models import NETWORK_FILE, rebuild


class NetworkModel(PythonModel):
    """A network of `nas.build`, rebuilt from its architecture and weights."""

    def load_context(self, context: PythonModelContext) -> None:
        self.model = rebuild(Path(context.artifacts[NETWORK_FILE]), Path(context.artifacts[WEIGHTS_FILE]))

    def predict(self, context: PythonModelContext, model_input: np.ndarray,
                params: dict[str, Any] | None = None) -> np.ndarray:
        with torch.no_grad():
            logits = self.model(torch.as_tensor(np.asarray(model_input, dtype=np.float32)))
        return torch.softmax(logits.float(), dim=1).numpy()


set_model(NetworkModel())
