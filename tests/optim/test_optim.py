"""HGPSO and PSO as torch.optim optimizers: state, step contract, guards, persistence."""

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hgpso
from hgpso import HGPSO, PSO
from hgpso.optim.random import SwarmRandom
from tests.helpers import TinyNet, make_closure


# --------------------------------------------------------------------------- the equation
def test_first_step_replays_the_documented_update():
    """One step on L(θ) = ½‖θ − c‖², replayed from the optimizer's own random stream."""
    n, seed, spread, lr, w, c1, c2 = 3, 7, 0.5, 0.1, 0.9, 1.3, 0.7
    theta0 = torch.tensor([1.0, -1.0, 2.0])
    c = torch.tensor([0.5, 0.5, 0.5])
    theta = nn.Parameter(theta0.clone())
    opt = HGPSO(
        [theta],
        lr=lr,
        gradient="sgd",  # the equation below is the "sgd" term's: v -= lr * grad
        num_particles=n,
        inertia=w,
        cognitive=c1,
        social=c2,
        init_spread=spread,
        adaptive=False,
        forget=0.0,
        seed=seed,
    )

    def closure():
        opt.zero_grad()
        loss = 0.5 * ((theta - c) ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)

    rng = SwarmRandom(torch.device("cpu"), seed)
    x = theta0.repeat(n, 1)
    x[1:] = theta0 + spread * rng.normal((n - 1, 3), torch.float32)
    rng.integer()  # the fused kernel's seed
    r1 = rng.uniform((n, 3), torch.float32)
    r2 = rng.uniform((n, 3), torch.float32)
    losses = 0.5 * ((x - c) ** 2).sum(1)
    best = int(losses.argmin())
    grad = x - c
    v = c1 * r1 * (x - x) + c2 * r2 * (x[best] - x) - lr * grad
    st = opt.state[theta]
    torch.testing.assert_close(st["velocity"], v)
    torch.testing.assert_close(st["position"], x + v)
    torch.testing.assert_close(st["pbest"], x)
    torch.testing.assert_close(opt.state["swarm"]["pbest_losses"], losses)
    assert opt.state["swarm"]["gbest_index"] == best
    # after the step the model holds the global best
    torch.testing.assert_close(theta.detach(), x[best])


def test_initial_swarm_layout(tiny_problem):
    model, _, _ = tiny_problem
    before = [p.detach().clone() for p in model.parameters()]
    opt = HGPSO(model.parameters(), num_particles=5, init_spread=0.2, seed=0)
    assert not opt.state  # created lazily, like torch.optim state
    opt.swarm  # noqa: B018  (creates it)
    for p, p0 in zip(model.parameters(), before, strict=True):
        st = opt.state[p]
        assert st["position"].shape == (5, *p.shape)
        assert st["position"].dtype == p.dtype and st["position"].device == p.device
        assert torch.equal(st["position"][0], p0)  # particle 0 = the model as given
        spread = (st["position"][1:] - p0).std().item()
        assert 0.1 < spread < 0.3
        assert torch.equal(st["velocity"], torch.zeros_like(st["position"]))
        assert torch.equal(st["gbest"], p0)  # the global best starts as the model
        assert "pbest" not in st  # forget=1: a personal best is the scored position
    assert opt.state["swarm"]["pbest_losses"].shape == (5,)
    kept = HGPSO(model.parameters(), num_particles=5, forget=0.5, seed=0)
    kept.swarm  # noqa: B018  (creates it)
    for p in model.parameters():
        assert torch.equal(kept.state[p]["pbest"], kept.state[p]["position"])


# --------------------------------------------------------------------------- behaviour
def test_loss_falls_on_convex_problem():
    torch.manual_seed(0)
    X = torch.randn(128, 10)
    Y = X @ torch.randn(10, 1)
    model = nn.Linear(10, 1)
    opt = HGPSO(model.parameters(), lr=0.05, num_particles=4, seed=0)

    def closure():
        opt.zero_grad()
        loss = F.mse_loss(model(X), Y)
        loss.backward()
        return loss

    first = F.mse_loss(model(X), Y).item()
    for _ in range(150):
        opt.step(closure)
    assert F.mse_loss(model(X), Y).item() < 1e-3 * first


