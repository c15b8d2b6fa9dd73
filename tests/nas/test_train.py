"""Tests for nas.train: real tiny training on prepared digits, no mocks."""

from __future__ import annotations

import dataclasses
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from nas.build import build
from nas.data import prepare, read_meta
from nas.lineage import LineageStore
from nas.runner import TrialJob, run_trial
from nas.space import Architecture, HParams, Node, infer
from nas.space.cell import CellSpec, cell_attrs
from nas.train import CLIP_NORM, TrainData, _is_out_of_memory, _training_step, fit, load_data, pick_device, train
from nas.trial import Budget, Candidate, TrialSetting, TrialStatus


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    prepare("digits", out, seed=0)
    return out


@pytest.fixture(scope="module")
def digits(digits_dir: Path) -> TrainData:
    return load_data(digits_dir, "cpu")


def small_cnn(units: int = 64, dropout: float = 0.1) -> Architecture:
    return Architecture((
        Node.make("input"),
        Node.make("conv", [0], channels=16, kernel_h=3, kernel_w=3, stride=1, batch_norm=True, activation="relu"),
        Node.make("pool", [1], kind="max", size=2),
        Node.make("flatten", [2]),
        Node.make("dense", [3], units=units, activation="relu", dropout=dropout),
        Node.make("head", [4]),
    ))


HP = HParams(optimizer="adam", lr=3e-3, batch_size=32, epochs=3)


def candidate(arch: Architecture | None = None, hparams: HParams = HP, epochs: int = 3,
              max_seconds: float | None = None) -> Candidate:
    return Candidate(arch or small_cnn(), hparams, Budget(epochs, max_seconds))


def test_load_data_reads_a_prepared_folder(digits_dir: Path, digits: TrainData) -> None:
    meta = read_meta(digits_dir)
    assert digits.shape == (1, 8, 8) and digits.num_classes == 10 and digits.fingerprint == meta.fingerprint
    for split, (x, y) in {"train": (digits.x_train, digits.y_train), "val": (digits.x_val, digits.y_val),
                          "test": (digits.x_test, digits.y_test)}.items():
        assert x.shape == (meta.counts[split], 1, 8, 8) and x.dtype == torch.float32
        assert y.shape == (meta.counts[split],) and y.dtype == torch.int64
        assert x.device.type == "cpu"
    assert sum(meta.counts.values()) == 1797


def test_pick_device() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU.*device 'cpu'"):
            pick_device("cuda")
    with pytest.raises(ValueError, match="'cpu', 'cuda'"):
        pick_device("tpu")


def test_small_cnn_learns_digits(digits: TrainData) -> None:
    cand = candidate()
    outcome = train(cand, digits, seed=0)
    ev = outcome.evaluation
    assert ev.status == TrialStatus.OK and ev.reason is None
    assert ev.val_acc is not None and ev.val_acc > 0.8 and ev.test_acc is not None and ev.test_acc > 0.8
    assert len(ev.val_accs) == len(ev.train_loss) == ev.epochs_trained == 3
    assert ev.val_acc == ev.val_accs[-1]
    assert ev.train_loss[-1] < ev.train_loss[0]
    plan = infer(cand.arch, digits.shape, digits.num_classes)
    assert (ev.params, ev.flops) == (plan.params, plan.flops)
    assert ev.trial_key == cand.trial_key(TrialSetting(digits.fingerprint, 0, "cpu", None))
    assert ev.device == "cpu" and ev.seconds > 0
    assert outcome.model is not None and outcome.weights is not None and outcome.inherited == []
    assert outcome.weights.keys() == outcome.model.state_dict().keys()
    assert all(t.device.type == "cpu" for t in outcome.weights.values())


def test_training_is_deterministic_on_cpu(digits: TrainData) -> None:
    threads, rng = torch.get_num_threads(), torch.random.get_rng_state()
    first, second = (train(candidate(hparams=HP.with_(optimizer="sgd", lr=0.05)), digits, seed=7) for _ in range(2))
    a, b = first.evaluation, second.evaluation
    assert (a.train_loss, a.val_accs, a.val_acc, a.test_acc) == (b.train_loss, b.val_accs, b.val_acc, b.test_acc)
    assert first.weights.keys() == second.weights.keys()
    assert all(torch.equal(first.weights[k], second.weights[k]) for k in first.weights)
    other = train(candidate(hparams=HP.with_(optimizer="sgd", lr=0.05)), digits, seed=8).evaluation
    assert other.train_loss != a.train_loss
    # the caller's process-wide settings are left alone
    assert torch.get_num_threads() == threads and torch.equal(torch.random.get_rng_state(), rng)


