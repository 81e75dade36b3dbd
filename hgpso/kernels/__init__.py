"""Optional fused CUDA kernel for the HG-PSO update (see ``csrc/``).

The extension is optional: it is looked for once, and when it is missing the optimizer
uses the pure-PyTorch reference in :mod:`hgpso.functional`.

Interface used by :mod:`hgpso.optim`:

* :func:`is_available` -- whether the fused op can run.
* :func:`load_error` -- the stored reason it cannot (raised when ``fused=True`` is asked).
* :func:`fused_hgpso_update_` -- the in-place update with in-kernel random numbers drawn
  from a counter-based generator keyed by ``(seed, offset)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

__all__ = ["fused_hgpso_update_", "is_available", "load_error"]

_LOAD_ERROR: BaseException | None = RuntimeError(
    "the fused HG-PSO CUDA extension is not built in this version"
)


def is_available() -> bool:
    return _LOAD_ERROR is None


def load_error() -> BaseException | None:
    return _LOAD_ERROR


def fused_hgpso_update_(
    positions: Sequence[Tensor],
    velocities: Sequence[Tensor],
    pbests: Sequence[Tensor],
    gbests: Sequence[Tensor],
    grads: Sequence[Tensor] | None,
    *,
    seed: int,
    offset: int,
    lr: float,
    inertia: float,
    cognitive: float,
    social: float,
    max_velocity: float | None,
) -> None:
    raise RuntimeError("fused HG-PSO kernel unavailable") from _LOAD_ERROR
