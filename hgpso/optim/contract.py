"""The step contract: what a step refuses before anything moves, and what it leaves behind.

Refused, with nothing changed: fp16 gradient scaling (``torch.amp.GradScaler``, Lightning's
``16-mixed``), gradients a ``backward()`` outside the step accumulated, a swarm parameter
frozen after the swarm was created, and (sharded swarms) a DDP-wrapped model. Left behind:
``p.grad`` is the global best's gradient, marked as the step's own so that the next step
does not take it for an accumulation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from hgpso import kernels
from hgpso.optim.options import check_group

__all__ = [
    "before_step",
    "check_members",
    "check_parameters",
    "mark_grads",
    "refuse_accumulated_grads",
    "refuse_grad_scaler",
    "scoring_closure",
]


def before_step(optimizer: Any, closure: Callable[[], Any] | None) -> None:
    """The checks a step makes before anything moves: no fp16 gradient scaling, the
    groups' hyperparameters (a scheduler or callback may have written them), no gradients
    accumulated outside the step, a closure."""
    refuse_grad_scaler(optimizer)
    for k, group in enumerate(optimizer.param_groups):
        check_group(group, f"param group {k}")
    name = type(optimizer).__name__
    refuse_accumulated_grads(optimizer._trainable(), name)
    if closure is None:
        raise RuntimeError(
            f"{name}.step() needs a closure: a swarm scores N candidate weight sets per step, "
            "so it must be able to re-evaluate the loss for each. Pass "
            "`optimizer.step(closure)` (or `hgpso.vectorized_closure(...)`)."
        )


def check_parameters(params: Sequence[Tensor], *, fused: bool | None) -> None:
    """The swarm's parameters when it is built: some, on one device, where ``fused`` can run."""
    if not params:
        raise ValueError(
            "no parameter has requires_grad=True: a swarm needs at least one trainable "
            "parameter (unfreeze some, or pass only the trainable ones)"
        )
    devices = {p.device for p in params}
    if len(devices) > 1:
        raise ValueError(
            f"all parameters must be on one device, got {sorted(map(str, devices))}: "
            "every particle is a full copy of the model kept in one batched swarm"
        )
    if fused and not kernels.is_available():
        raise RuntimeError(
            "fused=True but the fused HG-PSO kernel is unavailable "
            "(run `python -m hgpso.kernels --build` for details)"
        ) from kernels.load_error()
    if fused and not kernels.supports_device(params[0].device):
        raise ValueError(
            f"fused=True needs CUDA parameters, but they are on {params[0].device}; "
            "use fused=None (the default) or fused=False"
        )


def mark_grads(params: Sequence[Tensor]) -> None:
    """Record that the ``p.grad`` tensors as they are now were left by a step (their
    version: an in-place ``backward()`` accumulation into one changes it)."""
    for p in params:
        if p.grad is not None:
            p.grad._hgpso_version = p.grad._version  # type: ignore[attr-defined]


def refuse_grad_scaler(optimizer: Any) -> None:
    """``torch.amp.GradScaler.step`` (plain PyTorch, or Lightning's ``16-mixed``) sets
    ``grad_scale`` and ``found_inf`` on the optimizer before calling ``step`` (see
    ``SwarmOptimizer._step_supports_amp_scaling``): refuse, naming bfloat16."""
    attrs = optimizer.__dict__
    if attrs.get("grad_scale") is None and attrs.get("found_inf") is None:
        return
    # the scaler deletes them only after a step that returns: leave no trace
    attrs.pop("grad_scale", None)
    attrs.pop("found_inf", None)
    raise RuntimeError(
        f"{type(optimizer).__name__} does not support fp16 gradient scaling "
        "(torch.amp.GradScaler, Lightning precision='16-mixed'): every particle is scored "
        "by its own closure call, which GradScaler.step cannot drive (Lightning's 16-mixed "
        "even calls step() without a closure), and an overflow cannot be reported back "
        "to the scaler. Use bfloat16 mixed precision, which needs no scaler: "
        "torch.autocast(device_type, dtype=torch.bfloat16) inside the closure, or "
        "Lightning precision='bf16-mixed'. Nothing was changed."
    )


