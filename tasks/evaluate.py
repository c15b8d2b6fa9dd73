"""Prefect tasks: measure the final model on the test split once, then register it."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.context import TaskRunContext

from nas.data import load_split, read_meta
from nas.lineage import CHAMPION, LineageStore
from nas.ids import digest
from nas.train import predict_accuracy


def _evaluation_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    # The same model on the same test split gives the same number: measure it once.
    fingerprint = read_meta(parameters["data_dir"]).fingerprint
    return "evaluate-" + digest([parameters["tracking_uri"], parameters["model_uri"], fingerprint])


@task(name="evaluate-model", cache_key_fn=_evaluation_cache_key, persist_result=True, result_serializer="json")
def evaluate_model(model_uri: str, final_run_id: str, *, data_dir: str, tracking_uri: str,
                   experiment: str) -> dict[str, Any]:
    """Load the logged model as a user would (mlflow.pyfunc.load_model) and score the test split."""
    store = LineageStore(tracking_uri, experiment)
    x, y = load_split(data_dir, "test")
    accuracy = predict_accuracy(store.load_model(model_uri), x, y)
    store.log_result(final_run_id, {"test_acc": accuracy}, {"nas.test_split": f"{len(y)} examples, measured once"})
    return {"test_acc": accuracy, "test_examples": len(y)}


@task(name="register-model", persist_result=True, result_serializer="json")
def register_model(model_uri: str, name: str, final_run_id: str, *, tracking_uri: str, experiment: str,
                   tags: dict[str, str]) -> dict[str, Any]:
    version = LineageStore(tracking_uri, experiment).register(model_uri, name, final_run_id, tags)
    return {"model_name": name, "model_version": version, "registered_uri": f"models:/{name}/{version}",
            "champion_uri": f"models:/{name}@{CHAMPION}"}
