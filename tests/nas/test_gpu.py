"""Tests for the GPU path (nas.gpu): CUDA graphs, a stream per trial, host-only checkpoints.

Most need a CUDA device and skip without one (CI has none); `bench/gpu_check.py` runs
them on a lent GPU. The CPU tests check what every machine relies on.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from nas.gpu import default_concurrency, trial_stream
from nas.space import Architecture, HParams, Node
from nas.train import TrainData, load_data, train
from nas.trial import Budget, Candidate

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def on_gpu(digits_dir: Path) -> TrainData:
    return load_data(digits_dir, "cuda")


def network(dropout: float = 0.0) -> Architecture:
    return Architecture((
        Node.make("input"),
        Node.make("conv", [0], channels=16, kernel_h=3, kernel_w=3, stride=1, batch_norm=True, activation="relu"),
        Node.make("conv", [1], channels=16, kernel_h=3, kernel_w=3, stride=1, batch_norm=True, activation="relu"),
        Node.make("add", [1, 2]),
        Node.make("pool", [3], kind="max", size=2),
        Node.make("flatten", [4]),
        Node.make("dense", [5], units=64, activation="relu", dropout=dropout),
        Node.make("head", [6]),
    ))


def trial(optimizer: str = "adam", epochs: int = 4, budget: int | None = None, dropout: float = 0.0) -> Candidate:
    # Digits' training split is not a multiple of 32: every epoch ends with a short, eager batch.
    return Candidate(network(dropout), HParams(optimizer=optimizer, lr=3e-3, batch_size=32, epochs=epochs),
                     Budget(budget or epochs))


def test_a_cpu_machine_trains_two_trials_at_once_on_the_default_stream() -> None:
    assert default_concurrency("cpu") == 2
    with trial_stream(torch.device("cpu")):
        assert torch.ones(2).sum().item() == 2


@cuda
@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_a_graphed_trial_learns_as_an_eager_one(on_gpu: TrainData, optimizer: str,
                                                caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="nas.gpu"):
        graphed = train(trial(optimizer), on_gpu, device="cuda").evaluation
    eager = train(trial(optimizer), on_gpu, device="cuda", cuda_graphs=False).evaluation
    assert "captured" in caplog.text and "not captured" not in caplog.text
    assert graphed.ok and eager.ok, (graphed.reason, eager.reason)
    # Same kernels, so the same training up to bf16 rounding and cuDNN's choices.
    assert graphed.train_loss == pytest.approx(eager.train_loss, rel=0.05, abs=0.01)
    assert abs(graphed.val_acc - eager.val_acc) <= 0.03 and graphed.val_acc > 0.8


@cuda
def test_dropout_draws_new_masks_at_every_replay(on_gpu: TrainData, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="nas.gpu"):
        result = train(trial(dropout=0.3), on_gpu, device="cuda").evaluation
    assert "captured" in caplog.text and "not captured" not in caplog.text
    # One mask replayed for ever would be a fixed sub-network: it learns, but worse than eager. The
    # same seed trained eagerly reaches about the same accuracy.
    eager = train(trial(dropout=0.3), on_gpu, device="cuda", cuda_graphs=False).evaluation
    assert result.ok and abs(result.val_acc - eager.val_acc) <= 0.04


@cuda
def test_trials_in_threads_share_the_gpu(on_gpu: TrainData) -> None:
    candidates = [replace(trial(), hparams=replace(trial().hparams, lr=lr)) for lr in (1e-3, 2e-3, 3e-3, 5e-3)]
    alone = [train(c, on_gpu, device="cuda").evaluation for c in candidates]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda c: train(c, on_gpu, device="cuda").evaluation, candidates))
    for a, t in zip(alone, together):
        assert t.ok and abs(a.val_acc - t.val_acc) <= 0.03


@cuda
def test_a_gpu_checkpoint_lives_on_the_host_and_continues_on_the_gpu(on_gpu: TrainData) -> None:
    short = train(trial(epochs=4, budget=2), on_gpu, device="cuda")
    assert short.checkpoint is not None

    def devices(value: object) -> set[str]:
        if isinstance(value, torch.Tensor):
            return {value.device.type}
        items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
        return set().union(*(devices(v) for v in items)) if items else set()

    assert devices({k: v for k, v in short.checkpoint.items() if k != "dropout"}) == {"cpu"}
    longer = train(replace(trial(epochs=4), resume_from="short"), on_gpu, device="cuda", resume=short.checkpoint)
    assert longer.evaluation.ok and longer.evaluation.resumed_at == 2 and longer.evaluation.epochs_trained == 4
    straight = train(trial(epochs=4), on_gpu, device="cuda").evaluation
    assert abs(longer.evaluation.val_acc - straight.val_acc) <= 0.03
