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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:  # only for annotations: the docs render none of them
    from hgpso.evaluate.buffers import BufferWatch

__all__ = ["EvaluationRequest", "active_request", "publish"]


@dataclass
class EvaluationRequest:
    """Particles to score.

    Attributes:
        params: the optimizer's trainable parameters, in the optimizer's order.
        positions: one ``(N, *p.shape)`` tensor per entry of ``params``.
        need_grads: whether gradients are wanted (HGPSO) or only losses (PSO).
        buffer_targets: the model's buffers kept per particle (the buffers its forward
            pass updates, such as BatchNorm's running statistics; see
            :class:`hgpso.HGPSO`), empty when there are none.
        buffers: one ``(N, *b.shape)`` tensor per entry of ``buffer_targets``: each
            particle's buffers before this step (read, never written).
        bind_buffers: set while the per-particle buffers are not known yet (a swarm's first
            step): the path watches its first forward pass and calls :meth:`bind` with
            what changed, which fills ``buffer_targets`` and ``buffers``.
        saved_buffers: rows already held for buffers by name (a resumed swarm), which
            particle 0's forward pass must start from while they are being found.
        losses: filled by a vectorized closure: ``(N,)``.
        grads: filled by a vectorized closure when ``need_grads``: one tensor per param.
        new_buffers: filled by every path when ``buffer_targets`` is not empty: each
            particle's buffers after its forward pass, aligned with ``buffer_targets``.
        want_fingerprint: set by a swarm sharded over ranks, which checks that every rank
            scored the same batch.
        batch_fingerprint: then filled by a vectorized closure: a float64 digest of its
            inputs and targets (a plain closure's batch cannot be seen: ``None``).
    """

    params: list[Tensor]
    positions: list[Tensor]
    need_grads: bool
    buffer_targets: list[Tensor] = field(default_factory=list)
    buffers: list[Tensor] = field(default_factory=list)
    # called as bind_buffers(watch) with a hgpso.evaluate.buffers.BufferWatch
    bind_buffers: Callable[..., list[Tensor]] | None = None
    saved_buffers: dict[str, Tensor] = field(default_factory=dict)
    losses: Tensor | None = None
    grads: list[Tensor] | None = field(default=None)
    new_buffers: list[Tensor] | None = None
    #: true while a vectorized closure is answering (a watch around the call stands aside)
    vectorizing: bool = False
    want_fingerprint: bool = False
    batch_fingerprint: float | None = None

    @property
    def fulfilled(self) -> bool:
        return self.losses is not None

    def bind(self, watch: BufferWatch) -> None:
        """Record the buffers the watched first forward pass changed (see
        ``bind_buffers``); if they do not fit the swarm's, undo the pass's changes to them
        and raise."""
        assert self.bind_buffers is not None
        try:
            rows = self.bind_buffers(watch)
        except BaseException:
            watch.undo()
            raise
        self.bind_buffers = None
        found = watch.found()
        self.buffer_targets = [f.module._buffers[f.key] for f in found]  # type: ignore[misc]
        self.buffers = rows


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
