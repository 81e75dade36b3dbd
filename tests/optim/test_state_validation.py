"""Optimizer state and closures: bad state, failing steps and misuse give clear errors with
nothing lost (issue 13, "Optimizer state and closures")."""

import copy

import pytest
import torch
from torch import nn

import hgpso.functional as HF
from hgpso import HGPSO, PSO
from hgpso.optim import bookkeeping
from hgpso.optim import move as move_module
from hgpso.optim import placement as placement_module
from hgpso.optim import swarm as swarm_module
from tests.helpers import TinyNet, make_closure, same_bits


def _groups(model):
    return [
        {"params": model.fc1.parameters(), "lr": 0.05},
        {"params": model.fc2.parameters()},
    ]


def _trained(steps: int = 2, n: int = 4, groups: bool = False, **kw):
    torch.manual_seed(0)
    model = TinyNet()
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    params = _groups(model) if groups else model.parameters()
    opt = HGPSO(params, num_particles=n, seed=1, **kw)
    for _ in range(steps):
        opt.step(make_closure(opt, model, x, y))
    return model, opt, x, y


def _snapshot(model, opt):
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())


def _assert_same_state(now, then):
    assert now["state"].keys() == then["state"].keys()
    for k, entry in then["state"].items():
        assert now["state"][k].keys() == entry.keys(), k
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                assert same_bits(now["state"][k][key], value), (k, key)
            else:
                assert now["state"][k][key] == value, (k, key)


def _assert_unchanged(model, opt, snap):
    model_sd, opt_sd = snap
    for k, v in model.state_dict().items():
        assert same_bits(v, model_sd[k]), k
    _assert_same_state(opt.state_dict(), opt_sd)


# ------------------------------------------------------------------ load_state_dict
def _corrupt(sd, how):
    sd = copy.deepcopy(sd)
    if how == "broadcastable_shape":
        sd["state"][0]["position"] = sd["state"][0]["position"][:, :1]
    elif how == "missing_velocity":
        del sd["state"][2]["velocity"]
    elif how == "dtype":
        sd["state"][1]["gbest"] = sd["state"][1]["gbest"].double()
    elif how == "meta":
        sd["state"][2]["velocity"] = torch.empty_like(sd["state"][2]["velocity"], device="meta")
    elif how == "meta_losses":
        sd["state"]["swarm"]["pbest_losses"] = torch.empty(4, device="meta")
    elif how == "missing_gbest":
        del sd["state"][3]["gbest"]
    elif how == "particles_in_param":
        sd["state"][3]["velocity"] = sd["state"][3]["velocity"][:2]
    elif how == "step_string":
        sd["state"]["swarm"]["step"] = "seven"
    elif how == "gbest_index":
        sd["state"]["swarm"]["gbest_index"] = 9
    elif how == "missing_param_state":
        del sd["state"][1]
    return sd


@pytest.mark.parametrize(
    ("how", "match"),
    [
        ("broadcastable_shape", r"parameter 0 of param group 0 \(shape \(8, 6\)\)"),
        ("missing_velocity", r"lacks 'velocity' for parameter 2"),
        ("dtype", r"'gbest' of parameter 1 .* dtype torch.float64"),
        ("meta", r"'velocity' of parameter 2 of param group 0 \(shape \(3, 8\)\) .*meta"),
        ("meta_losses", r"pbest_losses'\] must be a floating tensor with data"),
        ("missing_gbest", r"lacks 'gbest' for parameter 3"),
        ("particles_in_param", r"'velocity' of parameter 3 .* shape \(2, 3\)"),
        ("step_string", r"'step'.*'seven'"),
        ("gbest_index", r"gbest_index'\]=9"),
        ("missing_param_state", r"no swarm state for parameter 1"),
    ],
)
def test_load_state_dict_validates_before_touching_anything(how, match):
    model, opt, x, y = _trained()
    bad = _corrupt(opt.state_dict(), how)
    snap = _snapshot(model, opt)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(bad)
    _assert_unchanged(model, opt, snap)
    opt.step(make_closure(opt, model, x, y))  # still usable


def test_load_state_dict_fills_keys_older_checkpoints_lack():
    model, opt, x, y = _trained()
    sd = opt.state_dict()
    for key in ("evaluations", "nan_reseeds", "lr_scale"):
        del sd["state"]["swarm"][key]
    fresh = HGPSO(model.parameters(), num_particles=4, seed=1)
    fresh.load_state_dict(sd)
    assert fresh.state["swarm"]["evaluations"] == 0
    assert fresh.state["swarm"]["lr_scale"] == 1.0
    fresh.step(make_closure(fresh, model, x, y))


