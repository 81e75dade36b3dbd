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
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "AdamUpdate",
    "accept_personal_bests_",
    "adam_gradient_term",
    "hgpso_adam_update",
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
    lr: float | Tensor,
    inertia: float,
    cognitive: float,
    social: float,
    max_velocity: float | None = None,
    weight_decay: float = 0.0,
) -> tuple[list[Tensor], list[Tensor]]:
    r"""One velocity and position update of every particle, into new tensors.

    .. math::
        \begin{aligned}
            v' &= w\,v + c_1 r_1 \odot (p - x) + c_2 r_2 \odot (g - x)
                  - \eta\,(\nabla L(x) + \lambda x) \\
            v' &\leftarrow \operatorname{clamp}(v', -v_{max}, v_{max})
                 \quad \text{(if } v_{max} \text{ is given)} \\
            x' &= x + v'
        \end{aligned}

    with :math:`w` = ``inertia``, :math:`c_1` = ``cognitive``, :math:`c_2` = ``social``,
    :math:`\eta` = ``lr``, :math:`\lambda` = ``weight_decay`` (L2, added to the gradient as
    :class:`torch.optim.SGD` does), :math:`p` the personal bests, :math:`g` the global best
    and :math:`r_1, r_2 \sim U[0, 1)` drawn per element and per particle (given here, so the
    caller owns the random stream). ``grads=None`` (or ``lr == 0``) gives the plain,
    gradient-free PSO update. ``pbests`` may be ``positions`` itself (a swarm whose personal
    bests are its current positions: the cognitive term is then :math:`c_1 r_1 \odot 0`).
    For Adam's preconditioned gradient term see :func:`hgpso_adam_update`. ``lr`` may be
    a ``(N,)`` tensor, one learning rate :math:`\eta_i` per particle (row).

    The arithmetic is done in this order (the fused kernel follows it, so results agree
    to rounding): ``v' = w*v``; ``v' += c1*(r1*(p - x))``; ``v' += c2*(r2*(g - x))``;
    ``v' -= lr*(grad + weight_decay*x)``; clamp; ``x' = x + v'``.

    Returns:
        ``(new_positions, new_velocities)``. ``positions``, ``velocities``, ``pbests``,
        ``gbests``, ``grads`` and ``r2`` are only read; ``r1`` **is consumed**: once
        :math:`r_1 \odot (p - x)` is formed its storage holds :math:`v'` and is returned, so
        the update needs one ``(N, *S)`` scratch tensor per parameter besides ``r1``,
        ``r2`` and the two results (the new positions are written into that scratch; one
        more with ``weight_decay``). Pass a clone of ``r1`` to keep it.
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
    scratch, new_v = _swarm_pull(
        positions, velocities, pbests, gbests, r1, r2, inertia, cognitive, social
    )
    # - lr*grad (L2 weight decay into the gradient first, as torch.optim.SGD)
    if grads is not None and (isinstance(lr, Tensor) or lr != 0.0):
        grads = list(grads)
        if weight_decay != 0.0:
            grads = list(torch._foreach_add(grads, positions, alpha=weight_decay))
        if isinstance(lr, Tensor):  # one learning rate per particle
            for v, g in zip(new_v, grads, strict=True):
                v.addcmul_(g, _rows(lr, g), value=-1.0)
        else:
            torch._foreach_add_(new_v, grads, alpha=-lr)
    return _clamp_and_move(scratch, new_v, positions, max_velocity)


def _rows(values: Tensor, like: Tensor) -> Tensor:
    """A ``(N,)`` tensor in ``like``'s dtype and device, shaped to broadcast over its rows."""
    return values.to(like.device, like.dtype).view((-1,) + (1,) * (like.dim() - 1))