def test_pso_without_backward_reduces_loss():
    torch.manual_seed(0)
    X = torch.randn(64, 3)
    Y = X @ torch.tensor([[1.0], [-2.0], [0.5]])
    model = nn.Linear(3, 1)
    opt = PSO(model.parameters(), num_particles=20, init_spread=0.5, max_velocity=0.5, seed=1)
    first = F.mse_loss(model(X), Y).item()
    for _ in range(120):
        opt.step(lambda: F.mse_loss(model(X), Y))
    assert F.mse_loss(model(X), Y).item() < 0.05 * first
    assert "lr" not in opt.param_groups[0]


def test_model_holds_global_best_after_each_step(tiny_problem):
    model, x, y = tiny_problem
    opt = HGPSO(model.parameters(), num_particles=4, forget=0.0, seed=0)
    for _ in range(3):
        opt.step(make_closure(opt, model, x, y))
        for p, g in zip(model.parameters(), opt.gbest(), strict=True):
            assert torch.equal(p.detach(), g)
        # one fixed batch and forget=0: the stored best loss is exactly the model's loss
        assert F.cross_entropy(model(x), y).item() == pytest.approx(
            opt.state["swarm"]["gbest_loss"], rel=1e-6
        )


def test_param_groups_frozen_and_empty_params():
    torch.manual_seed(0)
    model = TinyNet()
    frozen = model.fc1.bias
    frozen.requires_grad_(False)
    frozen_before = frozen.detach().clone()
    empty = nn.Parameter(torch.zeros(0, 4))
    opt = HGPSO(
        [
            {
                "params": [model.fc1.weight, frozen, empty],
                "lr": 0.0,
                "cognitive": 0.0,
                "social": 0.0,
                "inertia": 0.0,
                "init_spread": 0.0,
            },
            {"params": model.fc2.parameters(), "lr": 0.1},
        ],
        num_particles=3,
        seed=0,
    )
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    w1 = model.fc1.weight.detach().clone()
    w2 = model.fc2.weight.detach().clone()
    for _ in range(3):
        opt.step(make_closure(opt, model, x, y))
    assert frozen not in opt.state and torch.equal(frozen, frozen_before)
    assert torch.equal(model.fc1.weight, w1)  # group 0 cannot move: all coefficients zero
    assert not torch.equal(model.fc2.weight, w2)  # group 1 does
    assert opt.state[empty]["position"].shape == (3, 0, 4)


# --------------------------------------------------------------------------- persistence
def _train(opt, model, x, y, steps):
    for _ in range(steps):
        opt.step(make_closure(opt, model, x, y))


@pytest.mark.parametrize("cls", [HGPSO, PSO])
def test_state_dict_resume_is_bit_for_bit(cls, tiny_problem):
    model, x, y = tiny_problem
    kwargs = {"num_particles": 4, "lr_patience": 2, "seed": 3}
    opt = cls(model.parameters(), **kwargs)
    _train(opt, model, x, y, 3)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    _train(opt, model, x, y, 4)
    expected_model = copy.deepcopy(model.state_dict())
    expected_state = copy.deepcopy(opt.state_dict())

    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    model2 = TinyNet()
    model2.load_state_dict(saved["model"])
    opt2 = cls(model2.parameters(), **{**kwargs, "seed": 999})  # seed comes from the state
    opt2.load_state_dict(saved["opt"])
    _train(opt2, model2, x, y, 4)

    for k, v in expected_model.items():
        assert torch.equal(model2.state_dict()[k], v), k
    got = opt2.state_dict()
    for pid, st in expected_state["state"].items():
        for key, val in st.items():
            other = got["state"][pid][key]
            if isinstance(val, torch.Tensor):
                assert torch.equal(other, val), (pid, key)
            else:
                assert other == val or (val != val and other != other), (pid, key)


def test_state_dict_is_a_snapshot(tiny_problem):
    model, x, y = tiny_problem
    opt = HGPSO(model.parameters(), num_particles=2, seed=0)
    _train(opt, model, x, y, 1)
    sd = opt.state_dict()
    _train(opt, model, x, y, 1)
    assert sd["state"]["swarm"]["step"] == 1


