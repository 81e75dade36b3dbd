"""One learning rate per particle (issue 21, part 3): ``lr_spread`` puts the particles on a log
grid of learning rates, ``lr_pull`` moves them toward the global best's. Without swarm terms,
a swarm of N with ``lr_spread`` is N runs of torch's SGD / Adam / AdamW at the N rates, step
for step; the pull against a hand computation; re-seeded particles take the best's rate;
checkpoints resume bit for bit, tampered factors and another spread are refused with nothing
changed; options checked. The sharded version: tests/distributed/test_readout.py."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import hgpso
from hgpso import HGPSO
from hgpso.optim.options import OPTIONS_KEY
from tests.helpers import TinyNet, assert_same_state, make_closure, tiny_batches

#: particles moved only by their gradient terms, all starting on the initial model
ALONE = {"inertia": 0.0, "cognitive": 0.0, "social": 0.0, "adaptive": False, "init_spread": 0.0}
TIGHT = {"rtol": 1e-6, "atol": 1e-8}


def _grid(lr, spread, n):
    return [lr * spread ** (2 * i / (n - 1) - 1) for i in range(n)]


def test_the_initial_rates_are_a_log_grid_around_lr():
    opt = HGPSO(TinyNet().parameters(), lr=0.01, num_particles=5, lr_spread=100.0)
    got = opt.particle_lrs().tolist()
    assert got == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0], rel=1e-12)
    one = HGPSO(TinyNet().parameters(), lr=0.01, num_particles=1, lr_spread=100.0)
    assert one.particle_lrs().tolist() == [0.01]
    plain = HGPSO(TinyNet().parameters(), lr=0.01, num_particles=3)
    assert plain.particle_lrs().tolist() == [0.01] * 3
    assert "lr_factors" not in plain.swarm


@pytest.mark.parametrize(
    "gradient, cls, kw",
    [
        ("sgd", torch.optim.SGD, {}),
        ("sgd", torch.optim.SGD, {"weight_decay": 0.1}),
        ("adam", torch.optim.Adam, {}),
        ("adam", torch.optim.AdamW, {"weight_decay": 0.1}),
    ],
    ids=["sgd", "sgd-l2", "adam", "adamw"],
)
def test_a_spread_swarm_is_n_torch_runs_at_n_learning_rates(gradient, cls, kw):
    n, lr, spread = 4, 0.02, 5.0
    batches = tiny_batches(5)
    torch.manual_seed(0)
    model = TinyNet()
    refs = [copy.deepcopy(model) for _ in range(n)]
    swarm = HGPSO(
        model.parameters(),
        lr=lr,
        num_particles=n,
        lr_spread=spread,
        gradient=gradient,
        seed=0,
        **ALONE,
        **kw,
    )
    rates = _grid(lr, spread, n)
    runs = [cls(r.parameters(), lr=rate, **kw) for r, rate in zip(refs, rates, strict=True)]
    for t, (x, y) in enumerate(batches):
        swarm.step(make_closure(swarm, model, x, y))
        for ref, opt in zip(refs, runs, strict=True):
            opt.zero_grad()
            F.cross_entropy(ref(x), y).backward()
            opt.step()
        for i, ref in enumerate(refs):
            for p, r in zip(model.parameters(), ref.parameters(), strict=True):
                got = swarm.state[p]["position"][i]
                torch.testing.assert_close(got, r.detach(), **TIGHT, msg=f"step {t}, particle {i}")


def test_the_pull_moves_every_factor_toward_the_global_bests_in_log_space():
    torch.manual_seed(1)
    model = TinyNet()
    opt = HGPSO(model.parameters(), num_particles=5, lr_spread=8.0, lr_pull=0.25, seed=2)
    for x, y in tiny_batches(3, seed=1):
        before = opt.swarm["lr_factors"].clone()
        opt.step(hgpso.vectorized_closure(model, F.cross_entropy, x, y))
        b = opt.state["swarm"]["gbest_index"]
        want = [math.exp(0.75 * math.log(m) + 0.25 * math.log(before[b])) for m in before]
        want[b] = float(before[b])
        assert opt.swarm["lr_factors"].tolist() == pytest.approx(want, rel=1e-12)
    f = opt.swarm["lr_factors"]
    assert bool(((f >= 1 / 8) & (f <= 8)).all())


def test_a_reseeded_particle_takes_the_global_bests_rate():
    torch.manual_seed(2)
    model = TinyNet()
    opt = HGPSO(model.parameters(), num_particles=4, lr_spread=4.0, seed=1)
    x, y = tiny_batches(1)[0]
    calls = [0]

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        calls[0] += 1
        return loss * float("nan") if calls[0] == 4 else loss  # particle 3 goes NaN

    opt.step(closure)
    b = opt.state["swarm"]["gbest_index"]
    factors = opt.swarm["lr_factors"].tolist()
    grid = [4.0 ** (2 * i / 3 - 1) for i in range(4)]
    assert factors[3] == factors[b] == pytest.approx(grid[b])
    assert [f for i, f in enumerate(factors) if i not in (3,)] == pytest.approx(
        [g for i, g in enumerate(grid) if i not in (3,)]
    )


def test_schedulers_scale_every_particles_rate():
    net = TinyNet()
    opt = HGPSO(net.parameters(), lr=0.1, num_particles=3, lr_spread=2.0, adaptive=False)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    before = opt.particle_lrs()
    opt.step(make_closure(opt, net, *tiny_batches(1)[0]))
    sched.step()
    torch.testing.assert_close(opt.particle_lrs(), before * 0.5)


def _trained(steps, **kw):
    torch.manual_seed(3)
    model = TinyNet()
    opt = HGPSO(model.parameters(), num_particles=4, seed=5, lr_spread=3.0, lr_pull=0.1, **kw)
    for x, y in tiny_batches(steps, seed=3):
        opt.step(make_closure(opt, model, x, y))
    return model, opt


@pytest.mark.parametrize("gradient", ["sgd", "adam"])
def test_state_dict_resumes_bit_for_bit(gradient):
    straight_model, straight = _trained(4, gradient=gradient)
    model, opt = _trained(2, gradient=gradient)
    sd = copy.deepcopy(opt.state_dict())
    fresh = HGPSO(model.parameters(), num_particles=4, lr_spread=3.0, gradient=gradient)
    fresh.load_state_dict(sd)
    assert fresh.lr_pull == 0.1
    for x, y in tiny_batches(4, seed=3)[2:]:
        fresh.step(make_closure(fresh, model, x, y))
    assert_same_state(fresh.state_dict(), straight.state_dict())
    assert_same_state(model.state_dict(), straight_model.state_dict())


@pytest.mark.parametrize(
    "tamper, match",
    [
        (lambda sw: sw.update(lr_factors=sw["lr_factors"] * 10), r"must lie in \[1/lr_spread"),
        (lambda sw: sw["lr_factors"].__setitem__(0, math.nan), r"must lie in"),
        (lambda sw: sw.update(lr_factors=sw["lr_factors"].float()), "float64 tensor of shape"),
        (lambda sw: sw.update(lr_factors=sw["lr_factors"][:3]), r"shape \(4,\)"),
        (lambda sw: sw.pop("lr_factors"), "float64 tensor of shape"),
    ],
    ids=["out-of-range", "nan", "float32", "short", "missing"],
)
def test_tampered_factors_are_refused_with_nothing_changed(tamper, match):
    _, opt = _trained(2)
    sd = copy.deepcopy(opt.state_dict())
    tamper(sd["state"]["swarm"])
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(sd)
    assert_same_state(opt.state_dict(), before)


def test_another_spread_is_refused_and_old_checkpoints_load_without_one():
    model, opt = _trained(2)
    with pytest.raises(ValueError, match=r"saved with lr_spread=3\.0, this optimizer has"):
        HGPSO(model.parameters(), num_particles=4).load_state_dict(opt.state_dict())
    plain = HGPSO(model.parameters(), num_particles=4, seed=1)
    plain.step(make_closure(plain, model, *tiny_batches(1)[0]))
    sd = plain.state_dict()
    for key in ("lr_spread", "lr_pull"):  # a checkpoint from before the options
        del sd[OPTIONS_KEY][key]
    again = HGPSO(model.parameters(), num_particles=4)
    again.load_state_dict(sd)
    assert again.lr_spread == 1.0
    sd["state"]["swarm"]["lr_factors"] = torch.ones(4, dtype=torch.float64)
    with pytest.raises(ValueError, match="holds 'lr_factors' but was saved with lr_spread=1"):
        again.load_state_dict(sd)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"lr_spread": 0.5}, r"invalid lr_spread: 0.5, expected a value in \[1.0, inf\]"),
        ({"lr_spread": math.inf}, "lr_spread must be finite"),
        ({"lr_spread": math.nan}, "lr_spread must not be NaN"),
        ({"lr_spread": True}, "lr_spread must be a real number"),
        ({"lr_pull": 1.5}, r"invalid lr_pull: 1.5, expected a value in \[0.0, 1.0\]"),
        ({"lr_pull": -0.1}, "invalid lr_pull"),
        ({"lr_spread": 2.0, "fused": True}, "fused=True cannot be combined with lr_spread > 1"),
    ],
)
def test_bad_values_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        HGPSO(TinyNet().parameters(), **kw)


def test_the_spread_is_fixed_and_the_pull_can_change():
    opt = HGPSO(TinyNet().parameters(), lr_spread=2.0)
    with pytest.raises(AttributeError, match="lr_spread is fixed when the optimizer is built"):
        opt.lr_spread = 3.0
    opt.lr_pull = 0.5
    assert opt.lr_pull == 0.5
    pso = hgpso.PSO(TinyNet().parameters(), num_particles=3)
    assert pso.lr_spread == 1.0
    assert "lr_factors" not in pso.swarm
