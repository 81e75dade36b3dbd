"""Plain, gradient-free particle swarm optimization over a model's weights."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from hgpso.optim.swarm import SwarmOptimizer

__all__ = ["PSO"]


class PSO(SwarmOptimizer):
    r"""Gradient-free particle swarm optimization: :class:`~hgpso.HGPSO` without the
    gradient term, the baseline HG-PSO is compared against.

    .. math::
        \begin{aligned}
            v_i &\leftarrow w_t v_i + c_{1,t} r_1 \odot (p_i - x_i)
                + c_{2,t} r_2 \odot (g^\star - x_i) \\
            x_i &\leftarrow x_i + \operatorname{clamp}(v_i, -v_{max}, v_{max})
        \end{aligned}

    Bests, NaN guard, adaptation of :math:`w, c_1, c_2` and the state layout are those of
    :class:`~hgpso.HGPSO` (see its docstring); there is no learning rate. The closure only
    needs to return the loss; calling ``backward()`` in it is allowed (so Lightning's
    automatic optimization works) but wasted work. With a
    :func:`hgpso.vectorized_closure`, only forward passes are run. As in
    :class:`~hgpso.HGPSO`, ``momentum`` names the groups' ``inertia``, gradients
    accumulated before ``step`` are refused, and fp16 ``GradScaler`` is refused in favour
    of bfloat16; after a step ``p.grad`` is ``None`` (no gradients are collected).

    Args:
        params: parameters or parameter groups (group keys: ``inertia``, ``cognitive``,
            ``social``, ``max_velocity``, ``init_spread``).
        num_particles: swarm size (default: 16).
        inertia, cognitive, social: Clerc and Kennedy's constriction values by default
            (0.7298, 1.49618, 1.49618).
        max_velocity: per-element velocity clamp (default: 0.1).
        init_spread: standard deviation of the initial scatter (default: 0.05).
        **kwargs: the swarm-wide options of :class:`~hgpso.HGPSO` (``forget``,
            ``adaptive``, ``ema_beta``, ``tol``, ``patience``, ``seed``, ``fused``,
            ``distributed``, ``readout``, ``readout_k``, ``process_group``, ...).
            ``distributed="sharded"`` splits the particles over the ranks as for
            :class:`~hgpso.HGPSO` (only losses and the global best's weights are exchanged:
            PSO has no gradients to send).
    """

    uses_gradients = False

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        num_particles: int = 16,
        inertia: float = 0.7298,
        cognitive: float = 1.49618,
        social: float = 1.49618,
        max_velocity: float | None = 0.1,
        init_spread: float = 0.05,
        *,
        forget: float = 0.05,
        adaptive: bool = True,
        ema_beta: float = 0.9,
        tol: float = 1e-3,
        patience: int = 1000,
        lr_patience: int = 200,
        lr_factor: float = 0.5,
        min_lr_scale: float = 0.01,
        seed: int | None = None,
        fused: bool | None = None,
        distributed: str = "replicated",
        readout: str = "gbest",
        readout_k: int | None = None,
        process_group: Any = None,
    ) -> None:
        defaults = {
            "inertia": inertia,
            "cognitive": cognitive,
            "social": social,
            "max_velocity": max_velocity,
            "init_spread": init_spread,
        }
        super().__init__(
            params,
            defaults,
            num_particles=num_particles,
            forget=forget,
            adaptive=adaptive,
            ema_beta=ema_beta,
            tol=tol,
            patience=patience,
            lr_patience=lr_patience,
            lr_factor=lr_factor,
            min_lr_scale=min_lr_scale,
            seed=seed,
            fused=fused,
            distributed=distributed,
            readout=readout,
            readout_k=readout_k,
            process_group=process_group,
        )
