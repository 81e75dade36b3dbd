"""Swarm optimizers: :class:`HGPSO` (gradient-hybrid) and :class:`PSO` (gradient-free)."""

from hgpso.optim.hgpso import HGPSO
from hgpso.optim.pso import PSO
from hgpso.optim.swarm import SwarmOptimizer

__all__ = ["HGPSO", "PSO", "SwarmOptimizer"]
