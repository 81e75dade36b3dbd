"""The move: velocity and position update of every group, by the reference or the fused path.

The reference path is :func:`hgpso.functional.hgpso_update` (``gradient="sgd"``) or
:func:`hgpso.functional.hgpso_adam_update` (``gradient="adam"``, which also replaces the
particles' moments) into new tensors (``r1``'s
storage becomes the velocities; one more ``(N, *S)`` scratch per parameter becomes the
positions), nothing written. The fused path updates in place, so every input is made ready
(contiguous, right dtype) first and the launch is deferred to the step's commit; it then
writes the state's own tensors (no copy, which is the point of the kernel). Only an error
inside the op itself (a CUDA error, after which the CUDA context is unusable anyway) could
leave one group moved and another not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hgpso import functional as F
from hgpso import kernels
from hgpso.optim.random import SwarmRandom

__all__ = ["GroupMove", "group_moves", "move", "wants_fused"]


@dataclass
class GroupMove:
    """One param group's inputs to the move (its swarm parameters only)."""

    index: int  #: the group's index in ``param_groups`` (the fused kernel's counter)
    ks: list[int]  #: the indices of its parameters among all the swarm's parameters
    positions: list[Tensor]
    velocities: list[Tensor]
    pbests: list[Tensor]
    gbests: list[Tensor]
    grads: list[Tensor] | None
    lr: float | Tensor  #: one float, or one per row (``lr_spread > 1``)
    inertia: float
    cognitive: float
    social: float
    max_velocity: float | None
    weight_decay: float = 0.0
    #: ``"adam"``: the moments' state, its ``betas``/``eps`` and this process's rows' step
    #: counts after this step (``None`` for ``"sgd"``)
    moments: dict[str, list[Tensor]] | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    steps: Tensor | None = None


def group_moves(
    groups: list[tuple[int, dict[str, Any], list[int]]],
    hyper: list[dict[str, Any]],
    positions: list[Tensor],
    velocities: list[Tensor],
    pbests: list[Tensor],
    gbests: list[Tensor],
    grads: list[Tensor] | None,
    *,
    moments: dict[str, list[Tensor]] | None = None,
    steps: Tensor | None = None,
) -> list[GroupMove]:
    """Each group's :class:`GroupMove` (``groups``: index, group, its parameters' indices;
    ``hyper``: the coefficients each group's move uses, after adaptation; ``moments``: the
    ``"adam"`` term's state of every parameter, ``steps`` its per-row counts after this
    step)."""
    out = []
    for (gi, group, ks), hp in zip(groups, hyper, strict=True):
        own = None if moments is None else {key: [ts[k] for k in ks] for key, ts in moments.items()}
        out.append(
            GroupMove(
                index=gi,
                ks=ks,
                positions=[positions[k] for k in ks],
                velocities=[velocities[k] for k in ks],
                pbests=[pbests[k] for k in ks],
                gbests=[gbests[k] for k in ks],
                grads=None if grads is None else [grads[k] for k in ks],
                lr=hp["lr"],
                inertia=hp["inertia"],
                cognitive=hp["cognitive"],
                social=hp["social"],
                max_velocity=group["max_velocity"],
                weight_decay=group.get("weight_decay", 0.0),
                moments=own,
                betas=tuple(group.get("betas", (0.9, 0.999))),
                eps=group.get("eps", 1e-8),
                steps=steps,
            )
        )
    return out


def wants_fused(fused: bool | None, device: torch.device, *, allowed: bool) -> bool:
    """Whether the move runs through the fused kernel: asked for (``fused=True``) or, by
    default, on CUDA when the kernel is available; never where it is not ``allowed``
    (sharded swarms: the kernel's randoms depend on a particle's row in its tensor; the
    ``"adam"`` gradient term, which the kernel does not implement)."""
    if not allowed:
        return False
    return fused is True or (fused is None and device.type == "cuda" and kernels.is_available())