def test_a_shorter_budget_is_a_prefix_of_the_longer_run(digits: TrainData) -> None:
    short = train(candidate(epochs=1, hparams=HP.with_(optimizer="adamw")), digits).evaluation
    longer = train(candidate(epochs=2, hparams=HP.with_(optimizer="adamw")), digits).evaluation
    assert short.train_loss == longer.train_loss[:1] and short.val_accs == longer.val_accs[:1]


def test_fit_is_the_thin_contract(digits: TrainData) -> None:
    ev = fit(small_cnn(), HP, digits, Budget(1), seed=3)
    same = train(candidate(epochs=1), digits, seed=3).evaluation
    assert ev.status == TrialStatus.OK and ev.val_accs == same.val_accs and ev.trial_key == same.trial_key


def test_nan_data_fails_with_a_reason(digits: TrainData) -> None:
    x = digits.x_train.clone()
    x[::7] = float("nan")
    poisoned = dataclasses.replace(digits, x_train=x)
    outcome = train(candidate(), poisoned)
    ev = outcome.evaluation
    assert ev.status == TrialStatus.FAILED and "NaN" in ev.reason and "epoch 1" in ev.reason and "learning rate" in ev.reason
    assert outcome.weights is None and outcome.model is None
    assert ev.epochs_trained == 0 and ev.val_acc is None and ev.params > 0


def test_time_limit_fails_with_a_reason(digits: TrainData) -> None:
    ev = train(candidate(max_seconds=1e-4), digits).evaluation
    assert ev.status == TrialStatus.ERROR and "time limit of 0.0001 s in epoch 1" in ev.reason
    assert ev.epochs_trained == 0 and ev.seconds < 5


def test_time_limit_keeps_partial_metrics(digits: TrainData) -> None:
    one_epoch = train(candidate(epochs=1), digits).evaluation.seconds
    ev = train(candidate(epochs=200, max_seconds=3 * one_epoch + 0.3), digits).evaluation
    assert ev.status == TrialStatus.ERROR and "time limit" in ev.reason
    assert 1 <= ev.epochs_trained < 200
    assert len(ev.train_loss) == len(ev.val_accs) == ev.epochs_trained


def test_network_over_the_parameter_limit_fails(digits: TrainData) -> None:
    outcome = train(candidate(), digits, max_params=1000)
    ev = outcome.evaluation
    assert ev.status == TrialStatus.FAILED and "max_params=1,000" in ev.reason and "parameters" in ev.reason
    assert ev.params == infer(small_cnn(), (1, 8, 8), 10).params and outcome.model is None


def test_divergence_fails_with_a_reason() -> None:
    # Identical inputs with contradicting labels and a huge momentum step: every step overshoots further.
    arch = Architecture((Node.make("input"), Node.make("flatten", [0]), Node.make("head", [1])))
    x = torch.ones(400, 1, 8, 8)
    y = torch.zeros(400, dtype=torch.int64)
    y[200:] = 1
    data = TrainData(x, y, x[:10], y[:10], x[:10], y[:10], (1, 8, 8), 10, "toy")
    ev = train(Candidate(arch, HParams(optimizer="sgd", lr=5.0, batch_size=200, epochs=5), Budget(5)), data).evaluation
    assert ev.status == TrialStatus.FAILED and "diverged" in ev.reason and "lower the learning rate (now 5)" in ev.reason
    assert ev.train_loss[-1] > 10 * ev.train_loss[0] and len(ev.val_accs) == ev.epochs_trained < 5


