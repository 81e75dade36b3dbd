"""The velocity's gradient term, pluggable (issue 21, part 1): ``gradient="adam"`` keeps each
particle's Adam moments; ``weight_decay`` is L2 for ``"sgd"`` and decoupled (AdamW) for
``"adam"``. One particle without swarm terms is torch's Adam/AdamW/SGD step for step; both
evaluation paths, both placements, re-seeding, checkpoints, memory and bad values."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import hgpso
import hgpso.functional as HF
from hgpso import HGPSO, PSO
from hgpso.optim import checkpoint
from tests.helpers import TinyNet, assert_same_state, make_closure, param_state_bytes, tiny_batches

#: one particle moved only by its gradient term (no inertia, no swarm pulls, no adaptation)
ALONE = {"num_particles": 1, "inertia": 0.0, "cognitive": 0.0, "social": 0.0, "adaptive": False}
#: tight: the arithmetic follows torch's order, so the runs agree to the bit on CPU
TIGHT = {"rtol": 1e-6, "atol": 1e-8}


def _torch_run(model, opt, batches):
    """torch's optimizer on ``batches``: the weights after every step."""
    out = []
    for x, y in batches:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        out.append([p.detach().clone() for p in model.parameters()])
    return out


def _swarm_run(model, opt, batches):
    """The swarm on ``batches``: particle 0's position after every step."""
    out = []
    for x, y in batches:
        opt.step(make_closure(opt, model, x, y))
        out.append([opt.state[p]["position"][0].clone() for p in model.parameters()])
    return out


def _compare(got, want, **tol):
    for t, (gs, ws) in enumerate(zip(got, want, strict=True)):
        for g, w in zip(gs, ws, strict=True):
            torch.testing.assert_close(g, w, **tol, msg=lambda m, t=t: f"step {t + 1}: {m}")


def _pair(seed=0):
    torch.manual_seed(seed)
    model = TinyNet()
    return model, copy.deepcopy(model)


# --------------------------------------------------------------- against torch.optim
@pytest.mark.parametrize(
    "kw",
    [{}, {"betas": (0.8, 0.99), "eps": 1e-6}, {"weight_decay": 0.05}],
    ids=["adam", "adam-betas-eps", "adamw"],
)
def test_one_particle_without_swarm_terms_is_adam_step_for_step(kw):
    model, ref = _pair()
    batches = tiny_batches(8)
    lr = 0.02
    swarm = HGPSO(model.parameters(), lr=lr, gradient="adam", seed=0, **ALONE, **kw)
    cls = torch.optim.AdamW if "weight_decay" in kw else torch.optim.Adam
    want = _torch_run(ref, cls(ref.parameters(), lr=lr, **kw), batches)
    _compare(_swarm_run(model, swarm, batches), want, **TIGHT)
    # the model holds the global best: the position just scored, Adam's before its last step
    for p, w in zip(model.parameters(), want[-2], strict=True):
        torch.testing.assert_close(p.detach(), w, **TIGHT)
    assert int(swarm.state["swarm"]["adam_steps"][0]) == len(batches)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_one_particle_sgd_is_torch_sgd_with_weight_decay(weight_decay):
    model, ref = _pair(1)
    batches = tiny_batches(6, seed=1)
    lr = 0.05
    swarm = HGPSO(
        model.parameters(), lr=lr, gradient="sgd", weight_decay=weight_decay, seed=0, **ALONE
    )
    want = _torch_run(
        ref, torch.optim.SGD(ref.parameters(), lr=lr, weight_decay=weight_decay), batches
    )
    _compare(_swarm_run(model, swarm, batches), want, **TIGHT)


def test_inertia_is_sgds_heavy_ball_momentum_with_the_learning_rate_folded_in():
    """SGD: buf = mu*buf + g, x -= lr*buf. HG-PSO: v = w*v - lr*g, x += v. With v = -lr*buf
    the two are the same recursion (equal up to the rounding of where lr multiplies)."""
    model, ref = _pair(2)
    batches = tiny_batches(8, seed=2)
    lr, mu, wd = 0.05, 0.9, 0.01
    kw = {**ALONE, "inertia": mu}
    swarm = HGPSO(model.parameters(), lr=lr, gradient="sgd", weight_decay=wd, seed=0, **kw)
    sgd = torch.optim.SGD(ref.parameters(), lr=lr, momentum=mu, weight_decay=wd)
    _compare(_swarm_run(model, swarm, batches), _torch_run(ref, sgd, batches), rtol=1e-5, atol=1e-6)