# ------------------------------------------------------------------ failing steps
def _boom(*args, **kwargs):
    raise RuntimeError("injected")


def _fail_on_call(real, fail_at):
    """``real`` that raises on its ``fail_at``-th call (1-based)."""
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == fail_at:
            raise RuntimeError("injected")
        return real(*args, **kwargs)

    return wrapped


def _closure(opt, model, x, y, nan_particle=None):
    """The standard closure; particle ``nan_particle`` (0-based, per step) scores NaN."""
    calls = []

    def closure():
        k = len(calls) % opt.num_particles
        calls.append(1)
        loss = make_closure(opt, model, x, y)()
        return loss * float("nan") if k == nan_particle else loss

    return closure


STAGES = [
    "closure",
    "valid",
    "score",
    "adapt",
    "accept",
    "move_group0",
    "move_group1",
    "update_math_group1",
    "reseed",
    "write_rows",
]


@pytest.mark.parametrize("forget", [1.0, 0.5])
@pytest.mark.parametrize("stage", STAGES)
def test_a_failing_step_leaves_model_on_gbest_and_swarm_state_intact(stage, forget, monkeypatch):
    """Whatever stage fails, the model is back on the last global best and every state
    tensor, swarm value and the random stream are bit for bit what they were; the next
    (successful) step is then exactly the step an uninterrupted optimizer makes."""
    model, opt, x, y = _trained(groups=True, forget=forget)
    gbest = [g.clone() for g in opt.gbest()]
    snap = _snapshot(model, opt)
    nan_particle = 1 if stage in ("reseed", "write_rows") else None  # so the step re-seeds
    closure = _closure(opt, model, x, y, nan_particle)
    with monkeypatch.context() as mp:
        if stage == "closure":
            closure = _fail_on_call(closure, 3)  # after two particles were evaluated
        elif stage == "valid":
            mp.setattr(placement_module.Placement, "valid", _boom)
        elif stage == "score":
            mp.setattr(HF, "accept_personal_bests_", _boom)
        elif stage == "adapt":
            mp.setattr(bookkeeping, "adapt", _boom)
        elif stage == "accept":
            mp.setattr(bookkeeping, "accept_bests", _boom)
        elif stage in ("move_group0", "move_group1"):
            fail = _fail_on_call(move_module._reference_group, int(stage[-1]) + 1)
            mp.setattr(move_module, "_reference_group", fail)
        elif stage == "update_math_group1":  # inside the update arithmetic of group 1
            mp.setattr(torch, "_foreach_clamp_min_", _boom)
            opt.param_groups[1]["max_velocity"] = 0.5
        elif stage == "reseed":
            mp.setattr(bookkeeping, "fresh_rows", _boom)
        elif stage == "write_rows":
            mp.setattr(bookkeeping, "write_rows", _boom)
        with pytest.raises(RuntimeError, match="injected"):
            opt.step(closure)
    opt.param_groups[1]["max_velocity"] = None
    for p, g in zip(model.parameters(), gbest, strict=True):
        assert same_bits(p.detach(), g)
    _assert_unchanged(model, opt, snap)
    # the step after the failure is the step the optimizer would have made without it
    model2, opt2, _, _ = _trained(groups=True, forget=forget)
    opt.step(_closure(opt, model, x, y, nan_particle))
    opt2.step(_closure(opt2, model2, x, y, nan_particle))
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert same_bits(p.detach(), q.detach())
    _assert_same_state(opt.state_dict(), opt2.state_dict())
    assert opt.state["swarm"]["nan_reseeds"] == (1 if nan_particle is not None else 0)


def test_failing_step_on_the_fused_path_launches_nothing(monkeypatch):
    """The fused kernel updates in place, so its launches are deferred to the commit: a
    failure while group 1 is prepared leaves group 0 unmoved (run on the op's CPU twin)."""
    from hgpso import kernels
    from hgpso.kernels import _build

    try:
        _build.load_library(build_if_missing=False)
    except Exception as error:  # no cached or AOT build here
        pytest.skip(f"fused kernel library not built: {error}")
    monkeypatch.setattr(kernels, "_DETECTED", True)
    monkeypatch.setattr(kernels, "_LOAD_ERROR", None)
    monkeypatch.setattr(kernels, "_ALLOW_CPU_TWIN", True)
    launches = []
    real = kernels.fused_hgpso_update_

    def spy(*args, **kwargs):
        launches.append(kwargs["offset"])
        return real(*args, **kwargs)

    monkeypatch.setattr(kernels, "fused_hgpso_update_", spy)
    # the kernel implements the "sgd" gradient term only
    model, opt, x, y = _trained(groups=True, fused=True, gradient="sgd")
    assert launches == [0, 1, 2, 3]
    snap = _snapshot(model, opt)
    with monkeypatch.context() as mp:
        mp.setattr(move_module, "_fused_group", _fail_on_call(move_module._fused_group, 2))
        with pytest.raises(RuntimeError, match="injected"):
            opt.step(make_closure(opt, model, x, y))
    assert launches == [0, 1, 2, 3]
    _assert_unchanged(model, opt, snap)
    model2, opt2, _, _ = _trained(groups=True, fused=True, gradient="sgd")
    opt.step(_closure(opt, model, x, y, nan_particle=2))
    opt2.step(_closure(opt2, model2, x, y, nan_particle=2))
    _assert_same_state(opt.state_dict(), opt2.state_dict())


