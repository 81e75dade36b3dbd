"""The step contract with what users bring: clipping, torch.compile'd modules, schedulers.

Backs entries of the "what works with what" table in docs/guides/step-contract.md.
"""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hgpso
from hgpso import HGPSO


def test_clip_grad_norm_in_the_closure_clips_the_gradient_the_swarm_uses():
    """One particle, at rest: the move is exactly -lr * (the clipped gradient)."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(5))
    target = torch.full((5,), 10.0)
    lr, max_norm = 0.1, 0.5
    opt = HGPSO([w], lr=lr, gradient="sgd", num_particles=1, adaptive=False, seed=0)
    w0 = w.detach().clone()

    def closure():
        opt.zero_grad()
        loss = 0.5 * ((w - target) ** 2).sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([w], max_norm)
        return loss

    opt.step(closure)
    grad = w0 - target  # the gradient of the loss at w0, norm about 22
    clipped = grad * (max_norm / grad.norm())
    # v = w*0 + c1*r1*(pbest - x) + c2*r2*(gbest - x) - lr*g, and pbest = gbest = x = w0
    torch.testing.assert_close(opt.state[w]["velocity"][0], -lr * clipped)
    torch.testing.assert_close(opt.state[w]["position"][0], w0 - lr * clipped)
    torch.testing.assert_close(w.detach(), w0)  # the model holds the global best: w0


X = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(2))


def _step(opt, forward, path):
    """One step through ``path``: "closure", or the vectorized "loop" / "vmap"."""
    if path == "closure":

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(forward(X), Y)
            loss.backward()
            return loss

        return opt.step(closure)
    return opt.step(hgpso.vectorized_closure(forward, F.cross_entropy, X, Y, strategy=path))


def _run(model, forward, path, steps=3):
    # "sgd": with BatchNorm the first layer's bias has a gradient of rounding noise only,
    # which "adam"'s normalized step would turn into moves of about lr
    opt = HGPSO(model.parameters(), lr=0.1, num_particles=4, seed=3, gradient="sgd")
    for _ in range(steps):
        _step(opt, forward, path)
    return opt


@pytest.mark.parametrize("norm", ["none", "batchnorm"])
@pytest.mark.parametrize("path", ["closure", "loop", "vmap"])
def test_torch_compiled_module_gives_the_same_swarm(path, norm):
    """A torch.compile'd module (aot_eager: Dynamo + AOTAutograd, no C++ toolchain needed) in
    the closure or given to vectorized_closure trains the swarm the eager module trains; with
    BatchNorm, the per-particle running statistics too."""
    torch.manual_seed(0)
    mid = [nn.BatchNorm1d(8)] if norm == "batchnorm" else []
    model = nn.Sequential(nn.Linear(6, 8), *mid, nn.Tanh(), nn.Linear(8, 3))
    eager = copy.deepcopy(model)
    a = _run(eager, eager, "closure")
    compiled = torch.compile(model, backend="aot_eager")
    with warnings.catch_warnings():
        # torch notes that global module hooks (the swarm's first-step buffer watch) also
        # fire for the OptimizedModule wrapper; harmless here
        warnings.filterwarnings("ignore", "Using `torch.compile", UserWarning)
        b = _run(model, compiled, path)
    for p, q in zip(eager.parameters(), model.parameters(), strict=True):
        for key in ("position", "velocity"):
            torch.testing.assert_close(a.state[p][key], b.state[q][key], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    for (name, u), (_, v) in zip(eager.named_buffers(), model.named_buffers(), strict=True):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-6, msg=name)
    assert a.state["swarm"]["gbest_index"] == b.state["swarm"]["gbest_index"]


def test_scheduler_with_the_vectorized_closure_equals_the_closure_path():
    """A scheduler only writes param_groups' lr, so it drives both evaluation paths alike."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    models = {"closure": model, "loop": copy.deepcopy(model), "vmap": copy.deepcopy(model)}
    opts, lrs = {}, {}
    for path, m in models.items():
        opts[path] = HGPSO(m.parameters(), lr=0.1, num_particles=4, seed=3)
        sched = torch.optim.lr_scheduler.StepLR(opts[path], step_size=1, gamma=0.5)
        lrs[path] = []
        for _ in range(3):
            _step(opts[path], m, path)
            sched.step()
            lrs[path].append(opts[path].param_groups[0]["lr"])
    assert lrs["closure"] == lrs["loop"] == lrs["vmap"] == [0.05, 0.025, 0.0125]
    for path in ("loop", "vmap"):
        for p, q in zip(model.parameters(), models[path].parameters(), strict=True):
            a, b = opts["closure"].state[p], opts[path].state[q]
            torch.testing.assert_close(a["position"], b["position"], rtol=1e-5, atol=1e-6)