def test_adam_gradient_term_is_torch_adam_per_particle_with_its_own_step_count():
    """Each row of the ``(N, *S)`` tensors is one Adam with its own moments and step count."""
    torch.manual_seed(3)
    counts = [1, 4, 2]  # particle i has taken counts[i] - 1 steps before this one
    m, s, grads = torch.zeros(3, 5, 4), torch.zeros(3, 5, 4), torch.randn(7, 3, 5, 4)
    x0 = torch.randn(3, 5, 4)
    refs = [x0[i].clone().requires_grad_() for i in range(3)]
    adams = [torch.optim.Adam([r], lr=0.1, betas=(0.7, 0.9), eps=1e-3) for r in refs]
    steps = torch.zeros(3, dtype=torch.int64)
    x = x0.clone()
    for t in range(7):
        live = torch.tensor([t >= 4 - c for c in counts])  # rows start at different steps
        if not bool(live.any()):
            continue
        g = torch.where(live.view(3, 1, 1), grads[t], 0.0)
        rows = live.nonzero().flatten()
        steps = steps + live.long()
        before = (m.clone(), s.clone(), g.clone())
        terms, m2, s2 = HF.adam_gradient_term(
            [g[rows]], [m[rows]], [s[rows]], steps[rows], lr=0.1, betas=(0.7, 0.9), eps=1e-3
        )
        for name, a, b in zip(("m", "s", "g"), before, (m, s, g), strict=True):
            assert torch.equal(a, b), f"{name} was modified"  # pure
        m[rows], s[rows] = m2[0], s2[0]
        x[rows] = x[rows] + terms[0]
        for i in rows.tolist():
            refs[i].grad = grads[t][i].clone()
            adams[i].step()
    for i in range(3):
        torch.testing.assert_close(x[i], refs[i].detach(), rtol=0, atol=0)
        state = adams[i].state[refs[i]]
        torch.testing.assert_close(m[i], state["exp_avg"], rtol=0, atol=0)
        torch.testing.assert_close(s[i], state["exp_avg_sq"], rtol=0, atol=0)


def test_adam_update_is_the_swarm_pull_plus_adams_term_and_decays_the_position():
    torch.manual_seed(4)
    x, v, p, grad = (torch.randn(4, 6) for _ in range(4))
    g = torch.randn(6)
    m, s = torch.randn(4, 6) * 0.1, torch.rand(4, 6) * 0.1
    r1, r2 = torch.rand(4, 6), torch.rand(4, 6)
    hp = {"lr": 0.01, "inertia": 0.7, "cognitive": 0.3, "social": 0.2}
    steps = torch.tensor([1, 2, 3, 9])
    new = HF.hgpso_adam_update(
        [x], [v], [p], [g], [grad], [m], [s], steps, [r1.clone()], [r2], weight_decay=0.5, **hp
    )
    _, pull_v = HF.hgpso_update([x], [v], [p], [g], None, [r1.clone()], [r2], **hp)
    terms, m2, s2 = HF.adam_gradient_term([grad], [m], [s], steps, lr=hp["lr"])
    torch.testing.assert_close(new.velocities[0], pull_v[0] + terms[0])
    torch.testing.assert_close(new.positions[0], x * (1 - 0.01 * 0.5) + new.velocities[0])
    assert torch.equal(new.exp_avgs[0], m2[0]) and torch.equal(new.exp_avg_sqs[0], s2[0])
    # L2 for "sgd": the gradient plus weight_decay * x
    a = HF.hgpso_update([x], [v], [p], [g], [grad], [r1.clone()], [r2], weight_decay=0.5, **hp)
    b = HF.hgpso_update([x], [v], [p], [g], [grad + 0.5 * x], [r1.clone()], [r2], **hp)
    torch.testing.assert_close(a, b)


