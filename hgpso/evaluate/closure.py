"""Scoring particles with an ordinary closure: load each particle, call, record."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from hgpso.evaluate.request import EvaluationRequest, publish

__all__ = ["as_scalar_loss", "evaluate_particles"]


def as_scalar_loss(loss: object, *, where: str = "closure") -> Tensor:
    """Check that ``loss`` is a one-element tensor (or a real number) and return it detached."""
    if isinstance(loss, (int, float)) and not isinstance(loss, bool):
        return torch.tensor(float(loss))
    if not isinstance(loss, Tensor):
        raise TypeError(
            f"the {where} must return the loss as a scalar tensor, got {type(loss).__name__}"
        )
    if loss.numel() != 1:
        raise ValueError(
            f"the {where} must return a scalar loss, got a tensor of shape {tuple(loss.shape)};"
            " reduce it first (e.g. .mean())"
        )
    return loss.detach().reshape(())


def sparse_gradient_message(p: Tensor) -> str:
    """The one error both evaluation paths give for a sparse gradient."""
    return (
        f"a parameter of shape {tuple(p.shape)} got a sparse gradient, which the swarm does "
        "not support (every particle's gradient is stored densely): build the layer with "
        "sparse=False, e.g. nn.Embedding(..., sparse=False)"
    )


def _load_particle(params: list[Tensor], positions: list[Tensor], i: int) -> None:
    for p, x in zip(params, positions, strict=True):
        p.copy_(x[i])
        p.grad = None


def evaluate_particles(
    closure: Callable[[], object], request: EvaluationRequest
) -> tuple[Tensor, list[Tensor] | None]:
    """Score every particle of ``request`` with ``closure``; return ``(losses, grads)``.

    Particle 0 is loaded and the closure called with ``request`` published. If the closure
    is vectorized it answers for all particles at once and we are done; otherwise it is a
    plain closure (zero_grad, forward, backward, return loss) and it is called once more for
    each remaining particle. Parameters that get no gradient count as a zero gradient.

    The parameters are left holding the last particle evaluated: the caller restores them.
    """
    params, positions = request.params, request.positions
    n = positions[0].shape[0]
    device = params[0].device
    losses = torch.empty(n, dtype=torch.float32, device=device)
    grads = [torch.zeros_like(x) for x in positions] if request.need_grads else None
    for i in range(n):
        _load_particle(params, positions, i)
        with torch.enable_grad(), publish(request):
            loss = closure()
        if i == 0 and request.fulfilled:
            assert request.losses is not None
            return request.losses, request.grads
        losses[i] = as_scalar_loss(loss).to(device=device, dtype=torch.float32)
        if grads is not None:
            got_any = False
            for g, p in zip(grads, params, strict=True):
                if p.grad is not None:
                    if p.grad.is_sparse:
                        raise RuntimeError(sparse_gradient_message(p))
                    g[i].copy_(p.grad)
                    got_any = True
            # a parameter the loss does not depend on counts as a zero gradient, but no
            # gradient at all means the closure never called backward() (a non-finite loss
            # is an invalid particle anyway, whatever its gradient)
            if not got_any and bool(torch.isfinite(losses[i])):
                raise RuntimeError(
                    f"the closure gave no parameter a gradient for particle {i}: HGPSO's "
                    "closure must call loss.backward() before returning the loss (use "
                    "hgpso.PSO for a gradient-free swarm)"
                )
    return losses, grads
