"""Tests for nas.batched: a group trained at once equals its members trained one by one (CPU, tiny)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from nas.batched import groups, train_together
from nas.build import build
from nas.sequences import adding_problem
from nas.space import Architecture, HParams, Node
from nas.space.cell import CellSpec, cell_attrs
from nas.train import TrainData, TrainOutcome, load_data, train
from nas.trial import Budget, Candidate, TrialStatus


@pytest.fixture(scope="module")
def digits(digits_dir: Path) -> TrainData:
    return load_data(digits_dir, "cpu")


def cnn(dropout: float = 0.0, activation: str = "relu", units: int = 32) -> Architecture:
    return Architecture((
        Node.make("input"),
        Node.make("conv", [0], channels=8, kernel_h=3, kernel_w=3, stride=1, batch_norm=True, activation=activation),
        Node.make("pool", [1], kind="max", size=2),
        Node.make("flatten", [2]),
        Node.make("dense", [3], units=units, activation=activation, dropout=dropout),
        Node.make("head", [4]),
    ))


def cand(optimizer: str = "adam", lr: float = 3e-3, weight_decay: float = 0.0, init: str = "kaiming",
         arch: Architecture | None = None, batch_size: int = 32, epochs: int = 3, **budget) -> Candidate:
    hparams = HParams(optimizer=optimizer, lr=lr, weight_decay=weight_decay, batch_size=batch_size, init=init,
                      epochs=epochs)
    return Candidate(arch or cnn(), hparams, Budget(budget.pop("budget_epochs", epochs), **budget))


def assert_same(alone: TrainOutcome, together: TrainOutcome, examples: int) -> None:
    a, b = alone.evaluation, together.evaluation
    assert (b.status, b.reason, b.trial_key, b.device) == (a.status, a.reason, a.trial_key, a.device)
    assert (b.params, b.flops, b.epochs_trained) == (a.params, a.flops, a.epochs_trained)
    assert b.train_loss == pytest.approx(a.train_loss, rel=1e-4)
    one = 1 / examples  # one example's worth of accuracy
    assert len(b.val_accs) == len(a.val_accs)
    assert all(abs(x - y) <= one + 1e-12 for x, y in zip(a.val_accs, b.val_accs))
    if not a.ok:
        assert together.weights is None and together.model is None
        return
    assert abs(b.val_acc - a.val_acc) <= one + 1e-12 and b.val_loss == pytest.approx(a.val_loss, rel=1e-4)
    assert list(together.weights) == list(alone.weights) and together.checkpoint is None
    for key, value in alone.weights.items():
        torch.testing.assert_close(together.weights[key], value, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "adamw"])
def test_a_group_equals_its_members_trained_alone(digits: TrainData, optimizer: str) -> None:
    lr = 3e-3 if optimizer != "sgd" else 0.005
    members = [cand(optimizer, lr, 0.0, "kaiming"), cand(optimizer, 3 * lr, 1e-3, "xavier"),
               cand(optimizer, lr / 3, 1e-2, "default")]
    together = train_together(members, digits)
    for member, outcome in zip(members, together):
        alone = train(member, digits)
        assert outcome.evaluation.ok and outcome.evaluation.test_acc is not None
        assert abs(outcome.evaluation.test_acc - alone.evaluation.test_acc) <= 1 / len(digits.y_test) + 1e-12
        assert_same(alone, outcome, len(digits.y_val))
        # Batch norm's running stats are per member: they decide eval accuracy, and num_batches_tracked counts steps.
        assert torch.equal(outcome.weights["nodes.1.norm.num_batches_tracked"],
                           alone.weights["nodes.1.norm.num_batches_tracked"])
        assert outcome.evaluation.seconds > 0


def test_recurrent_members_clip_their_gradients_each_as_alone() -> None:
    # Unbounded linear cells on large inputs: every step's gradient is far over the clipping norm.
    x, y = map(torch.from_numpy, adding_problem(96, 6, seed=0))
    data = TrainData(10 * x[:64], y[:64], 10 * x[64:80], y[64:80], 10 * x[80:], y[80:], (2, 6), 10, "adding")
    cell = Node.make("cell", [0], **cell_attrs(CellSpec(base=1, nodes=(("add", "identity"),)), 8))
    arch = Architecture((Node.make("input"), cell, Node.make("head", [1])))
    members = [cand("sgd", 0.05, arch=arch, batch_size=16), cand("sgd", 0.02, 1e-3, "xavier", arch=arch, batch_size=16)]
    for member, outcome in zip(members, train_together(members, data)):
        assert_same(train(member, data), outcome, len(data.y_val))


def test_groups_split_by_what_must_be_shared() -> None:
    base = cand()
    same = [cand(lr=1e-2), cand(weight_decay=1e-4, init="xavier")]  # only lr, weight decay and init differ
    other_arch, bigger_batch, sgd = cand(arch=cnn(units=64)), cand(batch_size=64), cand("sgd")
    dropout, inherits = cand(arch=cnn(dropout=0.1)), dataclasses.replace(cand(), inherit_from="parent-run")
    resumes = dataclasses.replace(cand(), resume_from="short-run")
    unfinished = cand(budget_epochs=2)  # stops before its schedule ends: needs a checkpoint
    longer = cand(epochs=5)
    found = groups([base, other_arch, same[0], bigger_batch, sgd, dropout, dropout, inherits, resumes, unfinished,
                    same[1], longer])
    assert found == [[base, same[0], same[1]], [other_arch], [bigger_batch], [sgd], [dropout], [dropout], [inherits],
                     [resumes], [unfinished], [longer]]
    assert groups([base, *same], max_size=2) == [[base, same[0]], [same[1]]]
    assert groups([]) == []


def test_candidates_that_cannot_share_a_group_are_refused(digits: TrainData) -> None:
    with pytest.raises(ValueError, match="differ in batch_size"):
        train_together([cand(), cand(batch_size=64)], digits)
    with pytest.raises(ValueError, match="differ in optimizer"):
        train_together([cand(), cand("sgd")], digits)
    with pytest.raises(ValueError, match="dropout"):
        train_together([cand(arch=cnn(dropout=0.1)), cand(arch=cnn(dropout=0.1))], digits)


def test_a_member_that_blows_up_fails_alone(digits: TrainData) -> None:
    # Without nonlinearities a huge step overflows to NaN; the small steps train normally.
    linear = cnn(activation="none")
    members = [cand("sgd", 0.01, arch=linear), cand("sgd", 9.0, arch=linear), cand("sgd", 0.03, arch=linear)]
    together = train_together(members, digits)
    statuses = [o.evaluation.status for o in together]
    assert statuses == [TrialStatus.OK, TrialStatus.FAILED, TrialStatus.OK]
    assert "NaN" in together[1].evaluation.reason and "(now 9)" in together[1].evaluation.reason
    for member, outcome in zip(members, together):
        assert_same(train(member, digits), outcome, len(digits.y_val))


def test_a_member_that_diverges_fails_alone() -> None:
    # As in test_train: identical inputs, contradicting labels, a huge momentum step overshoots further each time.
    arch = Architecture((Node.make("input"), Node.make("flatten", [0]), Node.make("head", [1])))
    x, y = torch.ones(400, 1, 8, 8), torch.zeros(400, dtype=torch.int64)
    y[200:] = 1
    data = TrainData(x, y, x[:10], y[:10], x[:10], y[:10], (1, 8, 8), 10, "toy")
    members = [cand("sgd", 5.0, arch=arch, batch_size=200, epochs=5), cand("sgd", 0.01, arch=arch, batch_size=200,
                                                                            epochs=5)]
    together = train_together(members, data)
    assert together[0].evaluation.status == TrialStatus.FAILED and "diverged" in together[0].evaluation.reason
    assert together[1].evaluation.ok and together[1].evaluation.epochs_trained == 5
    for member, outcome in zip(members, together):
        assert_same(train(member, data), outcome, len(data.y_val))


def test_the_time_limit_ends_every_member(digits: TrainData) -> None:
    together = train_together([cand(max_seconds=1e-4), cand(lr=1e-2)], digits)
    for outcome in together:
        ev = outcome.evaluation
        assert ev.status == TrialStatus.ERROR and "time limit of 0.0001 s in epoch 1" in ev.reason
        assert ev.epochs_trained == 0 and outcome.weights is None


def test_weights_load_into_the_built_network(digits: TrainData) -> None:
    members = [cand(epochs=1), cand(lr=1e-2, init="xavier", epochs=1)]
    for outcome in train_together(members, digits, measure_test=False):
        assert outcome.evaluation.test_acc is None
        net = build(cnn(), digits.shape, digits.num_classes)
        net.load_state_dict(outcome.weights)  # strict: same keys and shapes as a separately built network
        net.eval()
        with torch.no_grad():
            accuracy = (net(digits.x_val).argmax(1) == digits.y_val).float().mean().item()
        assert accuracy == pytest.approx(outcome.evaluation.val_acc, abs=1e-6)
        assert outcome.model is not None and all(
            torch.equal(t, outcome.weights[k]) for k, t in outcome.model.state_dict().items())


def test_a_group_of_one_is_ordinary_training(digits: TrainData) -> None:
    member = cand(arch=cnn(dropout=0.1), epochs=1)
    (outcome,) = train_together([member], digits)
    alone = train(member, digits)
    assert outcome.evaluation.train_loss == alone.evaluation.train_loss
    assert train_together([], digits) == []


def test_a_group_is_recorded_as_one_run_per_member_and_never_trained_twice(digits: TrainData,
                                                                           tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from nas.lineage import LineageStore
    from nas.runner import TrialJob, run_group, run_trial
    from nas.trial import TrialSetting

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    LineageStore(uri, "grouped").ensure()
    job = TrialJob(TrialSetting(digits.fingerprint, 0, "cpu"), "grouped", uri, None, "test")
    members = [cand(lr=1e-3), cand(lr=3e-3), cand(lr=1e-2)]
    first = run_trial(members[0], digits, job)  # already in the store: the group only trains the other two
    results = run_group(members, digits, job)

    assert (results[0].run_id, results[0].val_acc) == (first.run_id, first.val_acc)
    assert len({r.run_id for r in results}) == 3 and all(r.ok for r in results)
    client = MlflowClient(uri)
    for member, result in zip(members, results):
        run = client.get_run(result.run_id)
        assert run.info.status == "FINISHED" and run.data.tags["nas.trial_key"] == member.trial_key(job.setting)
        curve = client.get_metric_history(result.run_id, "train_loss")
        assert [m.value for m in curve] == result.train_loss
    alone = run_trial(dataclasses.replace(members[2]), digits, job)  # found, not trained again
    assert alone.run_id == results[2].run_id
    again = run_group(members, digits, job)
    assert [(r.run_id, r.val_acc) for r in again] == [(r.run_id, r.val_acc) for r in results]
