r"""Pure tensor math of the particle-swarm updates.

Nothing in this module knows about modules, closures, devices or optimizer state: every
function takes tensors and numbers; those ending in ``_`` mutate the tensors they are given
in place, :func:`hgpso_update` returns new ones (the optimizer uses it so that a step that
fails half-way leaves its state untouched). The optimizer classes in :mod:`hgpso.optim`
call these functions, and every fast path (the fused CUDA kernel in :mod:`hgpso.kernels`)
is tested against them.

Tensor layout: each tensor in ``positions``, ``velocities``, ``pbests``, ``grads``, ``r1``
and ``r2`` has shape ``(N, *param_shape)`` (N particles); each tensor in ``gbests`` has shape
``param_shape`` and is broadcast over the particle dimension.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "accept_personal_bests_",
    "hgpso_update",
    "hgpso_update_",
    "perturb_",
    "success_adaptive_coefficients",
]


def _check_lists(**lists: Sequence[Tensor] | None) -> int:
    lengths = {name: len(ts) for name, ts in lists.items() if ts is not None}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"tensor lists must have equal lengths, got {lengths}")
    return next(iter(lengths.values()), 0)


def hgpso_update(
    positions: Sequence[Tensor],
    velocities: Sequence[Tensor],
    pbests: Sequence[Tensor],
    gbests: Sequence[Tensor],
    grads: Sequence[Tensor] | None,
    r1: Sequence[Tensor],
    r2: Sequence[Tensor],
    *,
    lr: float,
    inertia: float,
    cognitive: float,
    social: float,
    max_velocity: float | None = None,
) -> tuple[list[Tensor], list[Tensor]]:
    r"""One velocity and position update of every particle, into new tensors.

    .. math::
        \begin{aligned}
            v' &= w\,v + c_1 r_1 \odot (p - x) + c_2 r_2 \odot (g - x) - \eta\,\nabla L(x) \\
            v' &\leftarrow \operatorname{clamp}(v', -v_{max}, v_{max})
                 \quad \text{(if } v_{max} \text{ is given)} \\
            x' &= x + v'
        \end{aligned}

    with :math:`w` = ``inertia``, :math:`c_1` = ``cognitive``, :math:`c_2` = ``social``,
    :math:`\eta` = ``lr``, :math:`p` the personal bests, :math:`g` the global best and
    :math:`r_1, r_2 \sim U[0, 1)` drawn per element and per particle (given here, so the
    caller owns the random stream). ``grads=None`` (or ``lr == 0``) gives the plain,
    gradient-free PSO update. ``pbests`` may be ``positions`` itself (a swarm whose personal
    bests are its current positions: the cognitive term is then :math:`c_1 r_1 \odot 0`).

    The arithmetic is done in this order (the fused kernel follows it, so results agree
    to rounding): ``v' = w*v``; ``v' += c1*(r1*(p - x))``; ``v' += c2*(r2*(g - x))``;
    ``v' -= lr*grad``; clamp; ``x' = x + v'``.

    Returns:
        ``(new_positions, new_velocities)``. ``positions``, ``velocities``, ``pbests``,
        ``gbests``, ``grads`` and ``r2`` are only read; ``r1`` **is consumed**: once
        :math:`r_1 \odot (p - x)` is formed its storage holds :math:`v'` and is returned, so
        the update needs one ``(N, *S)`` scratch tensor per parameter besides ``r1``,
        ``r2`` and the two results (the new positions are written into that scratch).
        Pass a clone of ``r1`` to keep it.
    """
    n = _check_lists(
        positions=positions,
        velocities=velocities,
        pbests=pbests,
        gbests=gbests,
        grads=grads,
        r1=r1,
        r2=r2,
    )
    if n == 0:
        return [], []
    positions = list(positions)
    # r1*(p - x) into one scratch tensor per parameter
    scratch = list(torch._foreach_sub(list(pbests), positions))
    torch._foreach_mul_(scratch, list(r1))
    # r1 is used up: its storage takes w*v (copy, then scale in place: for float16 and
    # bfloat16 the in-place foreach product rounds differently from the out-of-place one)
    new_v = list(r1)
    torch._foreach_copy_(new_v, list(velocities))
    torch._foreach_mul_(new_v, inertia)
    torch._foreach_add_(new_v, scratch, alpha=cognitive)
    # + c2*r2*(g - x); g broadcasts over the particle dimension
    for out, g, x in zip(scratch, gbests, positions, strict=True):
        torch.sub(g.unsqueeze(0), x, out=out)
    torch._foreach_mul_(scratch, list(r2))
    torch._foreach_add_(new_v, scratch, alpha=social)
    # - lr*grad
    if grads is not None and lr != 0.0:
        torch._foreach_add_(new_v, list(grads), alpha=-lr)
    if max_velocity is not None:
        torch._foreach_clamp_min_(new_v, -max_velocity)
        torch._foreach_clamp_max_(new_v, max_velocity)
    # x + v' into the scratch tensor
    for out, x, v in zip(scratch, positions, new_v, strict=True):
        torch.add(x, v, out=out)
    return scratch, new_v


def hgpso_update_(
    positions: Sequence[Tensor],
    velocities: Sequence[Tensor],
    pbests: Sequence[Tensor],
    gbests: Sequence[Tensor],
    grads: Sequence[Tensor] | None,
    r1: Sequence[Tensor],
    r2: Sequence[Tensor],
    *,
    lr: float,
    inertia: float,
    cognitive: float,
    social: float,
    max_velocity: float | None = None,
) -> None:
    r"""The update of :func:`hgpso_update`, written back into ``positions`` and
    ``velocities`` (the reference every fused kernel is tested against; ``r1`` and ``r2``
    are left as given).

    .. math::
        \begin{aligned}
            v &\leftarrow w\,v + c_1 r_1 \odot (p - x) + c_2 r_2 \odot (g - x)
                 - \eta\,\nabla L(x) \\
            v &\leftarrow \operatorname{clamp}(v, -v_{max}, v_{max}) \\
            x &\leftarrow x + v
        \end{aligned}
    """
    new_x, new_v = hgpso_update(
        positions,
        velocities,
        pbests,
        gbests,
        grads,
        [r.clone() for r in r1],
        r2,
        lr=lr,
        inertia=inertia,
        cognitive=cognitive,
        social=social,
        max_velocity=max_velocity,
    )
    if new_x:
        torch._foreach_copy_(list(velocities), new_v)
        torch._foreach_copy_(list(positions), new_x)


def accept_personal_bests_(
    positions: Sequence[Tensor],
    pbests: Sequence[Tensor],
    pbest_losses: Tensor,
    losses: Tensor,
    valid: Tensor,
    *,
    forget: float = 0.0,
) -> Tensor:
    r"""Update personal bests from this step's losses, in place; return the improved mask.

    Losses on a mini-batch are noisy, and a best recorded on one lucky batch would
    otherwise be kept forever. So before comparing, each stored best loss is pulled a
    fraction ``forget`` (:math:`\phi`) of the way up toward the particle's current loss:

    .. math::
        \begin{aligned}
            \hat f_i &\leftarrow \hat f_i + \phi\,\max(0,\, f_i - \hat f_i) \\
            \text{if } f_i \le \hat f_i \text{ and particle } i \text{ is finite:}
              &\quad p_i \leftarrow x_i,\ \hat f_i \leftarrow f_i
        \end{aligned}

    :math:`\phi = 0` is the classic rule; with :math:`\phi > 0` a stale best is forgotten
    within roughly :math:`1/\phi` steps unless it keeps being confirmed. Invalid particles
    (``valid[i]`` false: a NaN/inf loss or gradient) never become a best, and their stored
    best loss is not touched.

    Args:
        positions, pbests: per-parameter tensors of shape ``(N, *shape)``.
        pbest_losses: ``(N,)`` stored best losses (updated in place).
        losses: ``(N,)`` this step's losses.
        valid: ``(N,)`` bool, which particles are finite.
        forget: :math:`\phi \in [0, 1]`.
    """
    losses = losses.to(pbest_losses.dtype)
    if forget > 0.0:
        gap = torch.where(valid, (losses - pbest_losses).clamp_min(0.0), 0.0)
        # inf - inf is NaN; an untouched best (inf) simply stays inf until a finite loss arrives
        gap = torch.nan_to_num(gap, nan=0.0, posinf=0.0)
        pbest_losses.add_(gap, alpha=forget)
    improved = valid & (losses <= pbest_losses)
    pbest_losses.copy_(torch.where(improved, losses, pbest_losses))
    if not pbests:  # only the losses were asked for
        return improved
    rows = improved.nonzero().flatten()
    if rows.numel() == improved.numel():  # every particle improved: plain copies
        torch._foreach_copy_(list(pbests), list(positions))
    elif rows.numel():
        for x, p in zip(positions, pbests, strict=True):
            p.index_copy_(0, rows.to(p.device), x.index_select(0, rows.to(x.device)))
    return improved


def perturb_(
    targets: Sequence[Tensor],
    centers: Sequence[Tensor],
    spread: float,
    noises: Sequence[Tensor],
) -> None:
    r"""Set each ``targets[k]`` to ``centers[k] + spread * noises[k]``, in place.

    ``targets[k]`` and ``noises[k]`` have shape ``(M, *shape)`` (the noise is standard normal
    in the optimizer), ``centers[k]`` shape ``shape`` (broadcast over the first dimension).
    """
    _check_lists(targets=targets, centers=centers, noises=noises)
    for t, c, e in zip(targets, centers, noises, strict=True):
        torch.add(c.unsqueeze(0), e.to(device=t.device, dtype=t.dtype), alpha=spread, out=t)


def success_adaptive_coefficients(
    success_rate: float,
    *,
    inertia: float,
    cognitive: float,
    social: float,
) -> tuple[float, float, float]:
    r"""Swarm coefficients adapted to the smoothed fraction of improving particles.

    .. math::
        \begin{aligned}
            w_t     &= w\,(0.5 + 0.5\,\bar s_t) \\
            c_{1,t} &= c_1\,(0.5 + 0.5\,\bar s_t) \\
            c_{2,t} &= c_2\,(1.5 - 0.5\,\bar s_t)
        \end{aligned}

    :math:`\bar s_t \in [0, 1]` is an exponential moving average of the fraction of
    particles that improved their personal best in a step (the optimizer starts it at 1).
    While particles keep improving, every coefficient stays at its base value, so ``lr`` and
    ``inertia`` act like SGD's learning rate and momentum; as success fades, momentum and
    self-trust shrink toward half and the pull toward the global best grows by up to half
    (exploitation of what the swarm has found).
    """
    if not math.isfinite(success_rate):
        raise ValueError(f"success_rate must be finite, got {success_rate}")
    s = min(max(success_rate, 0.0), 1.0)
    return inertia * (0.5 + 0.5 * s), cognitive * (0.5 + 0.5 * s), social * (1.5 - 0.5 * s)