def move(
    groups: list[GroupMove],
    *,
    fused: bool,
    rng: SwarmRandom,
    kernel_seed: int,
    step: int,
    num_groups: int,
) -> tuple[list[dict[str, Tensor]], list[Callable[[], None]]]:
    """The new state of every swarm parameter, in parameter order (``position``,
    ``velocity`` and, for ``"adam"``, ``exp_avg`` and ``exp_avg_sq``), and the fused
    kernel's deferred launches (empty on the reference path)."""
    count = sum(len(g.ks) for g in groups)
    moved: list[dict[str, Tensor] | None] = [None] * count
    launches: list[Callable[[], None]] = []
    for g in groups:
        if fused:
            new_x, new_v, launch = _fused_group(g, kernel_seed, step * num_groups + g.index)
            launches.append(launch)
            new = {"position": new_x, "velocity": new_v}
        else:
            new = _reference_group(g, rng)
        for j, k in enumerate(g.ks):
            moved[k] = {key: ts[j] for key, ts in new.items()}
    assert all(m is not None for m in moved)
    return [m for m in moved if m is not None], launches


def _reference_group(g: GroupMove, rng: SwarmRandom) -> dict[str, list[Tensor]]:
    r1 = [rng.uniform(x.shape, x.dtype) for x in g.positions]
    r2 = [rng.uniform(x.shape, x.dtype) for x in g.positions]
    if g.moments is not None:
        assert g.grads is not None and g.steps is not None
        new = F.hgpso_adam_update(
            g.positions,
            g.velocities,
            g.pbests,
            g.gbests,
            g.grads,
            g.moments["exp_avg"],
            g.moments["exp_avg_sq"],
            g.steps,
            r1,
            r2,
            lr=g.lr,
            inertia=g.inertia,
            cognitive=g.cognitive,
            social=g.social,
            betas=g.betas,
            eps=g.eps,
            weight_decay=g.weight_decay,
            max_velocity=g.max_velocity,
        )
        return {
            "position": new.positions,
            "velocity": new.velocities,
            "exp_avg": new.exp_avgs,
            "exp_avg_sq": new.exp_avg_sqs,
        }
    new_x, new_v = F.hgpso_update(
        g.positions,
        g.velocities,
        g.pbests,
        g.gbests,
        g.grads,
        r1,
        r2,
        lr=g.lr,
        inertia=g.inertia,
        cognitive=g.cognitive,
        social=g.social,
        max_velocity=g.max_velocity,
        weight_decay=g.weight_decay,
    )
    return {"position": new_x, "velocity": new_v}


def _fused_group(
    g: GroupMove, seed: int, offset: int
) -> tuple[list[Tensor], list[Tensor], Callable[[], None]]:
    lr = g.lr
    assert not isinstance(lr, Tensor), "the kernel takes one learning rate per group"
    xs = [x.contiguous() for x in g.positions]
    vs = [v.contiguous() for v in g.velocities]

    def ready(ts: list[Tensor]) -> list[Tensor]:
        return [t.to(x.dtype).contiguous() for t, x in zip(ts, xs, strict=True)]

    ps, gs = ready(g.pbests), ready(g.gbests)
    if g.weight_decay != 0.0 and g.grads is not None and g.lr != 0.0:  # L2, as the reference
        grs: list[Tensor] | None = ready(
            list(torch._foreach_add(g.grads, g.positions, alpha=g.weight_decay))
        )
    else:
        grs = None if g.grads is None else ready(g.grads)
    for x in xs:
        if not kernels.supports_device(x.device):
            raise RuntimeError(f"the fused HG-PSO kernel runs on CUDA tensors only, got {x.device}")

    def launch() -> None:
        kernels.fused_hgpso_update_(
            xs,
            vs,
            ps,
            gs,
            grs,
            seed=seed,
            offset=offset,
            lr=lr,
            inertia=g.inertia,
            cognitive=g.cognitive,
            social=g.social,
            max_velocity=g.max_velocity,
        )

    return xs, vs, launch
