"""The evaluation request: what the optimizer asks a closure to score in one ``step``.

The optimizer publishes the request in a context variable before it calls the closure it
was given. A plain closure ignores it and scores whatever weights the model holds; a
:class:`~hgpso.evaluate.vectorized.VectorizedClosure` sees it and scores every particle in
one call. Going through a context variable, rather than an ``isinstance`` check on the
closure, keeps this working when a framework wraps the closure (Lightning's precision
plugins hand ``optimizer.step`` a ``functools.partial`` of their own).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, field

from torch import Tensor

__all__ = ["EvaluationRequest", "active_request", "publish"]


@dataclass
class EvaluationRequest:
    """Particles to score.

    Attributes:
        params: the optimizer's trainable parameters, in the optimizer's order.
        positions: one ``(N, *p.shape)`` tensor per entry of ``params``.
        need_grads: whether gradients are wanted (HGPSO) or only losses (PSO).
        losses: filled by a vectorized closure: ``(N,)``.
        grads: filled by a vectorized closure when ``need_grads``: one tensor per param.
    """

    params: list[Tensor]
    positions: list[Tensor]
    need_grads: bool
    losses: Tensor | None = None
    grads: list[Tensor] | None = field(default=None)

    @property
    def fulfilled(self) -> bool:
        return self.losses is not None


_ACTIVE: contextvars.ContextVar[EvaluationRequest | None] = contextvars.ContextVar(
    "hgpso_evaluation_request", default=None
)


def active_request() -> EvaluationRequest | None:
    """The request of the ``step`` now calling a closure, or ``None`` outside one."""
    return _ACTIVE.get()


@contextlib.contextmanager
def publish(request: EvaluationRequest) -> Iterator[EvaluationRequest]:
    token = _ACTIVE.set(request)
    try:
        yield request
    finally:
        _ACTIVE.reset(token)
