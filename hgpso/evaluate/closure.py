"""Scoring particles with an ordinary closure: load each particle, call, record."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from hgpso.evaluate.buffers import BufferWatch
from hgpso.evaluate.request import EvaluationRequest, publish

__all__ = ["as_scalar_loss", "complex_loss_message", "evaluate_particles", "score_each_particle"]


def as_scalar_loss(loss: object, *, where: str = "closure") -> Tensor:
    """Check that ``loss`` is a one-element tensor (or a real number) and return it detached."""
    if isinstance(loss, (int, float)) and not isinstance(loss, bool):
        return torch.tensor(float(loss))
    if isinstance(loss, complex):
        raise TypeError(complex_loss_message(where, torch.complex128))
    if not isinstance(loss, Tensor):
        raise TypeError(
            f"the {where} must return the loss as a scalar tensor, got {type(loss).__name__}"
        )
    if loss.is_complex():
        raise TypeError(complex_loss_message(where, loss.dtype))
    if loss.numel() != 1:
        raise ValueError(
            f"the {where} must return a scalar loss, got a tensor of shape {tuple(loss.shape)};"
            " reduce it first (e.g. .mean())"
        )
    return loss.detach().reshape(())


def complex_loss_message(where: str, dtype: torch.dtype) -> str:
    """The one error every path gives for a complex loss (casting it to the float32 loss
    the swarm ranks would silently drop its imaginary part)."""
    return (
        f"the {where} returned a complex loss ({dtype}); particles are ranked by a real "
        "loss: return a real one, e.g. loss.abs() or loss.real"
    )


def sparse_gradient_message(p: Tensor) -> str:
    """The one error both evaluation paths give for a sparse gradient."""
    return (
        f"a parameter of shape {tuple(p.shape)} got a sparse gradient, which the swarm does "
        "not support (every particle's gradient is stored densely): build the layer with "
        "sparse=False, e.g. nn.Embedding(..., sparse=False)"
    )


#: one particle's forward (and backward) pass: its loss, and its gradient per parameter
#: (``None`` entries for parameters without one) when gradients are wanted
ScoreOne = Callable[[], tuple[object, Sequence[Tensor | None] | None]]


def score_each_particle(
    request: EvaluationRequest,
    score_one: ScoreOne,
    *,
    where: str,
    answered: Callable[[], bool] | None = None,
) -> tuple[Tensor, list[Tensor] | None] | None:
    """The particle-by-particle loop both non-vmap paths share.

    For each particle ``i``: load its weights (and its per-particle buffers) into the model,
    call ``score_one``, record the loss and the gradients, and store the buffers the
    forward pass updated as particle ``i``'s new buffers (``request.new_buffers``). On a
    swarm's first step particle 0's pass is watched to find those buffers
    (``hgpso.evaluate.buffers.BufferWatch``). When ``answered`` turns true after
    particle 0 (a vectorized closure scored everyone), returns ``None``.

    The model is left holding the last particle evaluated: the caller restores it.
    """
    params, positions = request.params, request.positions
    n = positions[0].shape[0]
    device = params[0].device
    losses = torch.empty(n, dtype=torch.float32, device=device)
    grads = [torch.zeros_like(x) for x in positions] if request.need_grads else None
    new_buffers: list[Tensor] | None = None
    for i in range(n):
        with torch.no_grad():
            for p, x in zip(params, positions, strict=True):
                p.copy_(x[i])
                p.grad = None
            for b, rows in zip(request.buffer_targets, request.buffers, strict=True):
                b.copy_(rows[i])
        watch = None
        if i == 0 and request.bind_buffers is not None:
            preload = {name: rows[0] for name, rows in request.saved_buffers.items()}
            # a vectorized closure answering inside this call watches for itself
            watch = BufferWatch(
                preload, paused=(lambda: request.vectorizing) if answered else (lambda: False)
            )
        with watch if watch is not None else contextlib.nullcontext():
            loss, got = score_one()
        if i == 0 and answered is not None and answered():
            return None
        if watch is not None:
            request.bind(watch)
        if request.buffer_targets:
            if new_buffers is None:
                new_buffers = [torch.empty_like(rows) for rows in request.buffers]
            with torch.no_grad():
                for new, b in zip(new_buffers, request.buffer_targets, strict=True):
                    new[i].copy_(b)
        losses[i] = as_scalar_loss(loss, where=where).to(device=device, dtype=torch.float32)
        if grads is None:
            continue
        assert got is not None
        got_any = False
        for g, gi, p in zip(grads, got, params, strict=True):
            if gi is None:  # a parameter the loss does not depend on: a zero gradient
                continue
            if gi.is_sparse:
                raise RuntimeError(sparse_gradient_message(p))
            g[i].copy_(gi)
            got_any = True
        # no gradient at all means the closure never called backward() (a non-finite loss
        # is an invalid particle anyway, whatever its gradient)
        if not got_any and bool(torch.isfinite(losses[i])):
            raise RuntimeError(
                f"the {where} gave no parameter a gradient for particle {i}: HGPSO's "
                "closure must call loss.backward() before returning the loss (use "
                "hgpso.PSO for a gradient-free swarm)"
            )
    request.new_buffers = new_buffers
    return losses, grads


def evaluate_particles(
    closure: Callable[[], object], request: EvaluationRequest
) -> tuple[Tensor, list[Tensor] | None]:
    """Score every particle of ``request`` with ``closure``; return ``(losses, grads)``.

    Particle 0 is loaded and the closure called with ``request`` published. If the closure
    is vectorized it answers for all particles at once and we are done; otherwise it is a
    plain closure (zero_grad, forward, backward, return loss) and it is called once more for
    each remaining particle (``score_each_particle``, the loop the vectorized ``"loop"``
    strategy runs too). Parameters that get no gradient
    count as a zero gradient.

    The parameters (and per-particle buffers) are left holding the last particle
    evaluated: the caller restores them.
    """
    params = request.params

    def call() -> tuple[object, Sequence[Tensor | None] | None]:
        with torch.enable_grad(), publish(request):
            loss = closure()
        return loss, [p.grad for p in params] if request.need_grads else None

    out = score_each_particle(request, call, where="closure", answered=lambda: request.fulfilled)
    if out is None:
        assert request.losses is not None
        return request.losses, request.grads
    return out