def _swarm_pull(
    positions: list[Tensor],
    velocities: Sequence[Tensor],
    pbests: Sequence[Tensor],
    gbests: Sequence[Tensor],
    r1: Sequence[Tensor],
    r2: Sequence[Tensor],
    inertia: float,
    cognitive: float,
    social: float,
) -> tuple[list[Tensor], list[Tensor]]:
    """``(scratch, w*v + c1*r1*(p - x) + c2*r2*(g - x))``; ``r1``'s storage holds the sum."""
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
    return scratch, new_v


def _clamp_and_move(
    scratch: list[Tensor],
    new_v: list[Tensor],
    positions: list[Tensor],
    max_velocity: float | None,
    shrink: float | Tensor = 1.0,
) -> tuple[list[Tensor], list[Tensor]]:
    """``v'`` clamped, then ``x' = shrink*x + v'`` into ``scratch`` (``shrink``: a float, or
    one per row)."""
    if max_velocity is not None:
        torch._foreach_clamp_min_(new_v, -max_velocity)
        torch._foreach_clamp_max_(new_v, max_velocity)
    for out, x, v in zip(scratch, positions, new_v, strict=True):
        if not isinstance(shrink, Tensor) and shrink == 1.0:
            torch.add(x, v, out=out)
        else:  # decoupled weight decay: x*(1 - lr*wd) first, as torch.optim.AdamW
            torch.mul(x, shrink if not isinstance(shrink, Tensor) else _rows(shrink, x), out=out)
            out.add_(v)
    return scratch, new_v


class AdamUpdate(NamedTuple):
    """What :func:`hgpso_adam_update` returns: new tensors, in the order of its inputs."""

    positions: list[Tensor]
    velocities: list[Tensor]
    exp_avgs: list[Tensor]
    exp_avg_sqs: list[Tensor]


def _bias_corrections(
    steps: int | Tensor, lr: float | Tensor, beta1: float, beta2: float, like: Tensor
) -> tuple[Tensor, Tensor]:
    """``(-lr / (1 - beta1**t), sqrt(1 - beta2**t))`` of every row's count ``t`` (one int for
    all rows, or ``(N,)``; ``lr`` likewise), computed in float64 as torch's Adam computes
    them in Python floats, then rounded to ``like``'s dtype (as torch rounds a scalar
    operand) and shaped to broadcast over the rows."""
    if isinstance(steps, int) and steps < 1:
        raise ValueError(f"steps must be >= 1 (the count after this step), got {steps}")
    # a tensor of counts is not checked here: that would wait on the device every step
    t = torch.as_tensor(steps, device=like.device).to(torch.float64).reshape(-1)
    shape = (-1,) + (1,) * (like.dim() - 1)
    if isinstance(lr, Tensor):
        lr = lr.to(like.device, torch.float64)
    step_size = (-(lr / (1 - beta1**t))).to(like.dtype).view(shape)
    bc2_sqrt = ((1 - beta2**t) ** 0.5).to(like.dtype).view(shape)
    return step_size, bc2_sqrt


