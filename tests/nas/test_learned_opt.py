"""The LSTM optimiser (nas.learned_opt): its arithmetic, meta-training, checkpoints and storage."""

import copy
import doctest
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save as save_tensors

import nas.learned_opt as learned_opt_module
from nas.learned_opt import (LearnedOptimizer, OptimizerNet, Task, from_bytes, meta_train, optimise,
                             preprocess_gradient, quadratic_family, task_family, to_bytes)
from nas.threads import using_threads


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is fastest, and keeps a shared 2-core machine from thrashing."""
    with using_threads(1):
        yield


def seeded_net(seed: int = 0, **config) -> OptimizerNet:
    return OptimizerNet(**config).reset_parameters(torch.Generator().manual_seed(seed))


def random_task(seed: int = 0, rows: int = 64, features: int = 6, classes: int = 3) -> Task:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, features, generator=generator)
    y = torch.randint(0, classes, (rows,), generator=generator)
    return Task(x, y, classes, hidden=(5,), seed=seed)


def test_preprocessing_keeps_log_magnitude_and_sign_of_large_gradients_and_scales_small_ones():
    p = 10.0
    grads = torch.tensor([0.5, -3.0, 1e-6, -1e-6, 0.0, math.exp(-p)], dtype=torch.float64)
    got = preprocess_gradient(grads, p)
    expected = torch.tensor([
        [math.log(0.5) / p, 1.0],
        [math.log(3.0) / p, -1.0],
        [-1.0, math.exp(p) * 1e-6],  # below e^-p: linear in g
        [-1.0, -math.exp(p) * 1e-6],
        [-1.0, 0.0],
        [-1.0, 1.0],  # the threshold itself counts as large: log(e^-p)/p = -1, sign +1
    ], dtype=torch.float64)
    torch.testing.assert_close(got, expected)
    assert torch.isfinite(preprocess_gradient(torch.zeros(3), p)).all()


def test_update_equals_the_lstm_equations_computed_by_hand():
    net = seeded_net(3)
    g = 0.3
    generator = torch.Generator().manual_seed(1)
    state = tuple((torch.randn(1, 20, generator=generator), torch.randn(1, 20, generator=generator))
                  for _ in range(2))
    with torch.no_grad():
        update, new_state = net(torch.tensor([g]), state)

    w = {k: v.double().numpy() for k, v in net.state_dict().items()}
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    x = np.array([math.log(abs(g)) / 10.0, 1.0])  # |g| >= e^-10: (log|g|/p, sign g)
    for layer in range(2):
        h, c = (t.double().numpy()[0] for t in state[layer])
        gates = (w[f"cells.{layer}.weight_ih"] @ x + w[f"cells.{layer}.bias_ih"]
                 + w[f"cells.{layer}.weight_hh"] @ h + w[f"cells.{layer}.bias_hh"])
        i, f, cell, o = np.split(gates, 4)  # torch's gate order: input, forget, cell, output
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(cell)
        h = sigmoid(o) * np.tanh(c)
        np.testing.assert_allclose(new_state[layer][0].numpy()[0], h, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(new_state[layer][1].numpy()[0], c, rtol=1e-5, atol=1e-6)
        x = h
    by_hand = 0.1 * (w["out.weight"] @ x + w["out.bias"])[0]
    assert update.shape == (1,)
    assert update.item() == pytest.approx(by_hand, rel=1e-5, abs=1e-7)


def test_learned_optimizer_adds_the_nets_update_to_each_coordinate():
    net = seeded_net(0)
    params = [torch.nn.Parameter(torch.tensor([[1.0, -2.0], [0.5, 0.0]])), torch.nn.Parameter(torch.tensor([3.0]))]
    params[0].grad, params[1].grad = torch.tensor([[0.1, -0.2], [1e-7, 2.0]]), torch.tensor([-0.4])
    before = [p.detach().clone() for p in params]
    optimizer = LearnedOptimizer(params, net)
    optimizer.step()
    grads = torch.cat([p.grad.reshape(-1) for p in params])
    with torch.no_grad():
        update, _ = net(grads, net.initial_state(len(grads)))
    torch.testing.assert_close(torch.cat([(p - b).reshape(-1) for p, b in zip(params, before)]), update)
    assert optimizer.state[params[0]]["h0"].shape == (4, 20)


def test_meta_training_lowers_the_meta_loss_on_quadratics_and_is_deterministic():
    tasks = quadratic_family(range(8))
    net, curve = meta_train(tasks, iterations=60, unroll=5, horizon=20, meta_lr=1e-2, seed=0)
    assert len(curve) == 60
    assert np.mean(curve[-15:]) < 0.5 * np.mean(curve[:5])
    # The trained net also beats the untrained one on problems it never saw.
    held_out = quadratic_family(range(100, 104))
    untrained = seeded_net(0)
    for task in held_out:
        trained_loss = optimise(task, lambda ps: LearnedOptimizer(ps, net), steps=20, seed=0)[-1]
        untrained_loss = optimise(task, lambda ps: LearnedOptimizer(ps, untrained), steps=20, seed=0)[-1]
        assert trained_loss < untrained_loss
    heard = []
    _, again = meta_train(tasks, iterations=3, unroll=5, horizon=10, meta_lr=1e-2, seed=0,
                          on_iteration=lambda i, loss: heard.append((i, loss)))
    _, same = meta_train(tasks, iterations=3, unroll=5, horizon=10, meta_lr=1e-2, seed=0)
    assert again == same and heard == list(enumerate(again))


def test_validation_returns_the_best_net_seen():
    tasks, validate = quadratic_family(range(8)), quadratic_family(range(50, 53))
    settings = dict(iterations=20, unroll=5, horizon=10, meta_lr=3e-2, seed=0)
    last, curve = meta_train(tasks, **settings)
    best, same_curve = meta_train(tasks, **settings, validate=validate, validate_every=4)
    assert curve == same_curve  # validating draws nothing: training goes on as without it
    assert np.mean(curve[-5:]) < np.mean(curve[:3])
    score = lambda net: learned_opt_module._validation_loss(net, validate, 10, 0)  # noqa: E731
    assert score(best) <= score(last)
    with pytest.raises(ValueError, match="validate_every"):
        meta_train(tasks, iterations=1, validate=validate, validate_every=0)


def train_steps(params, optimizer, task, steps, first_step):
    for step in range(first_step, first_step + steps):
        for group in optimizer.param_groups:  # what the training loop's schedule does every step
            group["lr"] = 0.5 * (1 + math.cos(math.pi * step / 20))
        loss = task.loss(params)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def test_state_dict_round_trip_continues_training_identically():
    task, net = random_task(), seeded_net(1)
    params = [torch.nn.Parameter(p) for p in task.init(0)]
    optimizer = LearnedOptimizer(params, net)
    train_steps(params, optimizer, task, 5, 0)
    checkpoint = {"params": [p.detach().clone() for p in params], "optimizer": copy.deepcopy(optimizer.state_dict())}
    train_steps(params, optimizer, task, 5, 5)

    resumed = [torch.nn.Parameter(p.clone()) for p in checkpoint["params"]]
    fresh = LearnedOptimizer(resumed, net)
    fresh.load_state_dict(checkpoint["optimizer"])
    train_steps(resumed, fresh, task, 5, 5)
    for a, b in zip(params, resumed):
        assert torch.equal(a, b)
    # Without the state the continuation differs: the LSTM state matters.
    restarted = [torch.nn.Parameter(p.clone()) for p in checkpoint["params"]]
    train_steps(restarted, LearnedOptimizer(restarted, net), task, 5, 5)
    assert not torch.equal(params[0], restarted[0])


def test_lr_is_ignored_unless_followed():
    task, net = random_task(), seeded_net(2)
    ends = {}
    for name, lr, follow in (("one", 1.0, False), ("tenth", 0.1, False), ("followed", 0.1, True)):
        params = [torch.nn.Parameter(p) for p in task.init(0)]
        optimizer = LearnedOptimizer(params, net, lr=lr, follow_lr=follow)
        loss = task.loss(params)
        loss.backward()
        before = params[0].detach().clone()
        optimizer.step()
        ends[name] = params[0].detach() - before
    assert torch.equal(ends["one"], ends["tenth"])
    torch.testing.assert_close(ends["followed"], 0.1 * ends["one"])


def test_bytes_round_trip_keeps_settings_and_outputs():
    net = seeded_net(4, hidden=7, preprocess=5.0, output_scale=0.25)
    back = from_bytes(to_bytes(net))
    assert back.config() == {"hidden": 7, "preprocess": 5.0, "output_scale": 0.25}
    grads = torch.tensor([1e-9, -0.01, 0.7, -5.0])
    with torch.no_grad():
        a, _ = net(grads, net.initial_state(4))
        b, _ = back(grads, back.initial_state(4))
    assert torch.equal(a, b)


@pytest.mark.parametrize("data", [b"", b"garbage", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}",
                                  save_tensors({"w": torch.zeros(2)}),
                                  save_tensors({"w": torch.zeros(2)}, metadata={"nas.learned_opt": "{\"format\": "
                                                                                "\"nas.learned_opt/1\", \"hidden\": 20, "
                                                                                "\"preprocess\": 10, "
                                                                                "\"output_scale\": 0.1}"})])
def test_anything_else_is_refused_with_a_way_out(data):
    with pytest.raises(ValueError, match="not a learned optimiser.*nas meta-train"):
        from_bytes(data)


def test_task_family_draws_rows_and_weights_by_seed():
    a, b = task_family("digits", [0, 1], rows=100, hidden=(8,))
    assert a.x.shape == (100, 64) and a.y.dtype == torch.int64 and a.num_classes == 10
    assert not torch.equal(a.x, b.x)
    assert not torch.equal(a.init(0)[0], b.init(0)[0])  # the same init seed, other tasks: other weights
    assert torch.equal(a.init(0)[0], a.init(0)[0]) and not torch.equal(a.init(0)[0], a.init(1)[0])
    assert [tuple(p.shape) for p in a.init(0)] == [(8, 64), (8,), (10, 8), (10,)]
    assert abs(float(a.x.mean())) < 0.2  # standardised with the whole source's statistics
    # The loss is functional: weights computed from other tensors carry their graph through it.
    scale = torch.ones((), requires_grad=True)
    a.loss([p * scale for p in a.init(0)]).backward()
    assert scale.grad is not None and scale.grad != 0
    with pytest.raises(ValueError, match="unknown"):
        task_family("cifar", [0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_learned_optimizer_runs_on_cuda_like_on_the_cpu():
    task, net = random_task(), seeded_net(5)
    curves = [optimise(task.to(device), lambda ps: LearnedOptimizer(ps, net), steps=5, seed=0)
              for device in ("cpu", "cuda")]
    np.testing.assert_allclose(curves[0], curves[1], rtol=1e-3)


def test_module_examples_run():
    assert doctest.testmod(learned_opt_module).failed == 0