# ------------------------------------------------------------------ the swarm
def _adam_swarm(model, **kw):
    kw = {"num_particles": 4, "gradient": "adam", "weight_decay": 0.01, "seed": 5, **kw}
    return HGPSO(model.parameters(), lr=0.01, **kw)


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_closure_and_vectorized_paths_give_the_same_adam_swarm(strategy):
    model, model2 = _pair(6)
    a, b = _adam_swarm(model), _adam_swarm(model2)
    for x, y in tiny_batches(5, seed=6):
        a.step(make_closure(a, model, x, y))
        b.step(hgpso.vectorized_closure(model2, F.cross_entropy, x, y, strategy=strategy))
    assert_same_state(b.state_dict(), a.state_dict(), rtol=1e-5, atol=1e-6)
    assert float(a.state[next(model.parameters())]["exp_avg_sq"].min()) > 0


def _nan_closure(opt, model, x, y, bad):
    calls = [0]

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        if calls[0] == bad:
            loss = loss * math.nan
        calls[0] += 1
        loss.backward()
        return loss

    return closure


def test_a_non_finite_particle_is_reseeded_with_zero_moments_and_its_own_step_count():
    model, _ = _pair(7)
    opt = _adam_swarm(model, forget=0.5)
    data = tiny_batches(5, seed=7)
    for t, (x, y) in enumerate(data[:3]):
        opt.step(_nan_closure(opt, model, x, y, bad=1 if t == 2 else -1))
    assert opt.state["swarm"]["nan_reseeds"] == 1
    assert opt.state["swarm"]["adam_steps"].tolist() == [3, 0, 3, 3]
    for p in model.parameters():
        st = opt.state[p]
        for key in ("velocity", "exp_avg", "exp_avg_sq"):
            assert not bool(st[key][1].any()), key  # at rest, like a new particle
            assert bool(st[key][0].any()), key
    # its next step is a fresh Adam's first: m = (1 - beta1) g, s = (1 - beta2) g^2
    x, y = data[3]
    grads = {}

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        grads.setdefault(len(grads), [p.grad.clone() for p in model.parameters()])
        return loss

    opt.step(closure)
    assert opt.state["swarm"]["adam_steps"].tolist() == [4, 1, 4, 4]
    for p, g in zip(model.parameters(), grads[1], strict=True):
        torch.testing.assert_close(opt.state[p]["exp_avg"][1], 0.1 * g)
        torch.testing.assert_close(opt.state[p]["exp_avg_sq"][1], 0.001 * g * g)


@pytest.mark.parametrize("forget", [1.0, 0.5])
def test_state_dict_resumes_bit_for_bit_with_adam(forget):
    data = tiny_batches(6, seed=8)
    model, model2 = _pair(8)
    straight = _adam_swarm(model, forget=forget)
    for x, y in data:
        straight.step(make_closure(straight, model, x, y))
    first = _adam_swarm(model2, forget=forget)
    for x, y in data[:3]:
        first.step(make_closure(first, model2, x, y))
    saved = copy.deepcopy(first.state_dict())
    torch.manual_seed(999)  # another torch RNG, as in a new process
    resumed_model = TinyNet()
    resumed_model.load_state_dict(model2.state_dict())
    resumed = _adam_swarm(resumed_model, forget=forget, seed=123)
    resumed.load_state_dict(saved)
    for x, y in data[3:]:
        resumed.step(make_closure(resumed, resumed_model, x, y))
    assert_same_state(resumed.state_dict(), straight.state_dict())
    assert set(saved["state"][0]) >= {"exp_avg", "exp_avg_sq"}
    assert saved["swarm_options"]["gradient"] == "adam"
    assert saved["param_groups"][0]["betas"] == (0.9, 0.999)


def _old_checkpoint(sd):
    """``sd`` as a checkpoint from before issue 21: no gradient option, no weight_decay."""
    sd = copy.deepcopy(sd)
    del sd["swarm_options"]["gradient"]
    for group in sd["param_groups"]:
        del group["weight_decay"]
    return sd


