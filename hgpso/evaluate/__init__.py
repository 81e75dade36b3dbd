"""How particles are scored: a plain closure loop or one vectorized ``torch.func`` call."""

from hgpso.evaluate.closure import as_scalar_loss, evaluate_particles
from hgpso.evaluate.request import EvaluationRequest, active_request
from hgpso.evaluate.vectorized import VectorizedClosure, vectorized_closure

__all__ = [
    "EvaluationRequest",
    "VectorizedClosure",
    "active_request",
    "as_scalar_loss",
    "evaluate_particles",
    "vectorized_closure",
]