def test_load_state_dict_with_other_swarm_size_fails_clearly(tiny_problem):
    model, x, y = tiny_problem
    opt = HGPSO(model.parameters(), num_particles=2, seed=0)
    _train(opt, model, x, y, 1)
    with pytest.raises(ValueError, match=r"2 particles.*num_particles=3"):
        HGPSO(model.parameters(), num_particles=3).load_state_dict(opt.state_dict())


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_particles": 0}, "num_particles"),
        ({"num_particles": 2.5}, "num_particles"),
        ({"lr": -1.0}, "lr"),
        ({"lr": math.nan}, "lr"),
        ({"inertia": -0.1}, "inertia"),
        ({"cognitive": math.nan}, "cognitive"),
        ({"social": -2}, "social"),
        ({"max_velocity": 0.0}, "max_velocity"),
        ({"init_spread": -1e-3}, "init_spread"),
        ({"forget": 1.5}, "forget"),
        ({"ema_beta": 1.0}, "ema_beta"),
        ({"patience": 0}, "patience"),
        ({"lr_factor": 0.0}, "lr_factor"),
        ({"seed": "x"}, "seed"),
        ({"fused": "yes"}, "fused"),
    ],
)
def test_invalid_hyperparameters_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        HGPSO(nn.Linear(2, 2).parameters(), **kwargs)


def test_invalid_group_value_names_the_key():
    m = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="social"):
        HGPSO([{"params": [m.weight], "social": -1.0}, {"params": [m.bias]}])


def test_step_without_closure_explains_why():
    opt = HGPSO(nn.Linear(2, 2).parameters())
    with pytest.raises(RuntimeError, match="needs a closure"):
        opt.step()


def test_non_scalar_closure_raises_and_loses_nothing(tiny_problem):
    model, x, y = tiny_problem
    opt = HGPSO(model.parameters(), num_particles=3, seed=0)
    _train(opt, model, x, y, 2)
    weights = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict())

    def bad():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y, reduction="none")
        loss.sum().backward()
        return loss

    with pytest.raises(ValueError, match="scalar loss"):
        opt.step(bad)
    for p, w in zip(model.parameters(), weights, strict=True):
        assert torch.equal(p, w)
    after = opt.state_dict()
    for pid, st in state["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                assert torch.equal(after["state"][pid][key], val)
    _train(opt, model, x, y, 1)  # and training goes on


def test_closure_that_raises_restores_the_model(tiny_problem):
    model, x, y = tiny_problem
    opt = HGPSO(model.parameters(), num_particles=3, seed=0)
    _train(opt, model, x, y, 1)
    weights = [p.detach().clone() for p in model.parameters()]
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 2:
            raise KeyError("data loader hiccup")
        return make_closure(opt, model, x, y)()

    with pytest.raises(KeyError):
        opt.step(flaky)
    for p, w in zip(model.parameters(), weights, strict=True):
        assert torch.equal(p, w)


def test_nan_particle_is_reseeded_counted_and_never_best(tiny_problem):
    model, x, y = tiny_problem
    opt = HGPSO(model.parameters(), num_particles=4, seed=0)
    _train(opt, model, x, y, 2)
    gbest_loss = opt.state["swarm"]["gbest_loss"]
    calls = []

    def poisoned():
        calls.append(1)
        loss = make_closure(opt, model, x, y)()
        if len(calls) == 2:  # particle 1: NaN loss
            return loss * math.nan
        if len(calls) == 3:  # particle 2: finite loss, infinite gradient
            model.fc1.weight.grad[0, 0] = math.inf
            return loss * 1e-9  # would win if it were accepted
        return loss

    opt.step(poisoned)
    s = opt.state["swarm"]
    assert s["nan_reseeds"] == 2
    assert math.isfinite(s["gbest_loss"]) and s["gbest_index"] not in (1, 2)
    assert s["gbest_loss"] <= gbest_loss * 1.5
    for p in model.parameters():
        st = opt.state[p]
        assert torch.isfinite(st["position"]).all() and torch.isfinite(st["velocity"]).all()
        assert torch.equal(st["velocity"][1], torch.zeros_like(st["velocity"][1]))
        assert torch.isfinite(p).all()
    _train(opt, model, x, y, 2)
    assert opt.state["swarm"]["nan_reseeds"] == 2


def test_all_particles_nan_keeps_the_model(tiny_problem):
    model, _x, _y = tiny_problem
    opt = HGPSO(model.parameters(), num_particles=3, seed=0)
    weights = [p.detach().clone() for p in model.parameters()]
    opt.step(lambda: torch.tensor(math.nan))
    for p, w in zip(model.parameters(), weights, strict=True):
        assert torch.equal(p, w)
    assert opt.state["swarm"]["nan_reseeds"] == 3


def test_mixed_devices_raise():
    a = nn.Parameter(torch.zeros(2))
    b = nn.Parameter(torch.zeros(2, device="meta"))
    with pytest.raises(ValueError, match="one device"):
        HGPSO([a, b])


def test_add_param_group_after_first_step_is_refused(tiny_problem):
    model, x, y = tiny_problem
    opt = HGPSO(model.parameters(), num_particles=2)
    _train(opt, model, x, y, 1)
    with pytest.raises(RuntimeError, match="after the swarm was created"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(1))]})


