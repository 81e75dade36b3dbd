"""Scoring every particle in one ``torch.func`` call on a shared mini-batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from hgpso.evaluate.buffers import probe_mutated_buffers
from hgpso.evaluate.closure import (
    as_scalar_loss,
    complex_loss_message,
    score_each_particle,
    sparse_gradient_message,
)
from hgpso.evaluate.request import EvaluationRequest, active_request

__all__ = ["VectorizedClosure", "vectorized_closure"]

Strategy = Literal["auto", "vmap", "loop"]


class VectorizedClosure:
    r"""A closure that scores all particles of an HGPSO/PSO step in one call.

    Build it with :func:`vectorized_closure` and pass it to ``optimizer.step``. For the
    step's N particles it computes

    .. math::
        \big(L(x_i),\ \nabla L(x_i)\big)_{i=1..N}, \qquad
        L(x) = \ell\big(f(\text{inputs}; x), \text{targets}\big)

    either with ``torch.func.functional_call`` and ``torch.func.grad_and_value`` mapped over
    the particle dimension by ``torch.func.vmap`` (``strategy="vmap"``), or by a Python loop
    that loads each particle into the model and runs ordinary autograd (``strategy="loop"``,
    no function-transform overhead). ``"auto"`` picks ``vmap`` on CUDA and the loop on CPU,
    where a vmapped convolution measured slower than the loop (see the step-time benchmark,
    ``python -m benchmarks.step_time``).
    Dropout draws independent randomness for each particle. Parameters of ``model`` that
    the optimizer does not own (frozen ones) are shared by every particle, and so are the
    buffers the forward pass only reads. Buffers it updates (BatchNorm's running
    statistics in training mode) are kept per particle by the optimizer and passed in
    stacked, one row per particle, so that each particle updates its own (see
    :class:`hgpso.HGPSO`, "BatchNorm and other buffers"); the vmap strategy finds them on the
    swarm's first step with one extra forward pass whose effects are undone (random
    generators forked, buffers restored).

    Called directly (outside ``optimizer.step``) it returns the loss of the weights the
    model holds, without gradients.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        inputs: Tensor | tuple[Tensor, ...],
        targets: Tensor,
        *,
        chunk_size: int | None = None,
        strategy: Strategy = "auto",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable as loss_fn(outputs, targets)")
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        if strategy not in ("auto", "vmap", "loop"):
            raise ValueError(f"strategy must be 'auto', 'vmap' or 'loop', got {strategy!r}")
        self.model = model
        self.loss_fn = loss_fn
        self.inputs = inputs if isinstance(inputs, tuple) else (inputs,)
        self.targets = targets
        self.chunk_size = chunk_size
        self.strategy = strategy

    def __call__(self) -> Tensor:
        request = active_request()
        if request is None:
            with torch.no_grad():
                return as_scalar_loss(self.loss_fn(self.model(*self.inputs), self.targets))
        request.losses, request.grads = self.evaluate(request)
        # the caller reads the request; the return value only feeds wrappers that log it
        return request.losses.min()

    def fingerprint(self) -> float:
        """A float64 digest of the inputs and targets (sums and L1 norms, with their
        sizes), compared across ranks by a sharded swarm: equal batches give equal digests."""
        total = torch.zeros((), dtype=torch.float64)
        for k, t in enumerate((*self.inputs, self.targets)):
            if not isinstance(t, Tensor):
                continue
            d = t.detach()
            d = d.to(torch.float64) if not d.is_floating_point() else d
            s = d.sum(dtype=torch.float64) + (k + 1) * torch.linalg.vector_norm(
                d, 1, dtype=torch.float64
            )
            total = total + s.cpu() + d.numel()
        return float(total)

    def resolved_strategy(self, device: torch.device) -> Literal["vmap", "loop"]:
        """The strategy ``"auto"`` stands for on ``device``."""
        if self.strategy != "auto":
            return self.strategy
        return "vmap" if device.type == "cuda" else "loop"

    def evaluate(self, request: EvaluationRequest) -> tuple[Tensor, list[Tensor] | None]:
        """Score every particle of ``request``; fill ``request.new_buffers`` too."""
        if request.want_fingerprint:
            request.batch_fingerprint = self.fingerprint()
        request.vectorizing = True
        try:
            return self._evaluate(request)
        finally:
            request.vectorizing = False

    def _evaluate(self, request: EvaluationRequest) -> tuple[Tensor, list[Tensor] | None]:
        model = self.model
        names_by_id = {id(p): n for n, p in model.named_parameters()}
        names = []
        for p in request.params:
            if id(p) not in names_by_id:
                raise ValueError(
                    "the optimizer holds a parameter (shape "
                    f"{tuple(p.shape)}) that is not a parameter of the model given to "
                    "vectorized_closure; pass the same model whose parameters the optimizer owns"
                )
            names.append(names_by_id[id(p)])
        if self.resolved_strategy(request.positions[0].device) == "loop":
            return self._autograd_loop(request)
        owned = set(names)
        for module in model.modules():
            # vmap cannot batch a sparse gradient: refuse up front with the closure's error
            if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and module.sparse:
                if any(module.weight is p for p in request.params):
                    raise RuntimeError(sparse_gradient_message(module.weight))
        if request.bind_buffers is not None:
            # vmap hides in-place updates from a watch: one forked, undone forward finds them
            request.bind(probe_mutated_buffers(model, lambda: model(*self.inputs)))
        buffer_names_by_id = {id(b): n for n, b in model.named_buffers()}
        buffer_names = []
        for b in request.buffer_targets:
            if id(b) not in buffer_names_by_id:
                raise ValueError(
                    f"the swarm keeps a per-particle buffer (shape {tuple(b.shape)}) that is "
                    "not a buffer of the model given to vectorized_closure; pass the model "
                    "the optimizer was trained with"
                )
            buffer_names.append(buffer_names_by_id[id(b)])
        per_particle = set(buffer_names)
        shared = {n: p.detach() for n, p in model.named_parameters() if n not in owned}
        shared.update((n, b) for n, b in model.named_buffers() if n not in per_particle)
        loss_fn, inputs, targets = self.loss_fn, self.inputs, self.targets

        def loss_of(particle: tuple[Tensor, ...], buffers: tuple[Tensor, ...] = ()) -> Tensor:
            weights = dict(zip(names, particle, strict=True))
            weights.update(shared)
            # each particle's own buffers (a slice of the stacked rows: updated in place)
            weights.update(zip(buffer_names, buffers, strict=True))
            out = functional_call(model, weights, inputs, strict=False)
            loss = loss_fn(out, targets)
            if loss.is_complex():  # a dtype check: no data-dependent branch under vmap
                raise TypeError(complex_loss_message("loss_fn", loss.dtype))
            if loss.dim() != 0 and loss.numel() != 1:
                raise ValueError(
                    f"loss_fn must return a scalar loss, got shape {tuple(loss.shape)}"
                )
            return loss.reshape(())

        fn = grad_and_value(loss_of) if request.need_grads else loss_of
        mapped = vmap(fn, randomness="different", chunk_size=self.chunk_size)
        if buffer_names:
            new_buffers = [rows.clone() for rows in request.buffers]
            out: Any = mapped(tuple(request.positions), tuple(new_buffers))
            request.new_buffers = new_buffers
        else:  # nothing kept per particle: the call of a model without mutable buffers
            out = mapped(tuple(request.positions))
        if request.need_grads:
            grads, losses = out
            return losses.detach().float(), [g.detach() for g in grads]
        return out.detach().float(), None

    def _autograd_loop(self, request: EvaluationRequest) -> tuple[Tensor, list[Tensor] | None]:
        """Load each particle into the model and run ordinary autograd (the loop the
        closure path runs too: ``hgpso.evaluate.closure.score_each_particle``)."""
        params, need_grads = request.params, request.need_grads

        def one() -> tuple[object, Sequence[Tensor | None] | None]:
            with torch.set_grad_enabled(need_grads):
                loss = self.loss_fn(self.model(*self.inputs), self.targets)
                as_scalar_loss(loss, where="loss_fn")  # a clear error before autograd's
                if not need_grads:
                    return loss, None
                return loss, torch.autograd.grad(loss, params, allow_unused=True)

        out = score_each_particle(request, one, where="loss_fn")
        assert out is not None
        return out