def refuse_accumulated_grads(params: Sequence[Tensor], name: str) -> None:
    """Refuse gradients that a ``backward()`` outside the step put in ``p.grad`` (a
    gradient-accumulation loop, Lightning's ``accumulate_grad_batches > 1``): the step
    scores each particle with its own closure call and would silently drop them."""
    for j, p in enumerate(params):
        g = p.grad
        if g is None or getattr(g, "_hgpso_version", None) == g._version:
            continue  # none, or left by a step and untouched since
        if not g.is_sparse and not bool(g.any()):
            continue  # zero_grad(set_to_none=False)
        raise ValueError(
            f"trainable parameter {j} (shape {tuple(p.shape)}) holds a gradient that a "
            f"backward() outside {name}.step() accumulated. A swarm scores "
            "each particle with its own closure call on its own weights, so gradients "
            "accumulated before the step belong to no particle and would be dropped: "
            "gradient accumulation (a loop of backward() calls before step, Lightning's "
            "accumulate_grad_batches > 1) is not supported that way. Accumulate inside "
            "the closure instead: zero_grad(), then for each micro-batch "
            "(loss_fn(model(xb), yb) / n_micro).backward(), and return the summed loss "
            "(with Lightning: accumulate_grad_batches=1 and a larger batch, or manual "
            "optimization with such a closure). If the gradients are stale (a closure or "
            "backward() called before the step for another purpose), call "
            "optimizer.zero_grad() before step(). Nothing was changed."
        )


def check_members(groups: Sequence[dict[str, Any]], members: set[int]) -> None:
    """The swarm's parameters are fixed when it is created: refuse to step once one of
    them was frozen, rather than keep moving a parameter its owner froze."""
    frozen = [
        (k, j, p)
        for k, group in enumerate(groups)
        for j, p in enumerate(group["params"])
        if id(p) in members and not p.requires_grad
    ]
    if not frozen:
        return
    k, j, p = frozen[0]
    every = " (all of them are)" if len(frozen) == len(members) else ""
    raise RuntimeError(
        f"parameter {j} of param group {k} (shape {tuple(p.shape)}) now has "
        f"requires_grad=False, but it was trainable when the swarm was created; "
        f"{len(frozen)} swarm parameter(s) are frozen{every}. Every particle holds the "
        "parameters the swarm started with, so freezing one later is refused instead of "
        "silently moving it: set requires_grad=True again, or create a new optimizer "
        "over the parameters to train"
    )


def _refuse_ddp(module: torch.nn.Module, args: Any) -> None:
    if isinstance(module, torch.nn.parallel.DistributedDataParallel):
        raise RuntimeError(
            "distributed='sharded' cannot score particles through a DistributedDataParallel "
            "model: DDP averages gradients over ranks, but each rank scores its own "
            "particles. Pass the plain model (every rank needs the whole batch), or use "
            "distributed='replicated' with DDP; with Lightning, use "
            "lightning_callbacks.SwarmShardedStrategy, which does not wrap the model"
        )


def scoring_closure(
    closure: Callable[[], Any], params: Sequence[Tensor], *, refuse_ddp: bool
) -> Callable[[], Any]:
    """``closure`` as the step calls it for each particle: autocast's weight cache off (an
    autocast region around the step would reuse its low-precision copy of a weight for
    every particle, since the cache is keyed on the parameter), the gradients it leaves
    marked as the step's own, and, with ``refuse_ddp`` (sharded swarms), a DDP model
    refused at its first forward pass, before DDP communicates."""
    torch.clear_autocast_cache()

    def scored() -> Any:
        cache = torch.is_autocast_cache_enabled()
        torch.set_autocast_cache_enabled(False)
        try:
            return closure()
        finally:
            torch.set_autocast_cache_enabled(cache)
            mark_grads(params)

    if not refuse_ddp:
        return scored
    first = [True]

    def scored_refusing_ddp() -> Any:
        if not first[0]:
            return scored()
        first[0] = False
        hook = torch.nn.modules.module.register_module_forward_pre_hook(_refuse_ddp)
        try:
            return scored()
        finally:
            hook.remove()

    return scored_refusing_ddp