# ------------------------------------------------------------------ misuse
def test_hgpso_closure_without_backward_is_an_error():
    model, opt, x, y = _trained(steps=0)

    def closure():
        return nn.functional.cross_entropy(model(x), y)

    with pytest.raises(RuntimeError, match=r"must call loss\.backward"):
        opt.step(closure)


def test_parameter_without_gradient_counts_as_zero():
    torch.manual_seed(0)
    used, unused = nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(3))
    opt = HGPSO([used, unused], num_particles=3, seed=0, cognitive=0.0, social=0.0)
    opt._init_swarm()
    before = opt.state[unused]["position"].clone()
    used_before = opt.state[used]["position"].clone()

    def closure():
        opt.zero_grad()
        loss = (used**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    # zero gradient, no swarm pull, zero velocity: the unused parameter's particles stay put
    assert torch.equal(opt.state[unused]["position"], before)
    assert not torch.equal(opt.state[used]["position"][1], used_before[1])


def test_pso_closure_needs_no_backward():
    """PSO is gradient-free: a closure that only computes the loss (under no_grad, no
    backward) scores the swarm. Each step calls it once per particle, with the model on that
    particle's position; its losses become the personal bests and pick the global best; the
    particles move; no gradient is made; the model is left on the global best."""
    torch.manual_seed(0)
    model = TinyNet()
    params = list(model.parameters())
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    opt = PSO(model.parameters(), num_particles=3, forget=0.0, seed=0)
    calls = []  # (the weights the model held, the loss returned), one per call

    def closure():
        loss = nn.functional.cross_entropy(model(x), y)
        calls.append(([p.detach().clone() for p in params], loss.item()))
        return loss

    opt.swarm  # noqa: B018 (creates the swarm: the positions the particles are scored at)
    for step in range(2):
        start = [opt.state[p]["position"].clone() for p in params]
        pbests = opt.state["swarm"]["pbest_losses"].clone()
        with torch.no_grad():
            opt.step(closure)
        scored = calls[3 * step :]
        assert len(scored) == 3, f"step {step}: {len(scored)} closure calls for 3 particles"
        for i, (weights, _) in enumerate(scored):  # call i scored particle i where it stood
            for w, pos in zip(weights, start, strict=True):
                assert torch.equal(w, pos[i]), f"step {step}: call {i} was not at particle {i}"
        losses = torch.tensor([loss for _, loss in scored])
        swarm = opt.state["swarm"]
        want = losses if step == 0 else torch.minimum(pbests, losses)  # forget=0: keep bests
        torch.testing.assert_close(swarm["pbest_losses"], want)
        best = int(torch.argmin(want))
        assert swarm["gbest_index"] == best
        assert swarm["gbest_loss"] == pytest.approx(float(want[best]))
        assert swarm["evaluations"] == 3 * (step + 1)
        for p, g, pos in zip(params, opt.gbest(), start, strict=True):
            assert p.grad is None
            assert not torch.equal(opt.state[p]["position"], pos)  # the particles moved
            assert torch.equal(p.detach(), g)
        assert nn.functional.cross_entropy(model(x), y).item() == pytest.approx(
            swarm["gbest_loss"], rel=1e-6
        )


def test_same_parameter_twice_is_an_error():
    p = nn.Parameter(torch.zeros(2, 3))
    q = nn.Parameter(torch.zeros(4))
    with pytest.raises(ValueError, match=r"parameter 2 of param group 0 \(shape \(2, 3\)\)"):
        HGPSO([p, q, p])
    with pytest.raises(ValueError, match=r"parameter 0 of param group 1"):
        HGPSO([{"params": [p]}, {"params": [p]}])


def test_all_parameters_frozen_is_an_error():
    model = TinyNet()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad=True"):
        HGPSO(model.parameters())


@pytest.mark.parametrize("cls", [HGPSO, PSO])
def test_freezing_every_parameter_after_construction_is_a_clear_error(cls):
    model, opt, x, y = _trained()
    if cls is PSO:
        opt = PSO(model.parameters(), num_particles=3, seed=0)
        opt.step(lambda: nn.functional.cross_entropy(model(x), y))
    snap = _snapshot(model, opt)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(
        RuntimeError,
        match=r"requires_grad=False.*4 swarm parameter\(s\) are "
        r"frozen \(all of them are\)",
    ):
        opt.step(make_closure(opt, model, x, y))
    _assert_unchanged(model, opt, snap)


def test_impossible_swarm_size_names_num_particles_and_bytes(monkeypatch):
    p = nn.Parameter(torch.zeros(1000))

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 TiB")

    monkeypatch.setattr(swarm_module.SwarmOptimizer, "_allocate_swarm", oom)
    # "sgd", forget=1: positions, velocities and one global best, (2N + 1) copies of 4000 bytes
    opt = HGPSO([p], num_particles=10**6, gradient="sgd")
    with pytest.raises(
        RuntimeError, match=r"num_particles=1000000 for a model of 1000 parameters.* 8000004000 by"
    ):
        opt.step(lambda: p.sum())
    assert "swarm" not in opt.state and p not in opt.state
    # + personal bests: (3N + 1) copies
    opt = HGPSO([p], num_particles=10**6, forget=0.5, gradient="sgd")
    with pytest.raises(RuntimeError, match=r"personal bests.* 12000004000 bytes"):
        opt.step(lambda: p.sum())


def test_freezing_one_parameter_later_is_refused_with_nothing_lost():
    """The swarm's parameters are fixed when it is created; a parameter frozen afterwards
    would keep moving with the swarm, so the step refuses, naming it, and changes nothing.
    Unfreezing it lets training continue exactly as before."""
    model, opt, x, y = _trained()
    snap = _snapshot(model, opt)
    model.fc2.weight.requires_grad_(False)
    with pytest.raises(
        RuntimeError,
        match=r"parameter 2 of param group 0 \(shape \(3, 8\)\) now has requires_grad=False",
    ):
        opt.step(make_closure(opt, model, x, y))
    _assert_unchanged(model, opt, snap)
    model.fc2.weight.requires_grad_(True)
    opt.step(make_closure(opt, model, x, y))
    _, opt2, _, _ = _trained(steps=3)
    _assert_same_state(opt.state_dict(), opt2.state_dict())


def test_swarm_wide_options_travel_with_the_state_dict():
    model, _opt, x, y = _trained()
    # "sgd": a checkpoint from before the options were saved (below) is a "sgd" one
    opt = HGPSO(
        model.parameters(), num_particles=4, seed=5, forget=0.25, patience=7, gradient="sgd"
    )
    opt.step(make_closure(opt, model, x, y))
    sd = opt.state_dict()
    assert sd["swarm_options"]["forget"] == 0.25
    other = HGPSO(model.parameters(), num_particles=4, gradient="sgd")
    other.load_state_dict(sd)
    assert (other.forget, other.patience, other.seed) == (0.25, 7, 5)
    old = copy.deepcopy(sd)
    del old["swarm_options"]  # a checkpoint from before the options were saved
    third = HGPSO(model.parameters(), num_particles=4, forget=0.5, gradient="sgd")
    third.load_state_dict(old)
    assert third.forget == 0.5
    bad = copy.deepcopy(sd)
    bad["swarm_options"]["forget"] = 2.0
    with pytest.raises(ValueError, match="forget"):
        third.load_state_dict(bad)
    assert third.forget == 0.5


@pytest.mark.parametrize("path", ["closure", "loop", "vmap"])
def test_sparse_gradients_give_the_same_clear_error_in_every_path(path):
    import hgpso

    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4, sparse=True), nn.Flatten(), nn.Linear(8, 2))
    x, y = torch.randint(0, 10, (3, 2)), torch.randint(0, 2, (3,))
    opt = HGPSO(model.parameters(), num_particles=2, seed=0)
    if path == "closure":
        closure = make_closure(opt, model, x, y)
    else:
        closure = hgpso.vectorized_closure(model, nn.functional.cross_entropy, x, y, strategy=path)
    weights = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match=r"shape \(10, 4\) got a sparse gradient"):
        opt.step(closure)
    for p, w in zip(model.parameters(), weights, strict=True):
        assert torch.equal(p, w)
