"""Optimizer state and closures: bad state, failing steps and misuse give clear errors with
nothing lost (issue 13, "Optimizer state and closures")."""

import copy

import pytest
import torch
from torch import nn

import hgpso.functional as HF
from hgpso import HGPSO, PSO
from hgpso.optim import swarm as swarm_module
from tests.conftest import TinyNet, make_closure


def _trained(steps: int = 2, n: int = 4):
    torch.manual_seed(0)
    model = TinyNet()
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    opt = HGPSO(model.parameters(), num_particles=n, seed=1)
    for _ in range(steps):
        opt.step(make_closure(opt, model, x, y))
    return model, opt, x, y


def _snapshot(model, opt):
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())


def _assert_unchanged(model, opt, snap):
    model_sd, opt_sd = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, model_sd[k]), k
    now = opt.state_dict()
    assert now["state"].keys() == opt_sd["state"].keys()
    for k, entry in opt_sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(now["state"][k][key], value), (k, key)
            else:
                assert now["state"][k][key] == value, (k, key)


# ------------------------------------------------------------------ load_state_dict
def _corrupt(sd, how):
    sd = copy.deepcopy(sd)
    if how == "broadcastable_shape":
        sd["state"][0]["position"] = sd["state"][0]["position"][:, :1]
    elif how == "missing_velocity":
        del sd["state"][2]["velocity"]
    elif how == "dtype":
        sd["state"][1]["pbest"] = sd["state"][1]["pbest"].double()
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
        ("dtype", r"'pbest' of parameter 1 .* dtype torch.float64"),
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


@pytest.mark.parametrize(
    "stage", ["closure", "valid", "score", "adapt", "accept", "update", "reseed"]
)
def test_a_failing_step_leaves_model_on_gbest_and_swarm_state_intact(stage, monkeypatch):
    model, opt, x, y = _trained()
    gbest = [g.clone() for g in opt.gbest()]
    snap = _snapshot(model, opt)
    closure = make_closure(opt, model, x, y)
    if stage == "closure":
        calls = []

        def closure():  # fails on the third particle, after two evaluations
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("injected")
            return make_closure(opt, model, x, y)()

    elif stage == "valid":
        monkeypatch.setattr(swarm_module.SwarmOptimizer, "_valid_particles", _boom)
    elif stage == "score":
        monkeypatch.setattr(HF, "accept_personal_bests_", _boom)
    elif stage == "adapt":
        monkeypatch.setattr(swarm_module.SwarmOptimizer, "_adapt", _boom)
    elif stage == "accept":
        monkeypatch.setattr(swarm_module.SwarmOptimizer, "_accept_bests", _boom)
    elif stage == "update":
        monkeypatch.setattr(HF, "hgpso_update_", _boom)
    elif stage == "reseed":
        monkeypatch.setattr(swarm_module.SwarmOptimizer, "_reseed", _boom)
        closure_ok, calls = closure, []

        def closure():  # particle 1 is non-finite, so the step re-seeds it
            calls.append(1)
            loss = closure_ok()
            return loss * float("nan") if len(calls) == 2 else loss

    with pytest.raises(RuntimeError, match="injected"):
        opt.step(closure)
    for p, g in zip(model.parameters(), gbest, strict=True):
        assert torch.equal(p, g)
    if stage in ("closure", "valid", "score", "adapt", "accept"):
        _assert_unchanged(model, opt, snap)  # every state tensor and swarm value
    else:  # after the commit began: swarm-wide values and the random stream are restored
        now = opt.state_dict()["state"]["swarm"]
        for key, value in snap[1]["state"]["swarm"].items():
            if key == "pbest_losses":
                assert torch.equal(now[key], value)
            elif key != "rng_state":
                assert now[key] == value, key


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

    def closure():
        opt.zero_grad()
        loss = (used**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    # zero gradient, no swarm pull, zero velocity: the unused parameter's particles stay put
    assert torch.equal(opt.state[unused]["position"], before)
    assert not torch.equal(opt.state[used]["position"][1], opt.state[used]["pbest"][1])


def test_pso_closure_needs_no_backward():
    torch.manual_seed(0)
    model = TinyNet()
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    opt = PSO(model.parameters(), num_particles=3, seed=0)
    with torch.no_grad():
        opt.step(lambda: nn.functional.cross_entropy(model(x), y))


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


def test_impossible_swarm_size_names_num_particles_and_bytes(monkeypatch):
    p = nn.Parameter(torch.zeros(1000))

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 TiB")

    opt = HGPSO([p], num_particles=10**6)
    monkeypatch.setattr(swarm_module.SwarmOptimizer, "_allocate_swarm", oom)
    with pytest.raises(RuntimeError, match=r"num_particles=1000000.*12000000000 bytes"):
        opt.step(lambda: p.sum())
    assert "swarm" not in opt.state and p not in opt.state


def test_freezing_a_layer_later_does_not_reshape_the_swarm():
    model, opt, x, y = _trained()
    shapes = {k: v["position"].shape for k, v in opt.state_dict()["state"].items() if k != "swarm"}
    model.fc1.weight.requires_grad_(False)
    opt.step(make_closure(opt, model, x, y))  # its gradient is now absent: counts as zero
    after = opt.state_dict()["state"]
    assert {k: v["position"].shape for k, v in after.items() if k != "swarm"} == shapes
    assert torch.equal(model.fc1.weight, opt.gbest()[0])


def test_swarm_wide_options_travel_with_the_state_dict():
    model, _opt, x, y = _trained()
    opt = HGPSO(model.parameters(), num_particles=4, seed=5, forget=0.25, patience=7)
    opt.step(make_closure(opt, model, x, y))
    sd = opt.state_dict()
    assert sd["swarm_options"]["forget"] == 0.25
    other = HGPSO(model.parameters(), num_particles=4)
    other.load_state_dict(sd)
    assert (other.forget, other.patience, other.seed) == (0.25, 7, 5)
    old = copy.deepcopy(sd)
    del old["swarm_options"]  # a checkpoint from before the options were saved
    third = HGPSO(model.parameters(), num_particles=4, forget=0.5)
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
