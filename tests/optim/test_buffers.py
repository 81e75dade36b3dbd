"""Per-particle buffers (BatchNorm running statistics) in the closure and vectorized paths."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hgpso
from hgpso import HGPSO
from tests.helpers import make_closure

PATHS = ["closure", "vmap", "loop"]


def bn_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def closure_for(path, opt, model, x, y, chunk_size=None):
    if path == "closure":
        return make_closure(opt, model, x, y)
    return hgpso.vectorized_closure(
        model, F.cross_entropy, x, y, strategy=path, chunk_size=chunk_size
    )


def model_buffers(model) -> dict:
    return {n: b.detach().clone() for n, b in model.named_buffers()}


def assert_model_holds_gbest(opt, model):
    swarm = opt.state["swarm"]
    live = dict(model.named_buffers())
    assert set(swarm["gbest_buffers"]) == set(live)
    for name, value in swarm["gbest_buffers"].items():
        assert torch.equal(live[name], value), name
    for p, g in zip(model.parameters(), opt.gbest(), strict=True):
        assert torch.equal(p, g)


@pytest.mark.parametrize("path", PATHS)
def test_model_gets_the_global_best_particles_own_statistics(path):
    """Issue 9's reproduction: one step from a fresh Linear-BN-ReLU-Linear, 8 particles.
    Before, the closure path left statistics mixed from all 8 particles in the model."""
    torch.manual_seed(0)
    model = bn_mlp()
    x, y = torch.randn(32, 10), torch.randint(0, 3, (32,))
    opt = HGPSO(model.parameters(), num_particles=8, init_spread=0.3, seed=0)
    opt.step(closure_for(path, opt, model, x, y))
    # the model holds the global best's weights; its BatchNorm saw fc1(x) with those weights
    h = F.linear(x, model[0].weight, model[0].bias).detach()
    bn = model[1]
    torch.testing.assert_close(bn.running_mean, 0.1 * h.mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * h.var(0, unbiased=True))
    assert int(bn.num_batches_tracked) == 1  # one forward pass of its own, not 8


@pytest.mark.parametrize("path", PATHS)
def test_every_particle_keeps_its_own_statistics(path):
    torch.manual_seed(1)
    model = bn_mlp()
    x, y = torch.randn(16, 10), torch.randint(0, 3, (16,))
    opt = HGPSO(model.parameters(), num_particles=4, init_spread=0.3, seed=3)
    opt.swarm  # noqa: B018 (creates the swarm: the positions particle i is scored at)
    fc1_w, fc1_b = opt.state[model[0].weight], opt.state[model[0].bias]
    w0, b0 = fc1_w["position"].clone(), fc1_b["position"].clone()
    opt.step(closure_for(path, opt, model, x, y))
    rows = opt.state["swarm"]["buffers"]
    assert set(rows) == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    assert rows["1.running_mean"].shape == (4, 16)
    for i in range(4):  # each row is what particle i's own forward pass gives
        h = x @ w0[i].T + b0[i]
        torch.testing.assert_close(rows["1.running_mean"][i], 0.1 * h.mean(0), rtol=0, atol=1e-6)
        torch.testing.assert_close(rows["1.running_var"][i], 0.9 + 0.1 * h.var(0))
    assert torch.equal(rows["1.num_batches_tracked"], torch.ones(4, dtype=torch.long))
    assert_model_holds_gbest(opt, model)
    b = opt.state["swarm"]["gbest_index"]
    assert torch.equal(
        opt.state["swarm"]["gbest_buffers"]["1.running_mean"], rows["1.running_mean"][b]
    )


@pytest.mark.parametrize("path,chunk_size", [("vmap", None), ("vmap", 3), ("loop", None)], ids=str)
@pytest.mark.parametrize("forget", [1.0, 0.3])
def test_closure_and_vectorized_paths_agree_with_batchnorm(path, chunk_size, forget):
    torch.manual_seed(2)
    model = bn_mlp()
    model2 = copy.deepcopy(model)
    # "sgd": the bias before the BatchNorm has a gradient of rounding noise only (the norm
    # removes it), and "adam"'s normalized step turns that noise into moves of about lr
    kw = {"num_particles": 5, "init_spread": 0.2, "seed": 7, "forget": forget, "gradient": "sgd"}
    a, b = HGPSO(model.parameters(), **kw), HGPSO(model2.parameters(), **kw)
    for step in range(4):
        x, y = torch.randn(12, 10), torch.randint(0, 3, (12,))
        a.step(closure_for("closure", a, model, x, y))
        b.step(closure_for(path, b, model2, x, y, chunk_size=chunk_size))
        sa, sb = a.state["swarm"], b.state["swarm"]
        assert sa["gbest_index"] == sb["gbest_index"], step
        keys = ["buffers", "gbest_buffers"] + (["pbest_buffers"] if forget < 1 else [])
        for key in keys:
            for name in sa[key]:
                torch.testing.assert_close(sa[key][name], sb[key][name], rtol=1e-4, atol=1e-5)
        for pa, pb in zip(model.parameters(), model2.parameters(), strict=True):
            torch.testing.assert_close(a.state[pa]["position"], b.state[pb]["position"])
        for (na, ba), (nb, bb) in zip(model.named_buffers(), model2.named_buffers(), strict=True):
            assert na == nb
            torch.testing.assert_close(ba, bb, rtol=1e-4, atol=1e-5)
        assert_model_holds_gbest(a, model)
        assert_model_holds_gbest(b, model2)
    assert "pbest_buffers" in a.state["swarm"] or forget == 1.0


@pytest.mark.parametrize("path", ["vmap", "loop"])
def test_gradient_free_pso_keeps_per_particle_statistics_in_every_path(path):
    torch.manual_seed(13)
    model = bn_mlp()
    model2 = copy.deepcopy(model)
    x, y = torch.randn(12, 10), torch.randint(0, 3, (12,))
    a = hgpso.PSO(model.parameters(), num_particles=4, init_spread=0.2, seed=2)
    b = hgpso.PSO(model2.parameters(), num_particles=4, init_spread=0.2, seed=2)

    def plain():
        return F.cross_entropy(model(x), y)

    for _ in range(3):
        a.step(plain)
        b.step(hgpso.vectorized_closure(model2, F.cross_entropy, x, y, strategy=path))
    for name, rows in a.state["swarm"]["buffers"].items():
        torch.testing.assert_close(b.state["swarm"]["buffers"][name], rows)
    assert_model_holds_gbest(a, model)
    assert_model_holds_gbest(b, model2)


def test_personal_best_keeps_the_buffers_of_its_own_position():
    """With forget < 1 a best can be an older position: its buffers are the ones that
    position's forward pass left, not the particle's latest."""
    torch.manual_seed(3)
    model = bn_mlp()
    # classic rule on a fixed batch, steps large enough that particles often get worse
    opt = HGPSO(model.parameters(), num_particles=4, init_spread=0.3, seed=1, forget=0.0, lr=5.0)
    x, y = torch.randn(8, 10), torch.randint(0, 3, (8,))
    opt.swarm  # noqa: B018 (creates the swarm)
    history = []  # (positions scored, buffer rows they left) per step
    for _ in range(5):
        scored = [opt.state[p]["position"].clone() for p in model.parameters()]
        opt.step(make_closure(opt, model, x, y))
        rows = {k: v.clone() for k, v in opt.state["swarm"]["buffers"].items()}
        history.append((scored, rows))
    swarm = opt.state["swarm"]
    older = 0
    for i in range(4):
        pbest = [opt.state[p]["pbest"][i] for p in model.parameters()]
        # the step at which particle i's personal best was scored
        steps = [
            t
            for t, (scored, _) in enumerate(history)
            if all(torch.equal(s[i], q) for s, q in zip(scored, pbest, strict=True))
        ]
        assert len(steps) == 1
        t = steps[-1]
        older += t < len(history) - 1
        for name, rows in history[t][1].items():
            assert torch.equal(swarm["pbest_buffers"][name][i], rows[i]), (i, name)
    assert older > 0  # the scenario exercised a personal best older than the last step
    g = swarm["gbest_index"]
    for name, value in swarm["gbest_buffers"].items():
        assert torch.equal(value, swarm["pbest_buffers"][name][g])
    assert_model_holds_gbest(opt, model)


@pytest.mark.parametrize("path", ["closure", "loop"])
def test_reseeded_particle_takes_the_global_best_buffers(path):
    torch.manual_seed(4)
    model = bn_mlp()
    x, y = torch.randn(16, 10), torch.randint(0, 3, (16,))
    opt = HGPSO(model.parameters(), num_particles=4, init_spread=0.3, seed=2)
    opt.step(closure_for(path, opt, model, x, y))
    rows_before = opt.state["swarm"]["buffers"]["1.running_mean"].clone()
    calls = []

    def poisoned(out, target):
        calls.append(1)
        loss = F.cross_entropy(out, target)
        return loss * float("nan") if len(calls) == 3 else loss  # particle 2

    if path == "closure":

        def closure():
            opt.zero_grad()
            loss = poisoned(model(x), y)
            loss.backward()
            return loss

    else:
        closure = hgpso.vectorized_closure(model, poisoned, x, y, strategy="loop")
    opt.step(closure)
    swarm = opt.state["swarm"]
    assert swarm["nan_reseeds"] == 1
    assert swarm["gbest_index"] != 2
    for name, rows in swarm["buffers"].items():
        assert torch.equal(rows[2], swarm["gbest_buffers"][name]), name
    others = [i for i in range(4) if i not in (2, swarm["gbest_index"])]
    for i in others:  # the rest keep their own
        assert not torch.equal(swarm["buffers"]["1.running_mean"][i], rows_before[i])
        assert not torch.equal(
            swarm["buffers"]["1.running_mean"][i], swarm["gbest_buffers"]["1.running_mean"]
        )
    assert_model_holds_gbest(opt, model)


@pytest.mark.parametrize("path", ["closure", "vmap"])
def test_resume_is_bit_for_bit(path):
    torch.manual_seed(5)
    model = bn_mlp()
    batches = [(torch.randn(8, 10), torch.randint(0, 3, (8,))) for _ in range(5)]
    kw = {"num_particles": 4, "init_spread": 0.2, "seed": 9, "forget": 0.5}
    opt = HGPSO(model.parameters(), **kw)
    for x, y in batches[:3]:
        opt.step(closure_for(path, opt, model, x, y))
    # (like torch's optimizers, state_dict() shares the live state: snapshot it)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    for x, y in batches[3:]:
        opt.step(closure_for(path, opt, model, x, y))

    torch.manual_seed(123)  # the resumed run must not depend on the global generator
    model2 = bn_mlp()
    model2.load_state_dict(saved_model)
    opt2 = HGPSO(model2.parameters(), **kw)
    opt2.load_state_dict(saved_opt)
    for x, y in batches[3:]:
        opt2.step(closure_for(path, opt2, model2, x, y))
    for key in ("buffers", "gbest_buffers", "pbest_buffers"):
        for name, value in opt.state["swarm"][key].items():
            assert torch.equal(value, opt2.state["swarm"][key][name]), (key, name)
    for (_, b1), (_, b2) in zip(model.named_buffers(), model2.named_buffers(), strict=True):
        assert torch.equal(b1, b2)
    for p1, p2 in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p1, p2)
        assert torch.equal(opt.state[p1]["position"], opt2.state[p2]["position"])


def test_checkpoint_from_the_closure_path_resumes_in_the_vmap_path():
    torch.manual_seed(6)
    model = bn_mlp()
    x, y = torch.randn(8, 10), torch.randint(0, 3, (8,))
    opt = HGPSO(model.parameters(), num_particles=3, seed=1)
    opt.step(make_closure(opt, model, x, y))
    model2 = copy.deepcopy(model)
    opt2 = HGPSO(model2.parameters(), num_particles=3, seed=1)
    opt2.load_state_dict(opt.state_dict())
    opt.step(make_closure(opt, model, x, y))
    opt2.step(hgpso.vectorized_closure(model2, F.cross_entropy, x, y, strategy="vmap"))
    for name, rows in opt.state["swarm"]["buffers"].items():
        torch.testing.assert_close(rows, opt2.state["swarm"]["buffers"][name])


def _trained(num_particles=3):
    torch.manual_seed(7)
    model = bn_mlp()
    x, y = torch.randn(8, 10), torch.randint(0, 3, (8,))
    opt = HGPSO(model.parameters(), num_particles=num_particles, seed=1)
    opt.step(make_closure(opt, model, x, y))
    return model, opt, x, y


@pytest.mark.parametrize(
    "corrupt,match",
    [
        (
            lambda s: s["buffers"].__setitem__("1.running_mean", torch.zeros(3, 15)),
            "1.running_mean",
        ),
        (
            lambda s: s["buffers"].__setitem__("1.running_var", torch.zeros(3, 16).double()),
            "1.running_var",
        ),
        (lambda s: s["buffers"].__setitem__("1.running_mean", torch.zeros(2, 16)), "one row per"),
        (lambda s: s["gbest_buffers"].__setitem__("1.running_mean", torch.zeros(3)), "global best"),
        (lambda s: s["buffers"].__setitem__("9.extra", torch.zeros(3, 1)), "9.extra"),
        (lambda s: s["buffers"].pop("1.running_var"), "1.running_var"),
        (lambda s: s.pop("gbest_buffers"), "gbest_buffers"),
    ],
)
def test_bad_buffers_in_a_state_dict_are_named_and_nothing_is_loaded(corrupt, match):
    model, opt, x, y = _trained()
    sd = opt.state_dict()
    corrupt(sd["state"]["swarm"])
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    for key, value in before["state"]["swarm"]["buffers"].items():
        assert torch.equal(after["state"]["swarm"]["buffers"][key], value)
    opt.step(make_closure(opt, model, x, y))  # still usable


def test_a_fresh_optimizer_checks_loaded_buffers_against_the_model_on_its_next_step():
    """A new optimizer does not know its model's buffers until a forward pass runs: the
    match is checked then, before the swarm or the model changes."""
    model, opt, x, y = _trained()
    sd = opt.state_dict()
    other = nn.Sequential(nn.Linear(10, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 3))
    opt2 = HGPSO(other.parameters(), num_particles=3, seed=1)
    opt2.load_state_dict(sd)  # same parameter shapes: loads
    positions = [opt2.state[p]["position"].clone() for p in other.parameters()]
    with pytest.raises(ValueError, match=r"1\.running_mean"):
        opt2.step(make_closure(opt2, other, x, y))
    assert opt2.state["swarm"]["step"] == 1
    for p, x_p, g in zip(other.parameters(), positions, opt2.gbest(), strict=True):
        assert torch.equal(opt2.state[p]["position"], x_p)
        assert torch.equal(p, g)  # the model is back on the loaded global best
    # and the BatchNorm model that wrote it resumes
    model2 = copy.deepcopy(model)
    opt3 = HGPSO(model2.parameters(), num_particles=3, seed=1)
    opt3.load_state_dict(sd)
    opt3.step(make_closure(opt3, model2, x, y))


def test_compiled_model_keeps_per_particle_statistics_named_as_the_plain_model():
    torch.manual_seed(12)
    model = bn_mlp()
    model2 = copy.deepcopy(model)
    compiled = torch.compile(model, backend="eager")
    x, y = torch.randn(16, 10), torch.randint(0, 3, (16,))
    a = HGPSO(model.parameters(), num_particles=3, init_spread=0.2, seed=0)
    b = HGPSO(model2.parameters(), num_particles=3, init_spread=0.2, seed=0)
    for _ in range(2):
        a.step(make_closure(a, compiled, x, y))
        b.step(make_closure(b, model2, x, y))
    assert set(a.state["swarm"]["buffers"]) == {n for n, _ in model.named_buffers()}
    for name, rows in b.state["swarm"]["buffers"].items():
        torch.testing.assert_close(a.state["swarm"]["buffers"][name], rows)
    assert_model_holds_gbest(a, model)


def test_model_without_mutable_buffers_pays_nothing_after_the_first_step(monkeypatch):
    from torch.nn.modules import module as module_hooks

    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    model.register_buffer("scale", torch.ones(3))  # read, never written
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    opt = HGPSO(model.parameters(), num_particles=3, seed=0)
    opt.step(make_closure(opt, model, x, y))
    assert opt.state["swarm"]["buffers"] == {}
    hooks = []
    real = module_hooks.register_module_forward_pre_hook
    monkeypatch.setattr(
        module_hooks,
        "register_module_forward_pre_hook",
        lambda hook: hooks.append(hook) or real(hook),
    )
    for path in PATHS:
        opt.step(closure_for(path, opt, model, x, y))
    assert hooks == []  # no watch, no copies: nothing is kept per particle


@pytest.mark.parametrize("path", PATHS)
def test_eval_mode_uses_each_particles_statistics_and_changes_none(path):
    torch.manual_seed(9)
    model = bn_mlp()
    x, y = torch.randn(16, 10), torch.randint(0, 3, (16,))
    opt = HGPSO(model.parameters(), num_particles=4, init_spread=0.3, seed=5)
    for _ in range(2):
        opt.step(make_closure(opt, model, x, y))
    rows = {k: v.clone() for k, v in opt.state["swarm"]["buffers"].items()}
    positions = [opt.state[p]["position"].clone() for p in model.parameters()]
    model.eval()
    opt.step(closure_for(path, opt, model, x, y))
    for name, value in rows.items():  # eval-mode BatchNorm reads its statistics only
        assert torch.equal(opt.state["swarm"]["buffers"][name], value), name
    # every particle was scored with its own statistics
    expected = []
    for i in range(4):
        ref = copy.deepcopy(model)
        with torch.no_grad():
            for p, x_i in zip(ref.parameters(), positions, strict=True):
                p.copy_(x_i[i])
            for name, b in ref.named_buffers():
                b.copy_(rows[name][i])
        expected.append(F.cross_entropy(ref(x), y))
    torch.testing.assert_close(opt.state["swarm"]["pbest_losses"], torch.stack(expected).detach())
    assert_model_holds_gbest(opt, model)


def test_batchnorm_switched_to_training_later_is_tracked_from_then_on():
    torch.manual_seed(10)
    model = bn_mlp().eval()
    x, y = torch.randn(16, 10), torch.randint(0, 3, (16,))
    opt = HGPSO(model.parameters(), num_particles=3, init_spread=0.3, seed=5)
    opt.step(make_closure(opt, model, x, y))
    assert opt.state["swarm"]["buffers"] == {}  # eval mode: nothing changes, nothing kept
    model.train()
    opt.step(make_closure(opt, model, x, y))
    rows = opt.state["swarm"]["buffers"]
    assert set(rows) == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    assert not torch.equal(rows["1.running_mean"][0], rows["1.running_mean"][1])
    assert_model_holds_gbest(opt, model)


def test_torchvision_resnet18_trains_through_every_path():
    """torchvision's ResNet-18 (20 BatchNorm layers): closure, vmap and loop paths train it
    and agree, every particle with its own running statistics."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(11)
    model = torchvision.models.resnet18(num_classes=10)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    # "sgd": most of its gradient elements are tiny, at the paths' rounding differences, and
    # "adam"'s normalized step (about lr whatever their size) turns those into moves of lr
    kw = {"num_particles": 2, "init_spread": 1e-2, "seed": 3, "lr": 0.05, "gradient": "sgd"}
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    swarms = {}
    for path in PATHS:
        m = copy.deepcopy(model)
        opt = HGPSO(m.parameters(), **kw)
        for _ in range(2):
            assert torch.isfinite(opt.step(closure_for(path, opt, m, x, y)))
        swarm = opt.state["swarm"]
        assert len(swarm["buffers"]) == 3 * n_bn
        rm = swarm["buffers"]["bn1.running_mean"]
        assert rm.shape == (2, 64) and not torch.equal(rm[0], rm[1])
        assert_model_holds_gbest(opt, m)
        swarms[path] = swarm
    ref = swarms["closure"]
    for path in ("vmap", "loop"):
        swarm = swarms[path]
        assert swarm["gbest_index"] == ref["gbest_index"]
        torch.testing.assert_close(swarm["pbest_losses"], ref["pbest_losses"], rtol=1e-3, atol=1e-3)
        for name, rows in ref["buffers"].items():
            torch.testing.assert_close(swarm["buffers"][name], rows, rtol=1e-3, atol=1e-3)


