"""Swarm optimizers: :class:`HGPSO` (gradient-hybrid) and :class:`PSO` (gradient-free)."""

from hgpso.optim.hgpso import GRADIENT_DEFAULTS, HGPSO, gradient_defaults
from hgpso.optim.pso import PSO
from hgpso.optim.swarm import SwarmOptimizer

__all__ = ["GRADIENT_DEFAULTS", "HGPSO", "PSO", "SwarmOptimizer", "gradient_defaults"]
