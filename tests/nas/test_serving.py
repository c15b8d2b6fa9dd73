"""A logged network is an MLflow model from code: data artifacts, no pickle, same predictions."""

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.artifacts import download_artifacts

from nas.build import Ensemble, Network, build
from nas.lineage import LineageError, LineageStore
from nas.space.architecture import Architecture, Node

EXAMPLES = np.random.default_rng(0).normal(size=(5, 1, 4, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A tiny network with dropout, logged into a search run of a fresh SQLite store."""
    root = tmp_path_factory.mktemp("serving")
    store = LineageStore(f"sqlite:///{root / 'mlflow.db'}", experiment="serving", root=root)
    store.ensure()
    run_id = store.start_search({"strategy": "random"}, None, "data-fp")
    arch = Architecture((Node.make("input"), Node.make("flatten", [0]),
                         Node.make("dense", [1], units=8, activation="relu", dropout=0.5), Node.make("head", [2])))
    network = build(arch, (1, 4, 4), 3, seed=0).eval()
    return store, run_id, network, store.log_model(run_id, network, EXAMPLES[:2])


def test_an_ensemble_of_logged_seeds_loads_as_their_mean_and_is_logged_once(logged, monkeypatch):
    store, first_run, first, _ = logged
    second = build(first.arch, (1, 4, 4), 3, seed=1).eval()
    second_run = store.start_search({"strategy": "random", "seed": 1}, None, "data-fp")
    store.log_model(second_run, second, EXAMPLES[:2])
    uri = store.log_ensemble([first_run, second_run], EXAMPLES[:2])
    assert store.log_ensemble([first_run, second_run], EXAMPLES[:2]) == uri  # found again, not logged twice
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.tracking_uri)
    model = mlflow.pyfunc.load_model(uri)
    assert isinstance(model.unwrap_python_model().model, Ensemble)
    with torch.no_grad():
        mean = torch.stack([torch.softmax(n(torch.from_numpy(EXAMPLES)), 1) for n in (first, second)]).mean(0)
    assert np.allclose(model.predict(EXAMPLES), mean.numpy(), atol=1e-6)
    other = build(Architecture((Node.make("input"), Node.make("flatten", [0]), Node.make("head", [1]))), (1, 4, 4), 3)
    with pytest.raises(ValueError, match="one architecture"):
        Ensemble([first, other])


def test_the_logged_model_holds_data_and_code_but_no_pickle(logged, tmp_path):
    store, _, _, uri = logged
    mlflow.set_tracking_uri(store.tracking_uri)
    try:
        folder = Path(download_artifacts(uri, dst_path=str(tmp_path)))
    finally:
        mlflow.set_tracking_uri(None)
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {"serving.py", "artifacts/network.json", "artifacts/weights.safetensors"} <= files
    assert "python_model.pkl" not in files
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".pt", ".pth"))]


def test_pyfunc_loads_it_without_pickle_and_predicts_as_the_network(logged, monkeypatch):
    store, run_id, network, uri = logged
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.tracking_uri)
    x = torch.from_numpy(EXAMPLES)
    with torch.no_grad():
        expected = torch.softmax(network(x), dim=1).numpy()
    for model_uri in (uri, f"runs:/{run_id}/model"):
        model = mlflow.pyfunc.load_model(model_uri)
        assert np.array_equal(model.predict(EXAMPLES), expected)
        unwrapped = model.unwrap_python_model().model
        assert isinstance(unwrapped, Network) and not unwrapped.training
        assert all(torch.equal(v, network.state_dict()[k]) for k, v in unwrapped.state_dict().items())


def test_the_store_refuses_a_model_that_would_unpickle(logged, tmp_path):
    store = logged[0]

    class Pickled(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: list[str], params=None) -> list[str]:
            return model_input

    path = tmp_path / "pickled"
    mlflow.pyfunc.save_model(path, python_model=Pickled(), pip_requirements=[])
    assert (path / "python_model.pkl").is_file()
    with pytest.raises(LineageError, match="pickle"):
        store.load_model(str(path))
