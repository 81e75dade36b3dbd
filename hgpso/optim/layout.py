"""The swarm's state layout: the single definition of what is stored, allocation, fill-in.

``optimizer.state[p]``, for every parameter ``p`` of the swarm (shape ``S``, ``P`` elements)
    In ``p``'s dtype and device. ``position``, ``velocity``: tensors of shape ``(M, *S)``;
    row ``j`` is particle ``start + j`` of the ``M`` particles this process holds (all
    ``N``, ``start = 0``, unless ``distributed="sharded"``).
    ``gbest``: shape ``S``, the global best position (what the model holds after a step).
    ``pbest``: shape ``(M, *S)``, the personal bests, **only when** ``forget < 1``. With
    ``forget = 1`` a particle's personal best is always the position it was just scored at,
    so none is stored: the swarm keeps :math:`(2N + 1)P` numbers instead of
    :math:`(3N + 1)P` (``hgpso.optim.bookkeeping.score`` says the one case where this
    changes a result: particles that are not finite).
    ``exp_avg``, ``exp_avg_sq``: shape ``(M, *S)``, **only with** ``gradient="adam"``: each
    particle's first and second moments of its own gradient (Adam's, bias-corrected with
    the particle's own step count ``state["swarm"]["adam_steps"]``); zero for a new or
    re-seeded particle. :math:`(4N + 1)P` numbers at ``forget = 1``, :math:`(5N + 1)P` below.
``optimizer.state["swarm"]``, one per optimizer (a particle spans all groups)
    ``step`` (int), ``pbest_losses`` (``(N,)`` float32 on the parameters' device, all ``N``
    particles on every rank; with ``forget = 1`` the losses of the last scoring, ``+inf``
    for a non-finite particle), ``gbest_index`` (int: the particle whose scored position
    became ``gbest``), ``gbest_loss`` (float), ``rng_state`` (the state of the swarm's
    :class:`~hgpso.optim.random.SwarmRandom`, refreshed by ``state_dict()`` and pickling),
    ``kernel_seed`` (int, for the fused kernel's counter-based randoms), ``success_rate``,
    ``loss_ema``, ``best_loss_ema`` (floats), ``steps_since_improvement`` (int),
    ``lr_scale`` (float), ``nan_reseeds`` (int), ``evaluations`` (int: forward passes
    spent); with ``gradient="adam"`` ``adam_steps`` (``(N,)`` int64 on the parameters'
    device, all ``N`` on every rank: how many gradients each particle's moments hold, 0
    after a re-seed); with ``lr_spread > 1`` ``lr_factors`` (``(N,)`` float64, all ``N`` on
    every rank: each particle's learning-rate factor, :mod:`hgpso.optim.particle_lr`);
    under ``distributed="sharded"`` ``shard`` (``world_size``, ``rank``,
    ``start``, ``stop``); and the per-particle buffers of :mod:`hgpso.optim.particle_buffers`.
``optimizer.defaults["swarm_options"]``
    The swarm-wide options (:mod:`hgpso.optim.options`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from hgpso import functional as F
from hgpso.optim.particle_lr import initial_factors
from hgpso.optim.random import SwarmRandom

__all__ = [
    "MOMENT_KEYS",
    "SWARM_DEFAULTS",
    "SWARM_KEY",
    "allocate",
    "fill_in",
    "new_swarm_state",
    "out_of_memory_message",
]

#: where the swarm-wide state lives in ``optimizer.state``
SWARM_KEY = "swarm"
#: the per-particle state of the ``"adam"`` gradient term, beside positions and velocities
MOMENT_KEYS = ("exp_avg", "exp_avg_sq")
#: swarm-wide entries an older checkpoint may lack, and the value they start from
SWARM_DEFAULTS: dict[str, Any] = {
    "gbest_loss": math.inf,
    "rng_state": None,
    "kernel_seed": 0,
    "success_rate": 1.0,
    "loss_ema": None,
    "best_loss_ema": math.inf,
    "steps_since_improvement": 0,
    "lr_scale": 1.0,
    "nan_reseeds": 0,
    "evaluations": 0,
}


def allocate(
    groups: Sequence[tuple[dict[str, Any], Sequence[Tensor]]],
    rng: SwarmRandom,
    rows: range,
    *,
    keep_pbest: bool,
    moments: bool = False,
) -> dict[Tensor, dict[str, Tensor]]:
    """Per-parameter state for the particles of ``rows``: ``position``, ``velocity`` (and
    ``pbest`` when ``keep_pbest``, zero ``exp_avg`` and ``exp_avg_sq`` with ``moments``) of
    shape ``(len(rows), *S)``, ``gbest`` of shape ``S``.

    Particle 0 is the model as given; the others scatter around it with the group's
    ``init_spread``, drawn in parameter order so that the stream is deterministic.
    """
    n = len(rows)
    first = 1 if rows.start == 0 else 0
    scattered = rows[first:]
    out: dict[Tensor, dict[str, Tensor]] = {}
    with torch.no_grad():
        for group, params in groups:
            for p in params:
                if p.is_sparse:
                    raise RuntimeError("HGPSO does not support sparse parameters")
                position = p.detach().unsqueeze(0).repeat((n,) + (1,) * p.dim())
                noise = rng.normal((n - first, *p.shape), p.dtype, rows=scattered)
                F.perturb_([position[first:]], [p.detach()], group["init_spread"], [noise])
                out[p] = {
                    "position": position,
                    "velocity": torch.zeros_like(position),
                    "gbest": p.detach().clone(),  # particle 0, the model as given
                }
                if keep_pbest:
                    out[p]["pbest"] = position.clone()
                for key in MOMENT_KEYS if moments else ():
                    out[p][key] = torch.zeros_like(position)
    return out


def new_swarm_state(
    num_particles: int,
    device: torch.device,
    kernel_seed: int,
    *,
    moments: bool = False,
    lr_spread: float = 1.0,
) -> dict[str, Any]:
    """``state["swarm"]`` of a swarm that has not been scored yet."""
    out = {
        "step": 0,
        "pbest_losses": torch.full((num_particles,), math.inf, device=device),
        "gbest_index": 0,
        **SWARM_DEFAULTS,
        "kernel_seed": kernel_seed,
    }
    if moments:
        out["adam_steps"] = torch.zeros(num_particles, dtype=torch.int64, device=device)
    if lr_spread > 1.0:
        out["lr_factors"] = initial_factors(num_particles, lr_spread, device)
    return out


def fill_in(state: dict[Any, Any], params: Sequence[Tensor], *, keep_pbest: bool) -> None:
    """After loading: entries an older checkpoint lacks (the swarm-wide defaults; ``gbest``,
    the personal best of particle ``gbest_index``), and no stored personal bests when
    ``forget = 1``."""
    swarm = state[SWARM_KEY]
    for key, default in SWARM_DEFAULTS.items():
        swarm.setdefault(key, default)
    i = swarm["gbest_index"]
    for p in params:
        st = state[p]
        if "gbest" not in st:
            st["gbest"] = st["pbest"][i].clone()
        if not keep_pbest:
            st.pop("pbest", None)


def out_of_memory_message(
    params: Sequence[Tensor],
    n: int,
    *,
    keep_pbest: bool,
    device: torch.device,
    during: str,
    moments: bool = False,
) -> str:
    """What a swarm of ``n`` particles (this process's) needs, for an out-of-memory error
    ``during`` allocation or a step."""
    count = sum(p.numel() for p in params)
    per_copy = sum(p.numel() * p.element_size() for p in params)
    copies = (2 + keep_pbest + 2 * moments) * n + 1
    need = copies * per_copy
    step_need = (4 + 4 * moments) * n * per_copy
    what = "positions, velocities" + (", personal bests" if keep_pbest else "")
    what += ", Adam's moments" if moments else ""
    return (
        f"out of memory {during} a swarm of num_particles={n} for a model of {count} "
        f"parameters ({len(params)} tensors, {per_copy} bytes): its {what} and global best "
        f"({copies} copies of the model) need {need} bytes ({need / 2**30:.2f} GiB) on "
        f"{device}, and a step needs about {step_need} bytes ({step_need / 2**30:.2f} GiB) "
        f"more for gradients and temporaries ({4 + 4 * moments} copies per particle); lower "
        "num_particles"
    )
