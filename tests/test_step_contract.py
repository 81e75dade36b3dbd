"""The step contract with what users put in a closure: clipping and torch.compile'd modules.

Backs two rows of the table in docs/guides/step-contract.md.
"""

import copy

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
    opt = HGPSO([w], lr=lr, num_particles=1, adaptive=False, seed=0)
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


def _run(model, forward, path, steps=3):
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(2))
    opt = HGPSO(model.parameters(), lr=0.1, num_particles=4, seed=3)
    for _ in range(steps):
        if path == "closure":

            def closure():
                opt.zero_grad()
                loss = F.cross_entropy(forward(x), y)
                loss.backward()
                return loss

            opt.step(closure)
        else:
            opt.step(hgpso.vectorized_closure(forward, F.cross_entropy, x, y, strategy=path))
    return opt


@pytest.mark.parametrize("path", ["closure", "loop", "vmap"])
def test_torch_compiled_module_gives_the_same_swarm(path):
    """A torch.compile'd module (aot_eager: Dynamo + AOTAutograd, no C++ toolchain needed) in
    the closure or given to vectorized_closure trains the swarm the eager module trains."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    eager = copy.deepcopy(model)
    a = _run(eager, eager, "closure")
    compiled = torch.compile(model, backend="aot_eager")
    b = _run(model, compiled, path)
    for p, q in zip(eager.parameters(), model.parameters(), strict=True):
        for key in ("position", "velocity"):
            torch.testing.assert_close(a.state[p][key], b.state[q][key], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert a.state["swarm"]["gbest_index"] == b.state["swarm"]["gbest_index"]