def test_old_checkpoints_load_as_sgd_and_resume_bit_for_bit():
    data = tiny_batches(6, seed=9)
    model, model2 = _pair(9)
    kw = {"num_particles": 3, "seed": 1, "gradient": "sgd"}  # before issue 21 all were "sgd"
    straight = HGPSO(model.parameters(), **kw)
    for x, y in data:
        straight.step(make_closure(straight, model, x, y))
    first = HGPSO(model2.parameters(), **kw)
    for x, y in data[:3]:
        first.step(make_closure(first, model2, x, y))
    old = _old_checkpoint(first.state_dict())
    # a default-built optimizer ("adam") refuses it, naming the term it was saved with
    _refused_unchanged(
        HGPSO(model2.parameters(), num_particles=3, seed=1), old, r"saved with gradient='sgd'"
    )
    resumed = HGPSO(model2.parameters(), **kw)
    resumed.load_state_dict(old)
    assert resumed.gradient == "sgd" and resumed.param_groups[0]["weight_decay"] == 0.0
    for x, y in data[3:]:
        resumed.step(make_closure(resumed, model2, x, y))
    assert_same_state(resumed.state_dict(), straight.state_dict())


def _refused_unchanged(opt, sd, match):
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(sd)
    assert_same_state(opt.state_dict(), before)


def test_a_checkpoint_of_the_other_gradient_term_is_refused_with_nothing_loaded():
    model, _ = _pair(10)
    x, y = tiny_batches(1, seed=10)[0]
    adam = _adam_swarm(model)
    adam.step(make_closure(adam, model, x, y))
    sgd = HGPSO(model.parameters(), num_particles=4, seed=5, gradient="sgd")
    sgd.step(make_closure(sgd, model, x, y))
    _refused_unchanged(sgd, adam.state_dict(), r"saved with gradient='adam'.*gradient='sgd'")
    _refused_unchanged(adam, sgd.state_dict(), r"saved with gradient='sgd'.*gradient='adam'")
    old = _old_checkpoint(sgd.state_dict())  # an old checkpoint is a "sgd" one
    _refused_unchanged(adam, old, r"saved with gradient='sgd'")


def _tamper(sd, how):
    sd = copy.deepcopy(sd)
    st = sd["state"][0]
    if how == "shape":
        st["exp_avg"] = st["exp_avg"][:2]
    elif how == "dtype":
        st["exp_avg_sq"] = st["exp_avg_sq"].double()
    elif how == "missing":
        del st["exp_avg_sq"]
    elif how == "steps-dtype":
        sd["state"]["swarm"]["adam_steps"] = sd["state"]["swarm"]["adam_steps"].float()
    elif how == "steps-shape":
        sd["state"]["swarm"]["adam_steps"] = sd["state"]["swarm"]["adam_steps"][:3]
    elif how == "steps-missing":
        del sd["state"]["swarm"]["adam_steps"]
    elif how == "steps-negative":
        sd["state"]["swarm"]["adam_steps"][0] = -1
    return sd


@pytest.mark.parametrize(
    "how,match",
    [
        ("shape", r"'exp_avg' of parameter 0 .* has shape \(2, 8, 6\), expected \(4, 8, 6\)"),
        ("dtype", r"'exp_avg_sq' of parameter 0 .* dtype torch.float64"),
        ("missing", r"lacks 'exp_avg_sq' for parameter 0"),
        ("steps-dtype", r"adam_steps'\] must be an int64 tensor of shape \(4,\)"),
        ("steps-shape", r"adam_steps'\] must be an int64 tensor of shape \(4,\)"),
        ("steps-missing", r"adam_steps'\] must be an int64 tensor"),
        ("steps-negative", r"adam_steps'\] must hold non-negative counts"),
    ],
)
def test_checkpoint_validates_the_moments_before_anything_loads(how, match):
    model, _ = _pair(11)
    x, y = tiny_batches(1, seed=11)[0]
    opt = _adam_swarm(model)
    opt.step(make_closure(opt, model, x, y))
    _refused_unchanged(opt, _tamper(opt.state_dict(), how), match)