def bn_replicated_worker(rank, world_size, out, *, path):
    """One rank of a replicated swarm on a BatchNorm model; rank r trains on its shard."""
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(100 + rank)  # different everywhere until the optimizer agrees
    model = bn_mlp()
    net = DistributedDataParallel(model) if path == "ddp" else model
    opt = HGPSO(model.parameters(), num_particles=3, init_spread=0.3, lr=0.1)
    g = torch.Generator().manual_seed(7)
    first = None
    for t in range(3):
        x = torch.randn(8 * world_size, 10, generator=g)
        y = torch.randint(0, 3, (8 * world_size,), generator=g)
        if t == 0:
            opt.swarm  # noqa: B018 (the positions scored at step 0, for the check below)
            first = (x, [opt.state[p]["position"].clone() for p in model.parameters()])
        xs, ys = x[rank * 8 : (rank + 1) * 8], y[rank * 8 : (rank + 1) * 8]
        if path == "vmap":
            opt.step(hgpso.vectorized_closure(model, F.cross_entropy, xs, ys, strategy="vmap"))
        else:
            opt.step(make_closure(opt, net, xs, ys))
        if t == 0:
            step0 = {k: v.clone() for k, v in opt.state["swarm"]["buffers"].items()}
    torch.save(
        {
            "first": first,
            "step0": step0,
            "swarm": {k: opt.state["swarm"][k] for k in ("buffers", "gbest_buffers")},
            "model": model_buffers(model),
            "params": [p.detach().clone() for p in model.parameters()],
        },
        out / f"rank{rank}.pt",
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("path", ["ddp", "vmap"])
def test_replicated_ranks_average_their_statistics_and_stay_identical(tmp_path, path):
    """Under distributed="replicated" each rank's running statistics come from its shard:
    they are averaged over ranks every step, so the replicas stay identical (and the mean
    is the global batch's)."""
    from tests.distributed.launch import run_workers

    run_workers(bn_replicated_worker, 2, tmp_path, path=path)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    prefix = ""  # named as model.named_buffers() names them, through the DDP wrapper too
    assert set(r0["swarm"]["buffers"]) == {prefix + n for n in r0["model"]}
    for key in ("buffers", "gbest_buffers"):
        for name, value in r0["swarm"][key].items():
            assert torch.equal(value, r1["swarm"][key][name]), (key, name)
    for name, value in r0["model"].items():
        assert torch.equal(value, r1["model"][name]), name
        assert torch.equal(value, r0["swarm"]["gbest_buffers"][prefix + name])
    for a, b in zip(r0["params"], r1["params"], strict=True):
        assert torch.equal(a, b)
    # step 0: the mean of the two shards' batch means is the global batch's mean
    x, positions = r0["first"]
    w, bias = positions[0], positions[1]
    rows = r0["step0"][prefix + "1.running_mean"]
    for i in range(3):
        h = x @ w[i].T + bias[i]
        torch.testing.assert_close(rows[i], 0.1 * h.mean(0), rtol=0, atol=1e-6)
