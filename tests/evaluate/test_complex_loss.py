"""Issue 24: a complex loss is refused on every scoring path, before anything moves.

Cast to the float32 losses the swarm ranks, a complex loss lost its imaginary part without
a word (a UserWarning at most). (This file tests hgpso.evaluate; it sits in tests/tune only
because of who wrote it in issue 24.)
"""

import warnings

import pytest
import torch
import torch.nn.functional as F

import hgpso
from hgpso import HGPSO, PSO
from tests.helpers import TinyNet

X, Y = torch.randn(4, 6), torch.randint(0, 3, (4,))


def complex_ce(out, target):
    return F.cross_entropy(out, target) * (1 + 1j)  # real part: the ordinary loss


def snapshot(model):
    return [p.detach().clone() for p in model.parameters()]


def refused(opt, model, closure):
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "discards the imaginary part" warning instead
        with pytest.raises(TypeError, match=r"complex loss \(torch\.complex"):
            opt.step(closure)
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot(model), strict=True))


def test_gradient_free_closure_returning_a_complex_tensor():
    model = TinyNet()
    opt = PSO(model.parameters(), num_particles=3)
    refused(opt, model, lambda: complex_ce(model(X), Y))


def test_hgpso_closure_that_backpropagates_the_real_part_but_returns_the_complex_loss():
    model = TinyNet()
    opt = HGPSO(model.parameters(), num_particles=3)

    def closure():
        opt.zero_grad()
        loss = complex_ce(model(X), Y)
        loss.real.backward()
        return loss

    refused(opt, model, closure)


def test_closure_returning_a_python_complex():
    model = TinyNet()
    opt = PSO(model.parameters(), num_particles=3)
    refused(opt, model, lambda: complex(F.cross_entropy(model(X), Y).item(), 1.0))


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
@pytest.mark.parametrize("cls", [PSO, HGPSO])
def test_vectorized_closure_with_a_complex_loss_fn(strategy, cls):
    model = TinyNet()
    opt = cls(model.parameters(), num_particles=3)
    refused(opt, model, hgpso.vectorized_closure(model, complex_ce, X, Y, strategy=strategy))
