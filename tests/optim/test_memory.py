"""Swarm memory (issue 9, item 5): with ``forget=1`` no personal bests are stored, so the
swarm keeps positions, velocities and one global best, (2N + 1) P numbers; results are those
of the layout that stored them, and checkpoints holding them still load and resume."""

import copy

import pytest
import torch
import torch.nn.functional as F

import hgpso.functional as HF
from hgpso import HGPSO, PSO
from tests.helpers import TinyNet, make_closure, param_state_bytes


def _bits(t):
    return t.view(torch.int32) if t.dtype == torch.float32 else t


def _same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


def _swarm_tensor_bytes(opt):
    return sum(
        t.numel() * t.element_size()
        for t in opt.state["swarm"].values()
        if isinstance(t, torch.Tensor)
    )


def _run(n, steps=3, **kw):
    """The "sgd" gradient term's swarm (the (2N + 1) P layout; "adam" adds its moments)."""
    torch.manual_seed(0)
    model = TinyNet()
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    opt = HGPSO(model.parameters(), num_particles=n, seed=0, gradient="sgd", **kw)
    for _ in range(steps):
        opt.step(make_closure(opt, model, x, y))
    return model, opt, x, y


@pytest.mark.parametrize("n", [1, 4, 9])
def test_forget_one_keeps_two_model_copies_per_particle_and_one_global_best(n):
    model, opt, _, _ = _run(n)
    p_count = sum(p.numel() for p in model.parameters())
    assert param_state_bytes(opt) == (2 * n + 1) * p_count * 4
    assert _swarm_tensor_bytes(opt) == n * 4  # the N best losses
    sd = opt.state_dict()
    for key, st in sd["state"].items():
        if key != "swarm":
            assert set(st) == {"position", "velocity", "gbest"}


@pytest.mark.parametrize("forget", [0.0, 0.5])
def test_memory_across_batches_stores_the_personal_bests(forget):
    n = 4
    model, opt, _, _ = _run(n, forget=forget)
    p_count = sum(p.numel() for p in model.parameters())
    assert param_state_bytes(opt) == (3 * n + 1) * p_count * 4
    for p in model.parameters():
        assert opt.state[p]["pbest"].shape == (n, *p.shape)
        i = opt.state["swarm"]["gbest_index"]
        assert _same(opt.state[p]["gbest"], opt.state[p]["pbest"][i])


def test_pso_default_forget_keeps_personal_bests_and_forget_one_does_not():
    torch.manual_seed(0)
    model = TinyNet()
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    for forget, has in ((0.05, True), (1.0, False)):
        opt = PSO(model.parameters(), num_particles=3, seed=0, forget=forget)
        opt.step(lambda: F.cross_entropy(model(x), y))
        assert ("pbest" in opt.state[model.fc1.weight]) is has


def test_a_checkpoint_with_personal_bests_loads_and_resumes_bit_for_bit():
    """Checkpoints written when forget=1 still stored ``pbest`` (and no ``gbest``): the
    global best is taken from ``pbest[gbest_index]``, the rest dropped, and the run goes on
    exactly as the uninterrupted one."""
    model, opt, x, y = _run(4)
    sd = copy.deepcopy(opt.state_dict())
    g = torch.Generator().manual_seed(5)
    i = sd["state"]["swarm"]["gbest_index"]
    for key, st in sd["state"].items():
        if key == "swarm":
            continue
        pbest = torch.randn(st["position"].shape, generator=g)
        pbest[i] = st.pop("gbest")
        st["pbest"] = pbest
    model2 = copy.deepcopy(model)
    opt2 = HGPSO(model2.parameters(), num_particles=4, seed=123, gradient="sgd")
    opt2.load_state_dict(sd)
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert set(opt2.state[q]) == {"position", "velocity", "gbest"}
        assert _same(opt2.state[q]["gbest"], opt.state[p]["gbest"])
    for _ in range(3):
        opt.step(make_closure(opt, model, x, y))
        opt2.step(make_closure(opt2, model2, x, y))
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert _same(p.detach(), q.detach())
        for key in ("position", "velocity", "gbest"):
            assert _same(opt.state[p][key], opt2.state[q][key]), key


def test_changing_forget_adds_or_drops_the_personal_bests():
    model, opt, x, y = _run(4)
    opt.forget = 0.5  # memory across batches from now on; it starts afresh
    before = {p: opt.state[p]["position"].clone() for p in model.parameters()}
    opt.step(make_closure(opt, model, x, y))
    # every particle was finite, so every one took its scored position as its first best
    for p in model.parameters():
        assert _same(opt.state[p]["pbest"], before[p])
    opt.forget = 1.0
    opt.step(make_closure(opt, model, x, y))
    assert all("pbest" not in opt.state[p] for p in model.parameters())


