r"""Per-particle buffers: the module state a forward pass mutates, kept for each particle.

A BatchNorm layer in training mode updates ``running_mean``, ``running_var`` and
``num_batches_tracked`` in place on every forward pass. Scoring N particles one after the
other on one model would mix the statistics of all N weight sets into one tensor, so the
swarm keeps such buffers per particle, with a leading particle dimension like the
positions: particle :math:`i`'s buffers are loaded with its weights before its forward pass
and stored back after it (closure and loop paths), or passed stacked through
``torch.func.functional_call`` under ``vmap`` (vmap path).

**Which buffers.** The ones the forward pass actually changes: on the first step of a swarm
(or after :meth:`~torch.optim.Optimizer.load_state_dict`), every module the step's first
forward pass runs is watched and each buffer whose value changed is
tracked from then on. A model with no such buffer (none at all, constant buffers, or
BatchNorm in ``eval()`` mode) tracks nothing and pays nothing after that first step. If a
running-statistics norm layer that was in ``eval()`` mode on the first step is switched to
training mode later, the next step watches again and adds its buffers (every particle
starts from the value the model holds). A buffer is named by its path in the outermost
module the forward pass entered (``"1.running_mean"`` for ``nn.Sequential``), the same
name ``model.named_buffers()`` gives, so a checkpoint written by one evaluation path
resumes in the other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules import module as module_hooks

__all__ = ["BufferWatch", "FoundBuffer", "probe_mutated_buffers", "running_stat_modules"]

#: norm layers whose buffers change in training mode only
_RUNNING_STATS = (nn.modules.batchnorm._NormBase,)


@dataclass
class FoundBuffer:
    """A buffer the watched forward pass changed.

    Attributes:
        name: its path in the outermost module entered (``model.named_buffers()`` names).
        module: the module that owns it (looked up again every step, so that a module whose
            buffers were replaced, e.g. by ``model.to(...)``, is followed).
        key: its key in ``module._buffers``.
        before: its value before the forward pass (a copy).
    """

    name: str
    module: nn.Module
    key: str
    before: Tensor


def running_stat_modules(modules: list[nn.Module]) -> list[nn.Module]:
    """The norm layers among ``modules`` that keep running statistics."""
    return [
        m
        for m in modules
        if isinstance(m, _RUNNING_STATS) and getattr(m, "track_running_stats", False)
    ]


class BufferWatch:
    """Watch one forward pass (a context manager) and report which buffers it changed.

    Module-global forward hooks see every module called inside the ``with`` block; the
    first time a module is entered its own buffers are copied, and the outermost module
    (the one entered while no other is running) names them. ``preload`` maps such names to
    values written into the buffers before the module runs (a resumed swarm's particle 0).
    """

    def __init__(
        self,
        preload: dict[str, Tensor] | None = None,
        *,
        paused: Callable[[], bool] = lambda: False,
    ) -> None:
        self.preload = preload or {}
        self.paused = paused
        self.modules: list[nn.Module] = []
        #: buffers overwritten by ``preload``, with the value they held before
        self.originals: list[tuple[Tensor, Tensor]] = []
        self._seen: set[int] = set()
        self._names: dict[int, str] = {}
        self._before: dict[int, tuple[nn.Module, str, Tensor]] = {}
        self._depth = 0
        self._roots = 0
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._found: list[FoundBuffer] | None = None

    def __enter__(self) -> BufferWatch:
        self._handles = [
            module_hooks.register_module_forward_pre_hook(self._pre),
            module_hooks.register_module_forward_hook(self._post, always_call=True),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._found = self._changed()

    def _pre(self, module: nn.Module, args: object) -> None:
        if self.paused():
            return
        if self._depth == 0 and id(module) not in self._seen:
            prefix = "" if self._roots == 0 else f"<root{self._roots}>."
            self._roots += 1
            for name, b in module.named_buffers():
                self._names.setdefault(id(b), prefix + name)
        self._depth += 1
        if id(module) in self._seen:
            return
        self._seen.add(id(module))
        self.modules.append(module)
        with torch.no_grad():
            for key, buf in module._buffers.items():
                if buf is None or id(buf) in self._before:
                    continue
                known = self._names.get(id(buf))
                if known is not None and known in self.preload:
                    self.originals.append((buf, buf.detach().clone()))
                    buf.copy_(self.preload[known])
                self._before[id(buf)] = (module, key, buf.detach().clone())

    def _post(self, module: nn.Module, args: object, output: object) -> None:
        if not self.paused():
            self._depth -= 1

    def undo(self) -> None:
        """Put every buffer the watched pass (or ``preload``) changed back as it was."""
        with torch.no_grad():
            for f in self.found():
                f.module._buffers[f.key].copy_(f.before)  # type: ignore[union-attr]
            for b, value in self.originals:
                b.copy_(value)

    def found(self) -> list[FoundBuffer]:
        """The buffers the watched pass changed (as of its end), in the order they were
        first seen."""
        if self._found is None:
            raise RuntimeError("BufferWatch.found() is known once the watched block ended")
        return self._found

    def _changed(self) -> list[FoundBuffer]:
        out = []
        for key_id, (module, key, before) in self._before.items():
            now = module._buffers.get(key)
            if now is None or id(now) != key_id:
                continue
            name = self._names.get(key_id, f"<{type(module).__name__}>.{key}")
            # by value: BatchNorm's running statistics are written without bumping the
            # version counter, and DDP's buffer broadcast bumps it without a change
            if not _same(now, before):
                out.append(FoundBuffer(name, module, key, before))
        return out


def _same(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b.to(a.device)))


def probe_mutated_buffers(model: nn.Module, run: Callable[[], object]) -> BufferWatch:
    """Which of ``model``'s buffers ``run`` (a forward pass of ``model``) changes.

    ``run`` is called once without gradients and with the random generators forked, and
    every buffer is put back afterwards, so the probe leaves no trace. Used by the vmap
    path, which cannot watch buffers change inside ``vmap``.
    """
    watch = BufferWatch()
    if next(model.buffers(), None) is None:
        watch._found = []
        return watch
    devices = sorted({b.device.index or 0 for b in model.buffers() if b.device.type == "cuda"})
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad(), watch:
            run()
        return watch
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


def resolve(slots: list[tuple[nn.Module, str]]) -> Iterator[Tensor]:
    """The live buffer tensors behind ``(module, key)`` slots."""
    for module, key in slots:
        b = module._buffers.get(key)
        if b is None:
            raise RuntimeError(
                f"the per-particle buffer {key!r} of a {type(module).__name__} is gone "
                "(deleted or set to None after the swarm started tracking it)"
            )
        yield b
