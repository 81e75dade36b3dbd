"""One options spec, kept where torch keeps flags: copies that step, one validator, loads that
are checked whole before anything changes (issue 20)."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
from torch import nn

from hgpso import HGPSO, PSO
from hgpso.optim.random import SwarmRandom
from tests.helpers import TinyNet, assert_same_state, make_closure, same_bits


class BNNet(nn.Module):
    """A model with per-particle buffers (BatchNorm running statistics)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.norm = nn.BatchNorm1d(8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.norm(self.fc1(x))))


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)


def _trained(cls=HGPSO, model_cls=BNNet, steps=3, **kw):
    torch.manual_seed(0)
    model = model_cls()
    opt = cls(model.parameters(), num_particles=4, seed=0, init_spread=0.1, **kw)
    x, y = _data()
    for _ in range(steps):
        opt.step(make_closure(opt, model, x, y))
    return model, opt, x, y


def _assert_same_run(model_a, opt_a, model_b, opt_b):
    assert_same_state(opt_a.state_dict(), opt_b.state_dict())
    assert_same_state(model_a.state_dict(), model_b.state_dict())
    for p, q in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None)
        if p.grad is not None:
            assert same_bits(p.grad, q.grad)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("forget", [1.0, 0.5])
def test_a_copy_takes_the_next_step_exactly_like_the_original(how, forget):
    """After k steps, a deep copy and a pickled copy of (model, optimizer) take the next
    steps bit for bit like the original: positions, velocities, bests, buffers, the random
    stream and the model (it raised AttributeError: no attribute '_comm' before)."""
    model, opt, x, y = _trained(forget=forget, adaptive=True, lr_patience=1)
    if how == "deepcopy":
        model2, opt2 = copy.deepcopy((model, opt))
    else:
        model2, opt2 = pickle.loads(pickle.dumps((model, opt)))
    assert opt2.forget == forget and opt2.lr_patience == 1 and opt2.seed == 0
    for _ in range(2):
        opt.step(make_closure(opt, model, x, y))
        opt2.step(make_closure(opt2, model2, x, y))
        _assert_same_run(model, opt, model2, opt2)
    assert opt2.state["swarm"]["step"] == 5
    assert "norm.running_mean" in opt2.state["swarm"]["buffers"]


def test_a_copy_made_before_the_first_step_keeps_the_options():
    model = TinyNet()
    opt = PSO(model.parameters(), num_particles=3, forget=0.25, patience=7, seed=3)
    model2, opt2 = pickle.loads(pickle.dumps((model, opt)))
    assert (opt2.num_particles, opt2.forget, opt2.patience, opt2.seed) == (3, 0.25, 7, 3)
    x, y = _data()
    opt.step(make_closure(opt, model, x, y))
    opt2.step(make_closure(opt2, model2, x, y))
    _assert_same_run(model, opt, model2, opt2)


# ------------------------------------------------------------------ one validator
BAD_OPTIONS = [
    ("ema_beta", 1.0),
    ("lr_factor", 0.0),
    ("seed", True),
    ("forget", 1.5),
    ("tol", math.inf),
    ("patience", 0),
    ("adaptive", 1),
]


@pytest.mark.parametrize(("name", "value"), BAD_OPTIONS)
def test_an_option_is_refused_alike_at_construction_assignment_and_load(name, value):
    with pytest.raises(ValueError, match=name):
        HGPSO(TinyNet().parameters(), **{name: value})
    _, opt, _, _ = _trained(model_cls=TinyNet)
    with pytest.raises(ValueError, match=name):
        setattr(opt, name, value)
    sd = opt.state_dict()
    sd["swarm_options"] = {**sd["swarm_options"], name: value}
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=name):
        opt.load_state_dict(sd)
    assert_same_state(opt.state_dict(), before)


@pytest.mark.parametrize("key", ["lr", "inertia", "cognitive", "social", "init_spread"])
def test_an_infinite_hyperparameter_is_refused_at_construction_and_at_the_step(key):
    with pytest.raises(ValueError, match=f"{key} must be finite"):
        HGPSO(TinyNet().parameters(), **{key: math.inf})
    model, opt, x, y = _trained(model_cls=TinyNet)
    before = copy.deepcopy(opt.state_dict())
    opt.param_groups[0][key] = math.inf  # a scheduler or a callback wrote it
    with pytest.raises(ValueError, match=f"{key} must be finite"):
        opt.step(make_closure(opt, model, x, y))
    opt.param_groups[0][key] = before["param_groups"][0][key]
    assert_same_state(opt.state_dict(), before)


def test_construction_options_cannot_be_reassigned():
    opt = HGPSO(TinyNet().parameters(), num_particles=3)
    with pytest.raises(AttributeError, match="fixed when the optimizer is built"):
        opt.num_particles = 5
    assert opt.num_particles == 3


# ------------------------------------------------------------------ checked loads
def _refused_without_change(opt, model, x, y, sd, match):
    """``load_state_dict(sd)`` raises ``match``; the optimizer then steps exactly like a
    twin that never saw the bad checkpoint."""
    twin_model, twin = copy.deepcopy((model, opt))
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(sd)
    opt.step(make_closure(opt, model, x, y))
    twin.step(make_closure(twin, twin_model, x, y))
    _assert_same_run(model, opt, twin_model, twin)


