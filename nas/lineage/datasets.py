"""A prepared data set as an MLflow dataset input, so the UI's Dataset column and filters work.

Every trial run names the data it was trained on: name, digest (the data fingerprint),
where it came from, the tensor schema of features and labels, and the split sizes.
"""

from __future__ import annotations

import json

import numpy as np
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.types import Schema, TensorSpec

from nas.data import DataMeta

CONTEXT_TAG = "mlflow.data.context"  # the tag MLflow's UI reads: training, evaluation, ...


def dataset_input(meta: DataMeta, context: str = "training") -> DatasetInput:
    features = Schema([TensorSpec(np.dtype(np.float32), (-1, *meta.shape), "x")])
    labels = Schema([TensorSpec(np.dtype(np.int64), (-1,), "y")])
    dataset = Dataset(
        name=meta.name, digest=meta.fingerprint, source_type="local", source=json.dumps({"uri": meta.source}),
        schema=json.dumps({"mlflow_tensorspec": {"features": features.to_json(), "targets": labels.to_json()}}),
        profile=json.dumps({"rows": meta.counts, "classes": len(meta.classes)}))
    return DatasetInput(dataset, tags=[InputTag(CONTEXT_TAG, context)])