def test_moments_are_per_particle_rows_merged_and_sliced_for_resharding():
    assert {"exp_avg", "exp_avg_sq"} <= set(checkpoint._ROW_KEYS)
    model, _ = _pair(12)
    x, y = tiny_batches(1, seed=12)[0]
    opt = _adam_swarm(model, distributed="sharded", num_particles=5)
    opt.step(make_closure(opt, model, x, y))
    full = opt.state_dict()
    shards = []
    for start, stop in ((0, 3), (3, 5)):  # two ranks' shares, cut by hand
        sd = copy.deepcopy(full)
        for pid, st in sd["state"].items():
            if pid != "swarm":
                for key in ("position", "velocity", "exp_avg", "exp_avg_sq"):
                    st[key] = st[key][start:stop]
        sd["state"]["swarm"]["shard"] = {"world_size": 2, "rank": 0, "start": start, "stop": stop}
        shards.append(sd)
    merged = checkpoint.merge_shards(shards, 5)
    for pid, st in full["state"].items():
        if pid != "swarm":
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(merged["state"][pid][key], st[key])
    assert torch.equal(merged["state"]["swarm"]["adam_steps"], full["state"]["swarm"]["adam_steps"])


def test_sharded_and_replicated_swarms_both_run_adam():
    data = tiny_batches(4, seed=13)
    runs = {}
    for mode in ("replicated", "sharded"):
        for spread in (0.0, 0.01):
            model, _ = _pair(13)
            kw = {"distributed": mode, "init_spread": spread}
            if spread == 0.0:  # no randoms in play: the two placements move alike
                kw.update(cognitive=0.0, social=0.0)
            opt = _adam_swarm(model, **kw)
            for x, y in data:
                opt.step(make_closure(opt, model, x, y))
            runs[mode, spread] = opt
            for p in model.parameters():
                assert opt.state[p]["exp_avg"].shape == (4, *p.shape)
                assert bool(torch.isfinite(opt.state[p]["position"]).all())
            assert opt.state["swarm"]["adam_steps"].tolist() == [4] * 4
    a, b = runs["replicated", 0.0].state_dict(), runs["sharded", 0.0].state_dict()
    for pid in a["state"]:
        if pid != "swarm":
            for key in ("position", "velocity", "exp_avg", "exp_avg_sq", "gbest"):
                torch.testing.assert_close(b["state"][pid][key], a["state"][pid][key], **TIGHT)


# ------------------------------------------------------------------ memory
@pytest.mark.parametrize("n", [1, 5])
@pytest.mark.parametrize("forget,copies", [(1.0, 4), (0.5, 5)])
def test_adam_state_is_4n_plus_1_model_copies_at_forget_one(n, forget, copies):
    model, _ = _pair(14)
    opt = _adam_swarm(model, num_particles=n, forget=forget)
    x, y = tiny_batches(1, seed=14)[0]
    opt.step(make_closure(opt, model, x, y))
    p_count = sum(p.numel() for p in model.parameters())
    assert param_state_bytes(opt) == (copies * n + 1) * p_count * 4
    swarm_bytes = sum(
        t.numel() * t.element_size()
        for t in opt.state["swarm"].values()
        if isinstance(t, torch.Tensor)
    )
    assert swarm_bytes == n * 4 + n * 8  # best losses (float32) and step counts (int64)
    sgd = HGPSO(model.parameters(), num_particles=n, forget=forget, gradient="sgd")
    sgd.step(make_closure(sgd, model, x, y))
    assert param_state_bytes(sgd) == ((copies - 2) * n + 1) * p_count * 4


# ------------------------------------------------------------------ defaults per term
def _lr_inertia(opt):
    """``lr``, ``inertia`` (and its alias ``momentum``) of the defaults and of every group."""
    return [
        {k: d[k] for k in ("lr", "inertia", "momentum")} for d in (opt.defaults, *opt.param_groups)
    ]