@pytest.mark.parametrize("recurrent", [True, False])
def test_a_recurrent_network_clips_its_gradient_norm_and_others_do_not(recurrent: bool) -> None:
    # Large inputs give a gradient norm far above CLIP_NORM; one plain SGD step moves the weights by lr * its norm.
    linear = CellSpec(base=1, nodes=(("add", "identity"),))  # no tanh to saturate: the gradient grows with x
    reader = Node.make("cell", [0], **cell_attrs(linear, 8)) if recurrent else Node.make("flatten", [0])
    arch = Architecture((Node.make("input"), reader, Node.make("head", [1])))
    x, y = 20 * torch.randn(16, 2, 5, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 3
    data = TrainData(x, y, x, y, x, y, (2, 5), 3, "toy")
    model = build(arch, (2, 5), 3, seed=0)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    _training_step(model, torch.optim.SGD(model.parameters(), lr=0.1), data, torch.device("cpu"))(torch.arange(16))
    moved = (torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm().item()
    assert norm > 10 * CLIP_NORM
    assert moved == pytest.approx(0.1 * (CLIP_NORM if recurrent else norm), rel=1e-4)


def test_init_weights_are_inherited_where_keys_and_shapes_match(digits: TrainData) -> None:
    parent = train(candidate(epochs=1), digits, seed=1)
    child_arch = small_cnn(units=32)  # the dense layer and the head change shape
    child_candidate = candidate(child_arch, epochs=0)
    child = train(child_candidate, digits, seed=2, init_weights=parent.weights)
    # what the child would start from without a parent: training seeds each trial with its own seed
    trial_seed = child_candidate.trial_seed(TrialSetting(digits.fingerprint, 2, "cpu"))
    fresh = build(child_arch, digits.shape, digits.num_classes, seed=trial_seed, init=HP.init).state_dict()
    unparented = train(child_candidate, digits, seed=2).weights  # no epochs: exactly its initialisation
    assert unparented.keys() == fresh.keys() and all(torch.equal(v, fresh[k]) for k, v in unparented.items())
    # the conv block (weight and batch norm) and the head bias keep their shapes; the dense layer does not
    expected = [k for k in fresh if k.startswith("nodes.1.")] + ["nodes.5.bias"]
    assert child.inherited == expected
    assert child.evaluation.status == TrialStatus.OK and child.evaluation.epochs_trained == 0
    for key, value in child.weights.items():
        assert torch.equal(value, parent.weights[key] if key in expected else fresh[key]), key
    # the same architecture inherits everything and scores exactly as the parent did
    clone = train(candidate(epochs=0), digits, seed=5, init_weights=parent.weights)
    assert clone.inherited == list(parent.weights)
    assert clone.evaluation.val_acc == parent.evaluation.val_acc
    assert clone.evaluation.test_acc == parent.evaluation.test_acc


def test_out_of_memory_errors_are_recognised() -> None:
    assert _is_out_of_memory(MemoryError())
    assert _is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert _is_out_of_memory(torch.OutOfMemoryError("boom"))
    assert not _is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def test_a_budget_of_no_epochs_still_scores(digits: TrainData) -> None:
    ev = train(candidate(epochs=0), digits).evaluation
    assert ev.status == TrialStatus.OK and ev.train_loss == [] and len(ev.val_accs) == 1
    assert 0.0 <= ev.val_acc <= 1.0 and math.isfinite(ev.test_acc)


def test_parallel_threads_give_the_same_results_as_one_by_one(digits: TrainData) -> None:
    cand = candidate(epochs=1)
    # One by one in a worker thread too: a thread's torch thread count (which decides float sums)
    # can differ from the main thread's once an earlier test's runner has set it in its workers.
    with ThreadPoolExecutor(1) as pool:
        alone = list(pool.map(lambda s: train(cand, digits, seed=s).evaluation, (0, 1)))
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda s: train(cand, digits, seed=s).evaluation, (0, 1)))
    assert [e.train_loss for e in together] == [e.train_loss for e in alone]
    assert [e.val_accs for e in together] == [e.val_accs for e in alone]


# -- metrics streamed while a trial trains ------------------------------------------------


def test_on_metrics_hears_each_epoch_as_it_ends_and_a_resumed_run_only_its_new_ones(digits: TrainData) -> None:
    heard: list[tuple[int, dict[str, float]]] = []
    short = train(candidate(epochs=1), digits, on_metrics=lambda step, metrics: heard.append((step, metrics)))
    assert heard == [(0, {"train_loss": short.evaluation.train_loss[0], "val_acc": short.evaluation.val_accs[0]})]
    assert short.checkpoint is not None and math.isfinite(short.evaluation.val_loss)

    heard.clear()
    resumed = train(candidate(epochs=3), digits, resume=short.checkpoint,
                    on_metrics=lambda step, metrics: heard.append((step, metrics))).evaluation
    assert [step for step, _ in heard] == [1, 2]
    assert [m["val_acc"] for _, m in heard] == resumed.val_accs[1:] and resumed.resumed_at == 1


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(uri)  # migrated once: a fresh database takes seconds
    return uri


