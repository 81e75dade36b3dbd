"""Fake (meta) implementation of ``hgpso::fused_update_`` for ``torch.compile`` tracing.

The op mutates ``positions`` and ``velocities`` in place and returns nothing, so the fake
implementation only checks what it can about the shapes and returns ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor

_REGISTERED = False


def _fused_update_fake(
    positions: Sequence[Tensor],
    velocities: Sequence[Tensor],
    pbests: Sequence[Tensor],
    gbests: Sequence[Tensor],
    grads: Sequence[Tensor],
    r1: Sequence[Tensor],
    r2: Sequence[Tensor],
    seed: int,
    offset: int,
    lr: float,
    inertia: float,
    cognitive: float,
    social: float,
    max_velocity: float | None,
) -> None:
    n = len(positions)
    torch._check(
        len(velocities) == n and len(pbests) == n and len(gbests) == n,
        lambda: "positions, velocities, pbests, gbests must have equal lengths",
    )
    torch._check(len(grads) in (0, n), lambda: "grads must be empty or match positions")
    torch._check(
        len(r1) == len(r2) and len(r1) in (0, n),
        lambda: "r1 and r2 must both be empty or match positions",
    )
    for k, x in enumerate(positions):
        torch._check(x.dim() >= 1, lambda: "positions need a particle dimension")
        for name, ts in (("velocities", velocities), ("pbests", pbests)):
            torch._check(ts[k].shape == x.shape, partial(str, f"{name} shape mismatch"))
        torch._check(gbests[k].shape == x.shape[1:], lambda: "gbests must be one particle")
    return None


def register() -> None:
    """Attach the fake implementation (once, after the library defined the op)."""
    global _REGISTERED
    if _REGISTERED:
        return
    torch.library.register_fake("hgpso::fused_update_")(_fused_update_fake)
    _REGISTERED = True