def _nan_closure(opt, model, x, y, bad, scale=1.0):
    calls = []

    def closure():
        k = len(calls)
        calls.append(1)
        loss = make_closure(opt, model, x, y)()
        return loss * float("nan") if k in bad else loss * scale + (scale - 1.0)

    return closure


def test_a_non_finite_particle_has_no_personal_best_at_forget_one():
    """Without stored bests, a particle that is not finite on this batch has no best on it:
    its best loss is +inf and its older position cannot become the global best, even when
    its loss from an earlier batch is lower than everything scored now."""
    model, opt, x, y = _run(4, steps=1)
    b = opt.state["swarm"]["gbest_index"]
    scored = {p: opt.state[p]["position"].clone() for p in model.parameters()}
    # every finite loss now exceeds every loss of the last step
    opt.step(_nan_closure(opt, model, x, y, bad={b}, scale=10.0))
    losses = opt.state["swarm"]["pbest_losses"]
    assert losses[b] == float("inf") and torch.isfinite(losses[torch.arange(4) != b]).all()
    i = opt.state["swarm"]["gbest_index"]
    assert i == int(losses.argmin()) and i != b
    for p in model.parameters():
        assert _same(opt.state[p]["gbest"], scored[p][i])
        assert _same(p.detach(), scored[p][i])
    assert opt.state["swarm"]["nan_reseeds"] == 1


def test_a_step_with_no_finite_particle_keeps_the_global_best():
    model, opt, x, y = _run(4, steps=2)
    swarm = opt.state["swarm"]
    keep = (swarm["gbest_index"], swarm["gbest_loss"])
    gbest = [g.clone() for g in opt.gbest()]
    opt.step(_nan_closure(opt, model, x, y, bad={0, 1, 2, 3}))
    assert (swarm["gbest_index"], swarm["gbest_loss"]) == keep
    assert swarm["nan_reseeds"] == 4
    assert torch.isinf(swarm["pbest_losses"]).all()
    for p, g in zip(model.parameters(), gbest, strict=True):
        assert _same(p.detach(), g) and _same(opt.state[p]["gbest"], g)
        # all re-seeded around it, at rest
        assert torch.equal(opt.state[p]["velocity"], torch.zeros_like(opt.state[p]["velocity"]))
    opt.step(make_closure(opt, model, x, y))  # and training goes on
    assert torch.isfinite(swarm["pbest_losses"]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("alias", [False, True])
def test_out_of_place_update_is_the_in_place_update_bit_for_bit(dtype, alias):
    """The optimizer moves the swarm with :func:`hgpso_update` (new tensors, ``r1`` reused
    as the velocities); it matches the in-place reference and a hand-written update."""
    g = torch.Generator().manual_seed(0)
    shapes = [(5, 7, 3), (5, 11), (5,)]

    def mk(s, scale=0.3):
        return (torch.randn(s, generator=g) * scale).to(dtype)

    xs, vs = [mk(s) for s in shapes], [mk(s) for s in shapes]
    ps = xs if alias else [mk(s) for s in shapes]  # alias: the personal best is x itself
    gs, grads = [mk(s[1:]) for s in shapes], [mk(s) for s in shapes]
    r1 = [torch.rand(s, generator=g).to(dtype) for s in shapes]
    r2 = [torch.rand(s, generator=g).to(dtype) for s in shapes]
    kw = dict(lr=0.07, inertia=0.9, cognitive=1.3, social=0.7, max_velocity=0.05)
    before = [t.clone() for t in xs + vs + r2]
    r1_given = [t.clone() for t in r1]
    new_x, new_v = HF.hgpso_update(xs, vs, ps, gs, grads, r1, r2, **kw)
    assert all(_same(a, b) for a, b in zip(xs + vs + r2, before, strict=True))  # only read
    assert all(v is r for v, r in zip(new_v, r1, strict=True))  # r1's storage is reused
    ix, iv = [t.clone() for t in xs], [t.clone() for t in vs]
    HF.hgpso_update_(ix, iv, ix if alias else ps, gs, grads, r1_given, r2, **kw)
    for a, b in zip(new_x + new_v, ix + iv, strict=True):
        assert _same(a, b)
    if dtype == torch.float32:  # the documented equation, in float64
        for k in range(len(shapes)):
            x, v, p, gb = (t.double() for t in (xs[k], vs[k], ps[k], gs[k]))
            want_v = (
                0.9 * v
                + 1.3 * r1_given[k].double() * (p - x)
                + 0.7 * r2[k].double() * (gb - x)
                - 0.07 * grads[k].double()
            ).clamp(-0.05, 0.05)
            torch.testing.assert_close(new_v[k].double(), want_v, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(new_x[k].double(), x + want_v, rtol=1e-5, atol=1e-6)