def test_fused_true_without_kernel_raises_the_stored_error():
    if hgpso.kernels.is_available():
        pytest.skip("the fused kernel is available here")
    with pytest.raises(RuntimeError, match="fused=True"):
        HGPSO(nn.Linear(2, 2).parameters(), gradient="sgd", fused=True)


# --------------------------------------------------------------------------- adaptation
def test_stall_signal_and_lr_cuts_on_a_flat_loss():
    p = nn.Parameter(torch.zeros(3))
    opt = HGPSO([p], lr=0.01, num_particles=2, patience=5, lr_patience=2, lr_factor=0.5, seed=0)

    def flat():
        opt.zero_grad()
        loss = (p * 0).sum() + 1.0
        loss.backward()
        return loss

    opt.step(flat)
    assert not opt.stalled
    for _ in range(5):
        opt.step(flat)
    assert opt.stalled
    assert opt.state["swarm"]["lr_scale"] == pytest.approx(0.5**2)
    assert opt.effective_hyperparameters()["lr"] == pytest.approx(0.01 * 0.25)


def test_non_adaptive_keeps_group_coefficients(tiny_problem):
    model, x, y = tiny_problem
    opt = HGPSO(
        model.parameters(),
        lr=0.01,
        inertia=0.9,
        num_particles=3,
        adaptive=False,
        lr_patience=1,
        seed=0,
    )
    _train(opt, model, x, y, 5)
    assert opt.effective_hyperparameters() == {
        "lr": 0.01,
        "inertia": 0.9,
        "cognitive": 0.1,
        "social": 0.1,
    }


def test_seed_none_follows_torch_manual_seed(tiny_problem):
    model, x, y = tiny_problem
    init = copy.deepcopy(model.state_dict())
    out = []
    for _ in range(2):
        model.load_state_dict(init)
        torch.manual_seed(123)
        opt = HGPSO(model.parameters(), num_particles=3)
        _train(opt, model, x, y, 2)
        out.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*out, strict=True):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- random stream
def test_swarm_random_is_seeded_resumable_and_uniform():
    a = SwarmRandom(torch.device("cpu"), 5)
    b = SwarmRandom(torch.device("cpu"), 5)
    assert torch.equal(a.uniform((3, 4), torch.float32), b.uniform((3, 4), torch.float32))
    state = a.get_state()
    first = a.uniform((1000,), torch.float64)
    a.set_state(state)
    assert torch.equal(a.uniform((1000,), torch.float64), first)
    u = a.uniform((200_000,), torch.float32)
    assert u.dtype == torch.float32 and 0.0 <= u.min() and u.max() < 1.0
    assert abs(u.mean().item() - 0.5) < 0.005 and abs(u.var().item() - 1 / 12) < 0.002
    z = a.normal((200_000,), torch.bfloat16)
    assert z.dtype == torch.bfloat16 and abs(z.float().std().item() - 1.0) < 0.01
    with pytest.raises(ValueError, match="same kind of device"):
        a.set_state({"kind": "torch", "state": torch.zeros(1)})
