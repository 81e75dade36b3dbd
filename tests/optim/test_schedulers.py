"""Every torch.optim.lr_scheduler class drives HGPSO with its default arguments.

``lr`` schedules write the group's ``lr``; ``OneCycleLR`` and ``CyclicLR`` (whose default
``cycle_momentum=True`` cycles ``group["momentum"]``) drive the inertia, because in a
swarm's param group ``momentum`` is another name for ``inertia``. Scheduler and optimizer
state resume bit for bit. The swarms here use ``gradient="sgd"``: with ``"adam"`` (the
default) the groups hold ``betas`` and those schedulers cycle ``betas[0]`` instead
(tests/optim/test_gradient_term.py).
"""

import copy
import inspect
import math
import pickle
import re

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler as S

from hgpso import HGPSO, PSO
from hgpso.optim import gradient_defaults
from tests.helpers import TinyNet, make_closure

#: every scheduler with only its required arguments (the rest at torch's defaults)
SCHEDULERS = {
    "LambdaLR": lambda o: S.LambdaLR(o, lambda e: 0.9**e),
    "MultiplicativeLR": lambda o: S.MultiplicativeLR(o, lambda e: 0.9),
    "StepLR": lambda o: S.StepLR(o, 2),
    "MultiStepLR": lambda o: S.MultiStepLR(o, [1, 3]),
    "ConstantLR": lambda o: S.ConstantLR(o),
    "LinearLR": lambda o: S.LinearLR(o),
    "ExponentialLR": lambda o: S.ExponentialLR(o, 0.9),
    "PolynomialLR": lambda o: S.PolynomialLR(o),
    "CosineAnnealingLR": lambda o: S.CosineAnnealingLR(o, 5),
    "CosineAnnealingWarmRestarts": lambda o: S.CosineAnnealingWarmRestarts(o, 2),
    "CyclicLR": lambda o: S.CyclicLR(o, 1e-3, 1e-2, step_size_up=2),
    "CyclicLR-no-momentum": lambda o: S.CyclicLR(o, 1e-3, 1e-2, cycle_momentum=False),
    "OneCycleLR": lambda o: S.OneCycleLR(o, 1e-2, total_steps=10),
    "OneCycleLR-no-momentum": lambda o: S.OneCycleLR(o, 1e-2, total_steps=10, cycle_momentum=False),
    "ReduceLROnPlateau": lambda o: S.ReduceLROnPlateau(o, patience=0),
    "SequentialLR": lambda o: S.SequentialLR(o, [S.ConstantLR(o), S.ExponentialLR(o, 0.9)], [2]),
    "ChainedScheduler": lambda o: S.ChainedScheduler([S.ConstantLR(o), S.ExponentialLR(o, 0.9)]),
}
CYCLES_MOMENTUM = {"CyclicLR", "OneCycleLR"}


def test_every_scheduler_class_of_torch_is_covered():
    classes = {
        name
        for name, cls in vars(S).items()
        if inspect.isclass(cls)
        and issubclass(cls, S.LRScheduler)
        and cls is not S.LRScheduler
        and not name.startswith("_")
    }
    assert classes, "no scheduler found in torch.optim.lr_scheduler"
    assert classes <= {name.split("-")[0] for name in SCHEDULERS}


