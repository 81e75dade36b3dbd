"""hgpso: Hybrid Gradient-Based Particle Swarm Optimization for PyTorch."""

from hgpso import functional
from hgpso._version import __version__
from hgpso.evaluate import VectorizedClosure, vectorized_closure
from hgpso.optim import HGPSO, PSO

__all__ = ["HGPSO", "PSO", "VectorizedClosure", "__version__", "functional", "vectorized_closure"]
