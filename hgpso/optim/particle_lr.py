r"""One learning rate per particle: a swarm of :math:`N` as :math:`N` runs at :math:`N`
learning rates, with the winners' rates spreading (exploit, as population-based training).

With ``lr_spread`` :math:`F > 1` particle :math:`i` of :math:`N` trains with

.. math::
    \eta_i = \eta \cdot s \cdot m_i, \qquad
    m_i^{(0)} = F^{\,2i/(N-1) - 1} \quad (m^{(0)} = 1 \text{ for } N = 1)

(:math:`\eta` the group's ``lr``, as schedulers set it; :math:`s` the adaptive
``lr_scale``): a log grid of factors from :math:`1/F` to :math:`F`, the learning rates a user
would sweep with :math:`N` separate runs. After every step the factors move toward the
global best's, :math:`b`, in log space by ``lr_pull`` :math:`\rho \in [0, 1]`:

.. math::
    \log m_i \leftarrow (1 - \rho) \log m_i + \rho \log m_b

and a re-seeded (non-finite) particle takes :math:`m_b` (often its rate was too high). A
particle pulled toward the global best's weights is so pulled toward its learning rate
too; :math:`\rho = 0` (the default) keeps the grid. The factors are ``state["swarm"]
["lr_factors"]``, ``(N,)`` float64, all :math:`N` on every rank; they stay within
:math:`[1/F, F]`.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["initial_factors", "pulled"]


def initial_factors(num_particles: int, spread: float, device: torch.device) -> Tensor:
    """The log grid :math:`F^{2i/(N-1) - 1}`, ``(N,)`` float64."""
    if num_particles == 1:
        return torch.ones(1, dtype=torch.float64, device=device)
    exponents = torch.linspace(-1.0, 1.0, num_particles, dtype=torch.float64, device=device)
    return torch.pow(torch.tensor(spread, dtype=torch.float64, device=device), exponents)


def pulled(factors: Tensor, best: int, pull: float, valid: Tensor) -> Tensor:
    """The factors after a step whose global best is particle ``best``: pulled toward its
    factor by ``pull`` in log space; invalid particles (``valid`` False) take it."""
    target = factors[best]
    out = factors
    if pull > 0.0:
        out = torch.exp((1.0 - pull) * torch.log(factors) + pull * torch.log(target))
        out[best] = target  # exact: the winner keeps its own rate
    return torch.where(valid.to(factors.device), out, target)