def adam_gradient_term(
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    steps: int | Tensor,
    *,
    lr: float | Tensor,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    r"""Adam's step of every particle, into new tensors: ``(terms, exp_avgs', exp_avg_sqs')``.

    .. math::
        \begin{aligned}
            m' &= \beta_1 m + (1 - \beta_1)\,g, \qquad
            s' = \beta_2 s + (1 - \beta_2)\,g^2 \\
            \hat m &= m' / (1 - \beta_1^t), \qquad \hat s = s' / (1 - \beta_2^t) \\
            \text{term} &= -\eta\,\hat m / (\sqrt{\hat s} + \epsilon)
        \end{aligned}

    ``steps`` is :math:`t`, the count **after** this step (``>= 1``): an int for every
    particle, or a ``(N,)`` tensor of per-particle counts; ``lr`` likewise a float or one
    learning rate per particle. The arithmetic is that of
    ``torch.optim.Adam`` (``_single_tensor_adam``: ``lerp`` for :math:`m`,
    ``mul``/``addcmul`` for :math:`s`, ``denom = sqrt(s')/sqrt(1 - beta2**t) + eps``, the
    term ``(-step_size * m') / denom``), so that one particle's step equals Adam's. The
    inputs are only read.
    """
    _check_lists(grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs)
    beta1, beta2 = betas
    terms, new_m, new_s = [], [], []
    for g, m, s in zip(grads, exp_avgs, exp_avg_sqs, strict=True):
        m = torch.lerp(m, g, 1 - beta1)
        s = torch.mul(s, beta2).addcmul_(g, g, value=1 - beta2)
        step_size, bc2_sqrt = _bias_corrections(steps, lr, beta1, beta2, g)
        denom = (s.sqrt() / bc2_sqrt).add_(eps)
        terms.append(torch.mul(m, step_size).div_(denom))
        new_m.append(m)
        new_s.append(s)
    return terms, new_m, new_s


def hgpso_adam_update(
    positions: Sequence[Tensor],
    velocities: Sequence[Tensor],
    pbests: Sequence[Tensor],
    gbests: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    steps: int | Tensor,
    r1: Sequence[Tensor],
    r2: Sequence[Tensor],
    *,
    lr: float | Tensor,
    inertia: float,
    cognitive: float,
    social: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    max_velocity: float | None = None,
) -> AdamUpdate:
    r"""The update of :func:`hgpso_update` with Adam's preconditioned gradient term and
    decoupled weight decay (AdamW), into new tensors.

    .. math::
        \begin{aligned}
            v' &= w\,v + c_1 r_1 \odot (p - x) + c_2 r_2 \odot (g - x)
                  - \eta\,\hat m / (\sqrt{\hat s} + \epsilon) \\
            v' &\leftarrow \operatorname{clamp}(v', -v_{max}, v_{max}) \\
            x' &= (1 - \eta\lambda)\,x + v'
        \end{aligned}

    with :math:`\hat m, \hat s` each particle's bias-corrected moments of its own gradient
    (:func:`adam_gradient_term`; ``steps`` is :math:`t` after this step). With
    :math:`w = c_1 = c_2 = 0` and one particle this is ``torch.optim.AdamW``'s step (``Adam``
    with :math:`\lambda = 0`), to the bit: the position is decayed first and the term added
    to it, in torch's order. ``r1`` is consumed as in :func:`hgpso_update`; the other inputs
    are only read. ``lr`` may be a ``(N,)`` tensor, one :math:`\eta_i` per particle.
    """
    n = _check_lists(
        positions=positions,
        velocities=velocities,
        pbests=pbests,
        gbests=gbests,
        grads=grads,
        exp_avgs=exp_avgs,
        exp_avg_sqs=exp_avg_sqs,
        r1=r1,
        r2=r2,
    )
    if n == 0:
        return AdamUpdate([], [], [], [])
    positions = list(positions)
    terms, new_m, new_s = adam_gradient_term(
        grads, exp_avgs, exp_avg_sqs, steps, lr=lr, betas=betas, eps=eps
    )
    scratch, new_v = _swarm_pull(
        positions, velocities, pbests, gbests, r1, r2, inertia, cognitive, social
    )
    torch._foreach_add_(new_v, terms)
    shrink = 1.0 if weight_decay == 0.0 else 1 - lr * weight_decay
    new_x, new_v = _clamp_and_move(scratch, new_v, positions, max_velocity, shrink)
    return AdamUpdate(new_x, new_v, new_m, new_s)


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
    weight_decay: float = 0.0,
) -> None:
    r"""The update of :func:`hgpso_update`, written back into ``positions`` and
    ``velocities`` (the reference every fused kernel is tested against; ``r1`` and ``r2``
    are left as given).

    .. math::
        \begin{aligned}
            v &\leftarrow w\,v + c_1 r_1 \odot (p - x) + c_2 r_2 \odot (g - x)
                 - \eta\,(\nabla L(x) + \lambda x) \\
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
        weight_decay=weight_decay,
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