def _run(opt, sched, model, x, y, steps):
    seen = []
    for _ in range(steps):
        g = opt.param_groups[0]
        before = (g["lr"], g["inertia"], g["momentum"])
        loss = opt.step(make_closure(opt, model, x, y))
        sched.step(loss) if isinstance(sched, S.ReduceLROnPlateau) else sched.step()
        seen.append(before)
    return seen


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_scheduler_drives_hgpso_and_resumes_bit_for_bit(name):
    torch.manual_seed(0)
    model = TinyNet()
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    opt = HGPSO(model.parameters(), num_particles=3, seed=0, gradient="sgd")
    sched = SCHEDULERS[name](opt)
    seen = _run(opt, sched, model, x, y, 2)
    saved = copy.deepcopy((model.state_dict(), opt.state_dict(), sched.state_dict()))
    seen += _run(opt, sched, model, x, y, 3)
    lrs = [lr for lr, _, _ in seen]
    inertias = [w for _, w, _ in seen]
    assert all(w == m for _, w, m in seen)  # one value under two names
    if name != "ReduceLROnPlateau":  # the plateau rule may legitimately keep lr
        assert len(set(lrs)) > 1 or name == "ConstantLR"
    # the momentum-cycling schedulers move the inertia; the others leave it alone
    assert (len(set(inertias)) > 1) == (name in CYCLES_MOMENTUM)
    model2 = TinyNet()
    model2.load_state_dict(saved[0])
    opt2 = HGPSO(model2.parameters(), num_particles=3, gradient="sgd")
    sched2 = SCHEDULERS[name](opt2)
    opt2.load_state_dict(saved[1])
    sched2.load_state_dict(saved[2])
    assert _run(opt2, sched2, model2, x, y, 3) == seen[2:]
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)
    for p, p2 in zip(model.parameters(), model2.parameters(), strict=True):
        for key in ("position", "velocity", "gbest"):
            assert torch.equal(opt.state[p][key], opt2.state[p2][key])
    assert opt.param_groups[0].keys() == opt2.param_groups[0].keys()
    for key, value in opt.param_groups[0].items():
        if key != "params":
            assert opt2.param_groups[0][key] == value, key


def _cos(start, end, pct):
    """Cosine annealing from ``start`` to ``end`` as ``pct`` goes 0 -> 1."""
    return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)


def _one_cycle(t, total, max_lr, base_m=0.85, max_m=0.95):
    """OneCycleLR's defaults by hand: pct_start=0.3, cosine, div_factor=25,
    final_div_factor=1e4; momentum inversely, max_m -> base_m -> max_m."""
    first = 0.3 * total - 1  # end of the warm-up phase
    start_lr = max_lr / 25
    if t <= first:
        pct = t / first
        return _cos(start_lr, max_lr, pct), _cos(max_m, base_m, pct)
    pct = (t - first) / (total - 1 - first)
    return _cos(max_lr, start_lr / 1e4, pct), _cos(base_m, max_m, pct)


def test_one_cycle_momentum_is_the_inertia_the_update_uses():
    """With c1 = c2 = 0 and a linear loss (gradient c everywhere) the velocity follows
    v <- m_t v - lr_t c: the recorded velocities reveal the inertia each step used."""
    total, max_lr = 10, 0.1
    w = nn.Parameter(torch.zeros(4, dtype=torch.float64))
    c = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    opt = HGPSO(
        [w],
        num_particles=2,
        gradient="sgd",
        cognitive=0.0,
        social=0.0,
        init_spread=0.0,
        adaptive=False,
    )
    sched = S.OneCycleLR(opt, max_lr, total_steps=total)

    def closure():
        opt.zero_grad()
        loss = (c * w).sum()
        loss.backward()
        return loss

    v = torch.zeros(4, dtype=torch.float64)
    for t in range(total):
        lr_t, m_t = _one_cycle(t, total, max_lr)
        g = opt.param_groups[0]
        assert g["momentum"] == pytest.approx(m_t, abs=1e-15)
        assert g["inertia"] == g["momentum"]
        assert g["lr"] == pytest.approx(lr_t, abs=1e-15)
        assert opt.effective_hyperparameters()["inertia"] == g["momentum"]
        opt.step(closure)
        sched.step()
        v = m_t * v - lr_t * c
        for i in range(2):
            torch.testing.assert_close(opt.state[w]["velocity"][i], v, rtol=1e-12, atol=1e-15)
    # the schedule did move the inertia both ways
    ms = [_one_cycle(t, total, max_lr)[1] for t in range(total)]
    assert min(ms) == pytest.approx(0.85) and ms[0] == pytest.approx(0.95)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_cyclic_lr_cycles_the_inertia_between_its_bounds():
    opt = HGPSO(nn.Linear(2, 2).parameters(), num_particles=2, gradient="sgd")
    sched = S.CyclicLR(opt, 1e-3, 1e-2, step_size_up=2)  # momentum 0.9 -> 0.8 -> 0.9
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["inertia"])
        sched.step()
    assert seen == pytest.approx([0.9, 0.85, 0.8, 0.85, 0.9])


def test_pso_groups_alias_momentum_too():
    opt = PSO([{"params": nn.Linear(2, 2).parameters(), "momentum": 0.5}], num_particles=2)
    assert opt.param_groups[0]["inertia"] == 0.5
    opt.param_groups[0]["momentum"] = 0.4
    assert opt.effective_hyperparameters()["inertia"] == pytest.approx(0.4)