def vectorized_closure(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor | tuple[Tensor, ...],
    targets: Tensor,
    *,
    chunk_size: int | None = None,
    strategy: Strategy = "auto",
) -> VectorizedClosure:
    """Closure for ``optimizer.step`` that scores every particle in one ``torch.func`` call.

    Example::

        for x, y in loader:
            opt.step(hgpso.vectorized_closure(model, F.cross_entropy, x, y))

    BatchNorm (and any other buffer the forward pass updates) works as in the plain
    closure path: each particle keeps its own running statistics, passed through
    ``torch.func.functional_call`` under ``vmap`` with a leading particle dimension, and
    after the step the model holds the global best's weights and statistics. Calling
    ``torch.func.replace_all_batch_norm_modules_(model)`` once (normalise with batch
    statistics only, keep no running statistics) remains an option: nothing is then kept per
    particle.

    Args:
        model: the module whose parameters the optimizer owns.
        loss_fn: ``loss_fn(outputs, targets)`` returning a scalar, e.g.
            ``torch.nn.functional.cross_entropy``.
        inputs: the mini-batch (a tensor, or a tuple of positional arguments of ``model``).
        targets: what ``loss_fn`` compares the outputs with.
        chunk_size: evaluate at most this many particles at once under ``vmap`` to bound
            memory (``None``: all at once).
        strategy: ``"vmap"``, ``"loop"`` or ``"auto"`` (vmap on CUDA, loop on CPU).
    """
    return VectorizedClosure(
        model, loss_fn, inputs, targets, chunk_size=chunk_size, strategy=strategy
    )