def test_a_pso_checkpoint_is_refused_by_hgpso_and_back():
    """It loaded silently and turned the gradient term off (lr 0, StepLR KeyError 'lr')."""
    _, pso, _, _ = _trained(cls=PSO, model_cls=TinyNet)
    model, opt, x, y = _trained(model_cls=TinyNet)
    _refused_without_change(opt, model, x, y, pso.state_dict(), "saved by PSO")
    legacy = pso.state_dict()
    del legacy["swarm_optimizer"]  # older checkpoints: the group keys tell
    _refused_without_change(opt, model, x, y, legacy, r"lacks \['lr'\]")
    pso_model, pso2, px, py = _trained(cls=PSO, model_cls=TinyNet)
    hg = opt.state_dict()
    del hg["swarm_optimizer"]
    _refused_without_change(pso2, pso_model, px, py, hg, r"has \['lr'\]")


def _tampered(sd, **swarm):
    sd = copy.deepcopy(sd)
    sd["state"]["swarm"].update(swarm)
    return sd


@pytest.mark.parametrize(
    ("entry", "value", "match"),
    [
        ("lr_scale", -5.0, "lr_scale"),
        ("lr_scale", math.nan, "lr_scale"),
        ("success_rate", math.nan, "success_rate"),
        ("success_rate", 1.5, "success_rate"),
        ("loss_ema", math.inf, "loss_ema"),
        ("gbest_loss", -math.inf, "gbest_loss"),
        ("step", "3", "step"),
    ],
)
def test_tampered_numbers_are_refused_with_nothing_loaded(entry, value, match):
    model, opt, x, y = _trained(model_cls=TinyNet)
    _refused_without_change(opt, model, x, y, _tampered(opt.state_dict(), **{entry: value}), match)


def test_pbest_losses_of_minus_inf_or_nan_are_refused():
    model, opt, x, y = _trained(model_cls=TinyNet)
    for bad in (-math.inf, math.nan):
        sd = copy.deepcopy(opt.state_dict())
        sd["state"]["swarm"]["pbest_losses"][1] = bad
        _refused_without_change(opt, model, x, y, sd, "NaN or -inf")


def test_a_random_state_of_another_device_kind_is_refused_before_anything_loads():
    """A CUDA-kind rng_state in a CPU swarm was refused only after the state had been
    replaced (the checkpoint's step, the old random stream)."""
    model, opt, x, y = _trained(model_cls=TinyNet, steps=2)
    sd = copy.deepcopy(opt.state_dict())
    sd["state"]["swarm"]["step"] = 99
    cuda_kind = {"kind": "torch", "state": torch.zeros(5, dtype=torch.uint8)}
    sd["state"]["swarm"]["rng_state"] = cuda_kind
    _refused_without_change(opt, model, x, y, sd, "same kind of device")
    assert opt.state["swarm"]["step"] == 3


def test_a_checkpoint_of_another_swarm_size_is_refused_naming_both():
    _, big, _, _ = _trained(model_cls=TinyNet)
    torch.manual_seed(0)
    model = TinyNet()
    small = HGPSO(model.parameters(), num_particles=3, seed=0)
    with pytest.raises(ValueError, match=r"4 particles.*num_particles=3"):
        small.load_state_dict(big.state_dict())
    assert not small.state


# ------------------------------------------------------------------ failures in a step
def test_out_of_memory_inside_a_step_names_num_particles_and_bytes(monkeypatch):
    """The swarm fit at allocation but a step does not: the random draws' bare numpy
    MemoryError became a message naming N and the bytes; nothing changed."""
    model, opt, x, y = _trained(model_cls=TinyNet)
    before = copy.deepcopy(opt.state_dict())

    def oom(*args, **kwargs):
        raise MemoryError("Unable to allocate 1.00 TiB")

    monkeypatch.setattr(SwarmRandom, "uniform", oom)
    with pytest.raises(RuntimeError, match=r"in a step of a swarm of num_particles=4 .* bytes"):
        opt.step(make_closure(opt, model, x, y))
    assert_same_state(opt.state_dict(), before)


def test_a_closure_raising_after_backward_leaves_the_global_best_gradient():
    """p.grad held the failing particle's gradient; now the global best's of the last step."""
    model, opt, x, y = _trained(model_cls=TinyNet)
    grads = [p.grad.clone() for p in model.parameters()]
    inner = make_closure(opt, model, x, y)
    calls = []

    def closure():
        calls.append(1)
        loss = inner()  # backward() ran: p.grad is this particle's
        if len(calls) == 2:
            raise RuntimeError("boom after backward")
        return loss

    with pytest.raises(RuntimeError, match="boom after backward"):
        opt.step(closure)
    for p, g in zip(model.parameters(), grads, strict=True):
        assert same_bits(p.grad, g)
    opt.step(make_closure(opt, model, x, y))  # not taken for an accumulated gradient
