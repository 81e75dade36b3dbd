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
module the forward pass entered, looking through DDP, DataParallel and ``torch.compile``
wrappers (``"1.running_mean"`` for ``nn.Sequential``): the name ``model.named_buffers()``
gives, so a checkpoint written by one evaluation path resumes in the other.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

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

    A module-global forward pre-hook sees the modules called inside the ``with`` block.
    The first one entered, and any later one outside the trees already seen, is a root:
    every buffer of its tree is copied then, before it runs, and named by its path in the
    root (through DDP, DataParallel and ``torch.compile`` wrappers). The hook does nothing
    for modules inside a seen tree, and nothing while ``torch.compile`` traces, so compiled
    modules keep their graphs. ``preload`` maps names to values written into the buffers
    before the root runs (a resumed swarm's particle 0).
    """

    def __init__(
        self,
        preload: dict[str, Tensor] | None = None,
        *,
        paused: Callable[[], bool] = lambda: False,
    ) -> None:
        self.preload = preload or {}
        self.paused = paused
        #: every module of the watched trees
        self.modules: list[nn.Module] = []
        #: buffers overwritten by ``preload``, with the value they held before
        self.originals: list[tuple[Tensor, Tensor]] = []
        self._covered: set[int] = set()
        self._listed: set[int] = set()
        self._warnings: Any = None
        self._before: dict[int, tuple[str, nn.Module, str, Tensor]] = {}
        self._roots = 0
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._found: list[FoundBuffer] | None = None

    def __enter__(self) -> BufferWatch:
        # torch.compile warns that a global hook also fires for its wrapper: expected here
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.filterwarnings("ignore", message=r"Using `torch.compile\(module\)` when there")
        self._handle = module_hooks.register_module_forward_pre_hook(self._pre)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._warnings.__exit__(*exc)
        self._found = self._changed()

    def _pre(self, module: nn.Module, args: object) -> None:
        if torch.compiler.is_compiling() or self.paused() or id(module) in self._covered:
            return
        root = _unwrap(module)
        prefix = "" if self._roots == 0 else f"<root{self._roots}>."
        self._roots += 1
        for m in (module, *module.modules()):
            self._covered.add(id(m))
        with torch.no_grad():
            for path, owner in root.named_modules():
                if id(owner) not in self._listed:
                    self._listed.add(id(owner))
                    self.modules.append(owner)
                for key, buf in owner._buffers.items():
                    if buf is None or id(buf) in self._before:
                        continue
                    name = prefix + (f"{path}.{key}" if path else key)
                    if name in self.preload:
                        self.originals.append((buf, buf.detach().clone()))
                        buf.copy_(self.preload[name])
                    self._before[id(buf)] = (name, owner, key, buf.detach().clone())

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
        for key_id, (name, module, key, before) in self._before.items():
            now = module._buffers.get(key)
            if now is None or id(now) != key_id:
                continue
            # by value: BatchNorm's running statistics are written without bumping the
            # version counter, and DDP's buffer broadcast bumps it without a change
            if not _same(now, before):
                out.append(FoundBuffer(name, module, key, before))
        return out


def _unwrap(module: nn.Module) -> nn.Module:
    """The user's model inside a wrapper (DDP, DataParallel, ``torch.compile``), so that
    buffers are named as ``model.named_buffers()`` names them whichever is called."""
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            inner = module.module
        elif type(module).__name__ == "OptimizedModule":
            inner = getattr(module, "_orig_mod", None)
        else:
            return module
        if not isinstance(inner, nn.Module):
            return module
        module = inner


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