@pytest.mark.parametrize("gradient", sorted(hgpso.optim.GRADIENT_DEFAULTS))
def test_left_out_lr_and_inertia_take_the_gradient_terms_defaults(gradient):
    """``lr=None``/``inertia=None`` (left out) resolve, when the optimizer is built, to
    ``GRADIENT_DEFAULTS[gradient]``: floats in the defaults and in every group, never None;
    values that are passed, even ``inertia=0.0`` or a group's own ``lr``, win."""
    want = hgpso.optim.gradient_defaults(gradient)
    assert want == dict(hgpso.optim.GRADIENT_DEFAULTS[gradient]) and set(want) == {"lr", "inertia"}
    lr, w = want["lr"], want["inertia"]
    model, _ = _pair(22)
    fc1, fc2 = list(model.fc1.parameters()), list(model.fc2.parameters())
    built = HGPSO(model.parameters(), gradient=gradient)
    assert built.gradient == gradient
    assert _lr_inertia(built) == [{"lr": lr, "inertia": w, "momentum": w}] * 2
    for row in _lr_inertia(built):
        assert all(type(v) is float for v in row.values()), row  # resolved: no None left
    given = HGPSO(model.parameters(), gradient=gradient, lr=0.25, inertia=0.0)
    assert _lr_inertia(given) == [{"lr": 0.25, "inertia": 0.0, "momentum": 0.0}] * 2
    only_inertia = HGPSO(model.parameters(), gradient=gradient, inertia=0.5)
    assert _lr_inertia(only_inertia) == [{"lr": lr, "inertia": 0.5, "momentum": 0.5}] * 2
    grouped = HGPSO([{"params": fc1, "lr": 0.3}, {"params": fc2}], gradient=gradient)
    assert _lr_inertia(grouped) == [
        {"lr": lr, "inertia": w, "momentum": w},
        {"lr": 0.3, "inertia": w, "momentum": w},
        {"lr": lr, "inertia": w, "momentum": w},
    ]
    # the resolved values are the ones the update uses: the same swarm as passing them
    model2 = copy.deepcopy(model)
    a = HGPSO(model.parameters(), gradient=gradient, num_particles=3, seed=4)
    b = HGPSO(model2.parameters(), gradient=gradient, num_particles=3, seed=4, lr=lr, inertia=w)
    for x, y in tiny_batches(2, seed=22):
        a.step(make_closure(a, model, x, y))
        b.step(make_closure(b, model2, x, y))
    assert_same_state(a.state_dict(), b.state_dict())


def test_the_default_gradient_term_is_adam_with_its_defaults():
    model, _ = _pair(23)
    opt = HGPSO(model.parameters())
    assert opt.gradient == "adam" and opt.defaults["swarm_options"]["gradient"] == "adam"
    want = hgpso.optim.gradient_defaults("adam")
    assert _lr_inertia(opt) == [{**want, "momentum": want["inertia"]}] * 2


# ------------------------------------------------------------------ refusals
def test_fused_with_adam_is_refused_at_construction():
    model, _ = _pair(15)
    with pytest.raises(ValueError, match=r"fused=True cannot be combined with gradient='adam'"):
        HGPSO(model.parameters(), gradient="adam", fused=True)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"gradient": "adamw"}, r"invalid gradient: 'adamw', expected 'sgd' or 'adam'"),
        ({"gradient": None}, r"invalid gradient: None, expected 'sgd' or 'adam'"),
        ({"gradient": "adam", "betas": (1.0, 0.999)}, r"invalid betas\[0\]: 1.0, .*\[0.0, 1.0\)"),
        ({"gradient": "adam", "betas": (0.9, -0.1)}, r"invalid betas\[1\]: -0.1"),
        ({"gradient": "adam", "betas": (0.9,)}, r"betas must be a pair"),
        ({"gradient": "adam", "betas": (0.9, math.nan)}, r"betas\[1\] must not be NaN"),
        ({"gradient": "adam", "eps": -1e-8}, r"invalid eps: -1e-08, expected a value in \[0.0"),
        ({"gradient": "adam", "eps": math.inf}, r"eps must be finite"),
        ({"weight_decay": -0.1}, r"invalid weight_decay: -0.1, expected a value in \[0.0"),
        ({"gradient": "adam", "weight_decay": math.inf}, r"weight_decay must be finite"),
        ({"gradient": "sgd", "betas": (0.5, 0.9)}, r"no effect with gradient='sgd'"),
    ],
)
def test_bad_values_are_refused_naming_the_argument(kw, match):
    model, _ = _pair(16)
    with pytest.raises(ValueError, match=match):
        HGPSO(model.parameters(), **kw)