def trial_job(digits: TrainData, tracking_uri: str, experiment: str) -> TrialJob:
    LineageStore(tracking_uri, experiment).ensure()
    return TrialJob(TrialSetting(digits.fingerprint, 0, "cpu"), experiment, tracking_uri, None, "test")


def spy_on_streaming(monkeypatch: pytest.MonkeyPatch, tracking_uri: str) -> list[tuple[int, str, list[int]]]:
    """After each streamed step: the step, the run's status, and the steps of train_loss the store holds."""
    seen: list[tuple[int, str, list[int]]] = []
    log_step = LineageStore.log_step

    def spying(self: LineageStore, run_id: str, step: int, metrics: dict[str, float]) -> None:
        log_step(self, run_id, step, metrics)
        client = MlflowClient(tracking_uri)
        history = client.get_metric_history(run_id, "train_loss")
        seen.append((step, client.get_run(run_id).info.status, [m.step for m in history]))

    monkeypatch.setattr(LineageStore, "log_step", spying)
    return seen


def test_a_trial_streams_each_epoch_to_its_run_while_it_trains(digits: TrainData, tracking_uri: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    seen = spy_on_streaming(monkeypatch, tracking_uri)
    ev = run_trial(candidate(), digits, trial_job(digits, tracking_uri, "streamed"))
    assert seen == [(0, "RUNNING", [0]), (1, "RUNNING", [0, 1]), (2, "RUNNING", [0, 1, 2])]

    client = MlflowClient(tracking_uri)
    losses = client.get_metric_history(ev.run_id, "train_loss")
    assert [m.step for m in losses] == [0, 1, 2] and [m.value for m in losses] == ev.train_loss  # none re-logged
    assert all(a.timestamp <= b.timestamp for a, b in zip(losses, losses[1:]))
    accs = client.get_metric_history(ev.run_id, "val_acc")
    assert [m.step for m in accs] == [0, 1, 2, 2]  # the curve, then the final value, logged last
    assert client.get_run(ev.run_id).data.metrics["val_acc"] == ev.val_acc == accs[-1].value
    assert client.get_run(ev.run_id).data.metrics["val_loss"] == ev.val_loss


def test_a_resumed_trial_streams_only_its_new_epochs(digits: TrainData, tracking_uri: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    job = trial_job(digits, tracking_uri, "resumed")
    first = run_trial(candidate(epochs=1), digits, job)
    seen = spy_on_streaming(monkeypatch, tracking_uri)
    promoted = dataclasses.replace(candidate(epochs=3), resume_from=first.run_id)
    ev = run_trial(promoted, digits, job)
    assert ev.resumed_at == 1 and [(step, status) for step, status, _ in seen] == [(1, "RUNNING"), (2, "RUNNING")]
    losses = sorted(MlflowClient(tracking_uri).get_metric_history(ev.run_id, "train_loss"), key=lambda m: m.step)
    # the epoch it continued from is logged with the result, so the run still shows the whole curve
    assert [m.step for m in losses] == [0, 1, 2] and [m.value for m in losses] == ev.train_loss


def test_a_failing_metric_log_warns_and_training_goes_on(digits: TrainData, tracking_uri: str,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    def broken(self: LineageStore, run_id: str, step: int, metrics: dict[str, float]) -> None:
        raise ConnectionError("tracking server unreachable")

    monkeypatch.setattr(LineageStore, "log_step", broken)
    ev = run_trial(candidate(epochs=2), digits, trial_job(digits, tracking_uri, "unstreamed"))
    assert ev.status == TrialStatus.OK and "were not logged: tracking server unreachable" in caplog.text
    losses = MlflowClient(tracking_uri).get_metric_history(ev.run_id, "train_loss")
    assert [m.step for m in losses] == [0, 1]  # what could not be streamed came with the result
