r"""What the model holds between steps (the swarm's readout), and how spread out the swarm is.

``readout="gbest"`` (the default) writes the global best into the model: the position that
scored lowest on the last batches (one batch with ``forget=1``), a noisy pick among ``N``
particles. ``readout="mean"`` writes the mean of the particles' positions instead, like the
running average of :mod:`torch.optim.swa_utils`, but over the swarm rather than over time:

.. math::
    \bar{x} = \frac{1}{|K|} \sum_{i \in K} x_i, \qquad
    K = \begin{cases}
        \{1, \dots, N\} & \text{readout\_k} = \text{None} \\
        \text{the } k \text{ particles with the lowest stored best loss}
            & \text{readout\_k} = k
    \end{cases}

(the stored best loss ``state["swarm"]["pbest_losses"]``: with ``forget=1`` each particle's
loss on the last batch; ties go to the lower index). The positions are those the next step
will score, after the move. The per-particle buffers are averaged the same way when they are
floating point (BatchNorm's running mean and variance); integer ones (``num_batches_tracked``)
are the global best's. As after :func:`torch.optim.swa_utils.update_bn`, the statistics of
averaged weights are best recomputed: ``update_bn(loader, model)`` does that for the mean.

The spread (:func:`spread`) says whether the swarm is still several models or has collapsed
into one:

.. math::
    \text{rms\_to\_mean} = \sqrt{\tfrac{1}{NP} \textstyle\sum_i \lVert x_i - \bar{x} \rVert^2},
    \quad
    \text{gbest\_rms\_to\_mean} = \sqrt{\tfrac{1}{P} \lVert g - \bar{x} \rVert^2},
    \quad
    \text{mean\_rms} = \sqrt{\tfrac{1}{P} \lVert \bar{x} \rVert^2}

over all ``N`` particles and all ``P`` trainable elements.

Under ``distributed="sharded"`` each rank holds some of the particles, so these are sums
over ranks: every rank of the swarm's group must compute them together (the step does so
for ``readout="mean"``; :meth:`HGPSO.particle_mean() <hgpso.HGPSO.particle_mean>` and
:meth:`~hgpso.HGPSO.particle_spread` are collectives there).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["selected", "spread", "weighted_mean"]

#: sums a list of tensors over the ranks in place (a no-op when this process holds all rows)
SumOverRanks = Callable[[list[Tensor]], None]


def selected(losses: Tensor, k: int | None) -> Tensor:
    """``(N,)`` bool: the particles the mean takes, all of them or the ``k`` lowest
    ``losses`` (ties to the lower index; ``+inf`` last)."""
    n = losses.numel()
    if k is None or k >= n:
        return torch.ones(n, dtype=torch.bool, device=losses.device)
    # NaN sorts last as well: a particle without a finite best is the last to be taken
    key = torch.nan_to_num(losses.to(torch.float64), nan=math.inf)
    order = torch.argsort(key, stable=True)
    mask = torch.zeros(n, dtype=torch.bool, device=losses.device)
    mask[order[:k]] = True
    return mask


def _accumulator(dtype: torch.dtype) -> torch.dtype:
    # sums of low-precision rows are taken in float32, then rounded once
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def weighted_mean(
    stacks: Sequence[Tensor], local_mask: Tensor, count: int, sum_over_ranks: SumOverRanks
) -> list[Tensor]:
    """The mean over the selected rows of each ``(M, *S)`` stack (this process's rows
    ``local_mask``; ``count`` selected over all ranks), in each stack's dtype."""
    rows = local_mask.to(stacks[0].device).nonzero().flatten() if stacks else None
    sums = []
    for stack in stacks:
        acc = _accumulator(stack.dtype)
        if rows is not None and rows.numel() == stack.shape[0]:
            total = stack.sum(0, dtype=acc)
        elif rows is not None and rows.numel():
            total = stack.index_select(0, rows).sum(0, dtype=acc)
        else:  # none of the selected particles is on this rank
            total = torch.zeros(stack.shape[1:], dtype=acc, device=stack.device)
        sums.append(total)
    sum_over_ranks(sums)
    return [(s / count).to(stack.dtype) for s, stack in zip(sums, stacks, strict=True)]


def spread(
    positions: Sequence[Tensor],
    mean: Sequence[Tensor],
    gbest: Sequence[Tensor],
    num_particles: int,
    sum_over_ranks: SumOverRanks,
) -> dict[str, float]:
    """``rms_to_mean``, ``gbest_rms_to_mean`` and ``mean_rms`` (see the module docstring) of
    this process's ``positions`` (``(M, *S)`` each), the swarm's ``mean`` and ``gbest``."""
    device = positions[0].device if positions else torch.device("cpu")
    to_mean = torch.zeros((), dtype=torch.float64, device=device)
    for x, m in zip(positions, mean, strict=True):
        # one row at a time: a whole (M, *S) difference would double the swarm's memory
        for row in x:
            to_mean += (row.double() - m.double()).square().sum()
    sums = [to_mean.reshape(1)]
    sum_over_ranks(sums)
    elements = sum(m.numel() for m in mean)
    g_to_mean = sum(
        float((g.double() - m.double()).square().sum()) for g, m in zip(gbest, mean, strict=True)
    )
    norm = sum(float(m.double().square().sum()) for m in mean)
    if elements == 0:
        return {"rms_to_mean": 0.0, "gbest_rms_to_mean": 0.0, "mean_rms": 0.0}
    return {
        "rms_to_mean": math.sqrt(float(sums[0]) / (num_particles * elements)),
        "gbest_rms_to_mean": math.sqrt(g_to_mean / elements),
        "mean_rms": math.sqrt(norm / elements),
    }