def test_bad_group_values_are_refused_before_anything_changes():
    model, _ = _pair(17)
    x, y = tiny_batches(1, seed=17)[0]
    opt = _adam_swarm(model)
    opt.step(make_closure(opt, model, x, y))
    before = copy.deepcopy(opt.state_dict())
    for key, value in (("betas", (0.9, 1.0)), ("eps", -1.0), ("weight_decay", -1.0)):
        group = opt.param_groups[0]
        good = group[key]
        group[key] = value
        with pytest.raises(ValueError, match=key.replace("betas", r"betas\[1\]")):
            opt.step(make_closure(opt, model, x, y))
        group[key] = good
        assert_same_state(opt.state_dict(), before)
    with pytest.raises(ValueError, match=r"invalid weight_decay"):
        HGPSO([{"params": [next(model.parameters())], "weight_decay": -2.0}])


def test_the_gradient_term_is_fixed_and_pso_has_none():
    model, _ = _pair(18)
    opt = _adam_swarm(model)
    with pytest.raises(AttributeError, match="gradient is fixed when the optimizer is built"):
        opt.gradient = "sgd"
    for kw in ({"gradient": "adam"}, {"weight_decay": 0.1}):
        with pytest.raises(TypeError):
            PSO(model.parameters(), **kw)
    assert "weight_decay" not in PSO(model.parameters()).defaults


def test_one_cycle_cycles_beta1_with_adam_and_inertia_with_sgd():
    """torch's OneCycleLR/CyclicLR cycle ``betas[0]`` when the defaults hold ``betas`` (as for
    Adam), ``momentum`` otherwise: only ``gradient="adam"`` swarms have ``betas``."""
    model, _ = _pair(19)
    x, y = tiny_batches(1, seed=19)[0]
    for gradient, moved in (("adam", "betas"), ("sgd", "inertia")):
        opt = HGPSO(model.parameters(), num_particles=2, gradient=gradient)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.01, total_steps=10)
        before = copy.deepcopy(opt.param_groups[0])
        opt.step(make_closure(opt, model, x, y))
        sched.step()
        assert opt.param_groups[0][moved] != before[moved]
        if gradient == "adam":
            assert opt.param_groups[0]["inertia"] == before["inertia"]


def test_one_step_count_for_every_particle_is_the_same_as_a_tensor_of_it():
    torch.manual_seed(20)
    g, m, s = torch.randn(3, 4), torch.randn(3, 4), torch.rand(3, 4)
    a = HF.adam_gradient_term([g], [m], [s], 5, lr=0.1)
    b = HF.adam_gradient_term([g], [m], [s], torch.tensor([5, 5, 5]), lr=0.1)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        HF.adam_gradient_term([g], [m], [s], 0, lr=0.1)


def test_the_fused_path_gets_sgds_weight_decay_in_the_gradient(monkeypatch):
    """The kernel computes ``v -= lr*grad``; the move hands it ``grad + weight_decay*x`` (the
    kernel itself is stood in for by the reference, as on a machine without CUDA)."""
    from hgpso import kernels
    from hgpso.optim import move as move_
    from hgpso.optim.random import SwarmRandom

    def stand_in(xs, vs, ps, gs, grs, *, seed, offset, **kw):
        zeros = [torch.zeros_like(x) for x in xs]
        HF.hgpso_update_(xs, vs, ps, gs, grs, zeros, zeros, **kw)

    monkeypatch.setattr(kernels, "supports_device", lambda device: True)
    monkeypatch.setattr(kernels, "fused_hgpso_update_", stand_in)
    torch.manual_seed(21)
    x, v, grad = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5)
    hp = {"lr": 0.1, "inertia": 0.5, "cognitive": 0.0, "social": 0.0, "max_velocity": None}

    def group():
        return move_.GroupMove(
            0, [0], [x.clone()], [v.clone()], [x], [x[0]], [grad], **hp, weight_decay=0.3
        )

    new_x, new_v, launch = move_._fused_group(group(), 0, 0)
    launch()
    ref = move_._reference_group(group(), SwarmRandom(torch.device("cpu"), 0))
    torch.testing.assert_close(new_x[0], ref["position"][0])
    torch.testing.assert_close(new_v[0], ref["velocity"][0])
    torch.testing.assert_close(new_v[0], 0.5 * v - 0.1 * (grad + 0.3 * x))
