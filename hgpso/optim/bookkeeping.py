"""Best bookkeeping: valid particles, scores, personal and global bests, adaptation, re-seeding.

Everything here computes into new tensors or returns new numbers; nothing writes the
optimizer's state, so a step that fails later leaves it as it was (the caller commits).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hgpso import functional as F
from hgpso.optim.random import SwarmRandom

__all__ = [
    "Tally",
    "accept_bests",
    "adapt",
    "fresh_rows",
    "gbest_changed",
    "next_adam_steps",
    "score",
    "tally",
    "valid_particles",
    "write_rows",
]


def valid_particles(losses: Tensor, grads: Sequence[Tensor] | None) -> Tensor:
    """NaN guard: a particle with a non-finite loss or gradient is never a best; its
    gradient rows are zeroed so its garbage stays out of the arithmetic."""
    valid = torch.isfinite(losses)
    if grads is None:
        return valid
    for g in grads:
        flat = g.reshape(g.shape[0], -1)
        # a NaN/inf element always makes the row sum non-finite; only a row whose
        # finite elements overflow the sum needs the exact (8x dearer) check
        row_ok = torch.isfinite(flat.sum(1))
        if not bool(row_ok.all()):
            row_ok = torch.isfinite(flat).all(1)
        valid &= row_ok
    if not bool(valid.all()):
        for g in grads:
            g.masked_fill_(~valid.view((-1,) + (1,) * (g.dim() - 1)), 0.0)
    return valid


def score(
    pbest_losses: Tensor,
    losses: Tensor,
    valid: Tensor,
    *,
    forget: float,
    keep_pbest: bool,
    has_pbest: bool,
) -> tuple[Tensor, Tensor]:
    r"""This step's improved mask and new best losses, into temporaries.

    With ``forget < 1`` this is :func:`hgpso.functional.accept_personal_bests_`. With
    ``forget = 1`` (:math:`\phi = 1`) every finite particle improves and its best loss
    becomes its loss on this batch; no personal-best position is stored (it would equal
    the position just scored), so a particle that is not finite has no best on this
    batch: its best loss becomes :math:`+\infty` (with a stored best it would keep a loss
    measured on an earlier batch, which could make its old position the global best).
    If no particle is finite, the global best of the previous step is kept.
    """
    pbest_losses = pbest_losses.clone()
    if keep_pbest and not has_pbest:
        pbest_losses.fill_(math.inf)  # forget lowered below 1: memory starts afresh
    improved = F.accept_personal_bests_([], [], pbest_losses, losses, valid, forget=forget)
    if not keep_pbest:
        pbest_losses.masked_fill_(~valid, math.inf)
    return improved, pbest_losses


@dataclass
class Tally:
    """One step's scoring: the masks and new best losses (device tensors, all ``N``
    particles) and, from one host read, the numbers the bookkeeping branches on."""

    valid: Tensor
    improved: Tensor
    pbest_losses: Tensor
    n_valid: int
    n_improved: int
    best_now: float  #: the lowest valid loss of this step (``inf``: none)
    gbest_loss: float  #: the lowest best loss (``inf``: no particle has a finite best)
    b: int  #: its particle
    b_improved: bool  #: whether particle ``b`` improved on this step
    b_loss: float  #: particle ``b``'s loss on this batch
    local_improved: int  #: how many of this process's particles improved


def tally(
    losses: Tensor, valid: Tensor, improved: Tensor, pbest_losses: Tensor, local_improved: Tensor
) -> Tally:
    """The step's numbers in one host read (``local_improved``: this process's rows of
    ``improved``)."""
    best = pbest_losses.argmin()
    numbers = torch.stack(
        [
            valid.sum().float(),
            improved.sum().float(),
            torch.where(valid, losses, math.inf).min(),
            pbest_losses[best],
            best.float(),
            improved[best].float(),
            losses[best],
            local_improved.sum().float(),
        ]
    ).tolist()
    n_valid, n_improved, best_now, gbest_loss, b, b_improved, b_loss, local = numbers
    return Tally(
        valid,
        improved,
        pbest_losses,
        int(n_valid),
        int(n_improved),
        best_now,
        gbest_loss,
        int(b),
        bool(b_improved),
        b_loss,
        int(local),
    )


def accept_bests(
    positions: list[Tensor],
    olds: list[Tensor] | None,
    improved: Tensor,
    count: int,
    *,
    keep_pbest: bool,
    in_place_move: bool,
) -> list[Tensor]:
    """The personal bests after this step (``pbest_i <- x_i`` for improved particles), as
    new tensors or as the unchanged stored ones ``olds`` (``None``: none stored yet, start
    from the positions). With ``forget = 1`` they are the positions themselves. ``count``
    is ``improved.sum()``, already read on the host; ``in_place_move``: the move writes the
    positions in place (fused kernel), so they must be copied to serve as bests."""
    if not keep_pbest:
        return positions
    if olds is None:  # forget lowered below 1: start from the positions
        olds = [x.clone() for x in positions]
    if count == 0:
        return olds
    if count == improved.numel():
        # every particle improved: the scored positions become the bests; they are
        # replaced (not written) by the move, except on the fused path
        return [x.clone() for x in positions] if in_place_move else positions
    out = []
    for x, old in zip(positions, olds, strict=True):
        mask = improved.view((-1,) + (1,) * (x.dim() - 1))
        out.append(torch.where(mask, x, old))
    return out


def adapt(swarm: dict[str, Any], options: dict[str, Any], success: float, best_now: float) -> None:
    r"""Smoothed progress signals, updated in ``swarm``: success rate, loss EMA, stall counter,
    learning-rate scale (the numbers only; the caller restores them if the step fails)."""
    beta = options["ema_beta"]
    swarm["success_rate"] = beta * swarm["success_rate"] + (1 - beta) * success
    if not math.isfinite(best_now):
        swarm["steps_since_improvement"] += 1
        return
    ema = swarm["loss_ema"]
    ema = best_now if ema is None else beta * ema + (1 - beta) * best_now
    swarm["loss_ema"] = ema
    best = swarm["best_loss_ema"]
    if ema < best - options["tol"] * abs(best) or not math.isfinite(best):
        swarm["best_loss_ema"] = ema
        swarm["steps_since_improvement"] = 0
        return
    swarm["steps_since_improvement"] += 1
    if options["adaptive"] and swarm["steps_since_improvement"] % options["lr_patience"] == 0:
        swarm["lr_scale"] = max(swarm["lr_scale"] * options["lr_factor"], options["min_lr_scale"])


def fresh_rows(
    bad: Tensor,
    groups: Sequence[tuple[dict[str, Any], Sequence[int]]],
    positions: Sequence[Tensor],
    gbests: Sequence[Tensor],
    rng: SwarmRandom,
    particles: list[int] | None,
) -> list[tuple[int, Tensor, Tensor]]:
    """Fresh rows near the global best for the non-finite particles ``bad`` (this process's
    rows), to be written (at rest) into the moved tensors: ``(parameter index, rows, new
    positions)``. ``groups``: each group and the indices of its parameters; ``particles``:
    the global indices of the bad rows when each particle has its own random stream."""
    idx = bad.nonzero().flatten()
    rows = []
    # one pass in parameter order, so the random stream is deterministic
    for group, ks in groups:
        for k in ks:
            x = positions[k]
            fresh = torch.empty((idx.numel(), *x.shape[1:]), dtype=x.dtype, device=x.device)
            noise = rng.normal(tuple(fresh.shape), fresh.dtype, rows=particles)
            F.perturb_([fresh], [gbests[k]], group["init_spread"], [noise])
            rows.append((k, idx, fresh))
    return rows


def gbest_changed(swarm: dict[str, Any], b: int, improved_b: bool, *, stored: bool) -> bool:
    """Whether the new global best (particle ``b``'s personal best) may differ from the one
    stored (a sharded swarm's owner of ``b`` then sends it). ``stored``: personal bests are
    kept; without them (``forget = 1``) the bests are the positions just scored."""
    return (
        not stored
        or improved_b
        or b != swarm["gbest_index"]
        or not math.isfinite(swarm["gbest_loss"])
    )


def write_rows(moved: list[dict[str, Tensor]], rows: list[tuple[int, Tensor, Tensor]]) -> None:
    """Write re-seeded rows into the moved state: the fresh positions, at rest (zero
    velocity) and, with the ``"adam"`` term, zero moments (a new particle's)."""
    for k, idx, fresh in rows:
        for key, t in moved[k].items():
            if key == "position":
                t[idx] = fresh
            else:
                t[idx] = 0.0


def next_adam_steps(steps: Tensor, valid: Tensor) -> Tensor:
    """Every particle's Adam step count after this step (``(N,)``): one more, 0 for a
    re-seeded (non-finite) particle, whose moments start afresh."""
    return torch.where(valid.to(steps.device), steps + 1, 0)