# ------------------------------------------------------ momentum is another name for inertia
def _params():
    return list(nn.Linear(2, 2).parameters())


def test_momentum_and_inertia_are_one_value():
    opt = HGPSO([{"params": _params(), "momentum": 0.5}, {"params": _params(), "inertia": 0.6}])
    assert [(g["inertia"], g["momentum"]) for g in opt.param_groups] == [(0.5, 0.5), (0.6, 0.6)]
    # left out, the inertia is the gradient term's default ("adam" unless given), under both names
    assert (
        opt.defaults["momentum"] == opt.defaults["inertia"] == gradient_defaults("adam")["inertia"]
    )
    for built, gradient in ((HGPSO(_params()), "adam"), (HGPSO(_params(), gradient="sgd"), "sgd")):
        want = gradient_defaults(gradient)["inertia"]
        for where in (built.defaults, built.param_groups[0]):
            assert where["momentum"] == where["inertia"] == want, (gradient, where)
    g = opt.param_groups[0]
    g["inertia"] = 0.3
    assert g["momentum"] == 0.3
    g["momentum"] = 0.2
    assert g["inertia"] == 0.2
    g.update(momentum=0.1)
    assert g["inertia"] == 0.1
    g.update({"inertia": 0.7, "momentum": 0.4})  # the last write wins
    assert (g["inertia"], g["momentum"]) == (0.4, 0.4)
    opt2 = pickle.loads(pickle.dumps(opt))
    opt2.param_groups[0]["momentum"] = 0.05
    assert opt2.param_groups[0]["inertia"] == 0.05
    opt3 = copy.deepcopy(opt)
    opt3.param_groups[1]["inertia"] = 0.25
    assert opt3.param_groups[1]["momentum"] == 0.25


def test_conflicting_momentum_and_inertia_are_refused():
    with pytest.raises(ValueError, match="momentum is another name for the swarm's inertia"):
        HGPSO([{"params": _params(), "inertia": 0.5, "momentum": 0.6}])
    opt = HGPSO(_params())
    with pytest.raises(
        ValueError, match=re.escape("param group 1 sets inertia=0.5 and momentum=0.6")
    ):
        opt.add_param_group({"params": _params(), "inertia": 0.5, "momentum": 0.6})
    with pytest.raises(ValueError, match="invalid momentum"):
        HGPSO([{"params": _params(), "momentum": -0.1}])


def test_a_bad_scheduled_value_is_refused_before_anything_moves():
    torch.manual_seed(0)
    model = TinyNet()
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    opt = HGPSO(model.parameters(), num_particles=2, seed=0)
    opt.step(make_closure(opt, model, x, y))
    before = copy.deepcopy((model.state_dict(), opt.state_dict()))
    opt.param_groups[0]["momentum"] = float("nan")
    with pytest.raises(ValueError, match="inertia must not be NaN"):
        opt.step(make_closure(opt, model, x, y))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[0][k])
    assert opt.state[next(model.parameters())]["position"].equal(before[1]["state"][0]["position"])


def test_load_state_dict_checks_momentum_against_inertia():
    model = TinyNet()
    opt = HGPSO(model.parameters(), num_particles=2, seed=0, inertia=0.9)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    opt.step(make_closure(opt, model, x, y))
    sd = opt.state_dict()
    bad = copy.deepcopy(sd)
    bad["param_groups"][0]["momentum"] = 0.1
    opt2 = HGPSO(TinyNet().parameters(), num_particles=2, inertia=0.7)
    with pytest.raises(ValueError, match=re.escape("inertia=0.9 and momentum=0.1")):
        opt2.load_state_dict(bad)
    assert opt2.param_groups[0]["inertia"] == 0.7 and not opt2.state
    # a checkpoint from before the alias (no momentum key) loads, momentum = inertia
    old = copy.deepcopy(sd)
    for g in old["param_groups"]:
        g["inertia"] = 0.6
        del g["momentum"]
    opt2.load_state_dict(old)
    g = opt2.param_groups[0]
    assert g["inertia"] == g["momentum"] == 0.6
    g["momentum"] = 0.5
    assert g["inertia"] == 0.5
