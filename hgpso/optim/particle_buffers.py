r"""Per-particle buffers (BatchNorm's running statistics and the like) as one object.

A buffer the forward pass updates in place belongs to the weights that produced it, so the
swarm keeps it per particle (how they are found: ``hgpso.evaluate.buffers``). Stored in
``optimizer.state["swarm"]``, keyed by the buffer's ``model.named_buffers()`` name, in the
buffer's dtype: ``buffers`` (``(M, *B)``, each of this process's particles' after its last
forward pass), ``gbest_buffers`` (``B``, the global best's: what the model holds after a
step) and, only when ``forget < 1``, ``pbest_buffers`` (``(M, *B)``, each personal best's).
The dicts are replaced at every step, never written in place, so a failed step's restore of
``state["swarm"]`` restores them too.

:class:`ParticleBuffers` holds what is not state: which model buffers are per particle
(module references, found again after unpickling or loading), and the step's request.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from hgpso.evaluate import EvaluationRequest
from hgpso.evaluate.buffers import BufferWatch, resolve, running_stat_modules
from hgpso.optim.placement import Placement

__all__ = ["ParticleBuffers", "check_buffer", "check_buffer_state"]


def check_buffer(what: str, t: object, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """A saved per-particle buffer tensor must have the live buffer's shape and dtype."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{what} must be a tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{what} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if t.dtype != dtype:
        raise ValueError(f"{what} has dtype {t.dtype}, expected {dtype}")


def check_buffer_state(swarm: dict[str, Any], n: int, held: str) -> None:
    """The per-particle buffers of a checkpoint's ``state["swarm"]``: consistent with each
    other and with the ``n`` rows this process holds (``held`` says how many, for errors)."""
    keys = [k for k in ("buffers", "gbest_buffers", "pbest_buffers") if k in swarm]
    if not keys:
        return  # no buffers found yet, or a checkpoint from before they were kept
    if "buffers" not in swarm or "gbest_buffers" not in swarm:
        raise ValueError(
            "state['swarm'] must hold both 'buffers' and 'gbest_buffers' (the "
            "per-particle buffers), or neither"
        )
    for key in keys:
        d = swarm[key]
        if not isinstance(d, dict) or not all(isinstance(k, str) for k in d):
            raise ValueError(f"state['swarm'][{key!r}] must map buffer names to tensors")
    rows = swarm["buffers"]
    for key in ("gbest_buffers", "pbest_buffers"):
        if key in swarm and set(swarm[key]) != set(rows):
            raise ValueError(
                f"state['swarm'][{key!r}] names the buffers {sorted(swarm[key])}, but "
                f"state['swarm']['buffers'] names {sorted(rows)}"
            )
    for name, t in rows.items():
        what = f"per-particle buffer {name!r}"
        if not isinstance(t, Tensor) or t.dim() < 1 or t.shape[0] != n:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(
                f"{what} must be a tensor with one row per particle ({held}), got {got}"
            )
        shape = tuple(t.shape[1:])
        check_buffer(f"the global best's {what}", swarm["gbest_buffers"][name], shape, t.dtype)
        if "pbest_buffers" in swarm:
            pbest = swarm["pbest_buffers"][name]
            check_buffer(f"the personal bests' {what}", pbest, (n, *shape), t.dtype)


class ParticleBuffers:
    """Which model buffers are per particle, and their part in each step."""

    def __init__(self, *, from_checkpoint: bool = False) -> None:
        #: ``(name, module, key)`` of every per-particle buffer; ``None``: not known yet
        self.slots: list[tuple[str, torch.nn.Module, str]] | None = None
        #: running-statistics norm layers whose buffers did not change (``eval()`` mode)
        self.dormant_norms: list[torch.nn.Module] = []
        #: after ``load_state_dict``: the next binding must match the saved buffers exactly
        self.from_checkpoint = from_checkpoint
        self.inflight: EvaluationRequest | None = None

    def prepare(
        self, request: EvaluationRequest, swarm: dict[str, Any], *, keep: bool, n: int
    ) -> None:
        """Fill ``request`` with the per-particle buffers of this process's ``n`` particles
        (or, before they are known, how to bind them)."""
        slots = self.slots
        if slots is not None and any(m.training for m in self.dormant_norms):
            slots = self.slots = None  # a norm layer began training: watch again
        if slots is None:
            request.bind_buffers = lambda watch: self.bind(watch, swarm, keep=keep, n=n)
            request.saved_buffers = dict(swarm.get("buffers") or {})
        elif slots:
            request.buffer_targets = list(resolve([(m, k) for _, m, k in slots]))
            request.buffers = [swarm["buffers"][name] for name, _, _ in slots]
        self.inflight = request

    def bind(
        self, watch: BufferWatch, swarm: dict[str, Any], *, keep: bool, n: int
    ) -> list[Tensor]:
        """Take the buffers ``watch`` saw change as the per-particle buffers; return their
        rows. New ones start, for every particle, from the value they held before the pass;
        saved ones (a checkpoint, or an earlier binding) keep their rows, and after
        ``load_state_dict`` the two sets must match, shape and dtype included."""
        found = watch.found()
        saved = swarm.get("buffers") or {}
        names = [f.name for f in found]
        if self.from_checkpoint:
            self._match_saved(list(saved), names)
        rows, gbests, pbests = {}, {}, {}
        old_g = swarm.get("gbest_buffers") or {}
        old_p = swarm.get("pbest_buffers") or {}
        for f in found:
            target = f.module._buffers[f.key]
            assert target is not None
            if f.name in saved:
                what = f"per-particle buffer {f.name!r}"
                check_buffer(what, saved[f.name], (n, *target.shape), target.dtype)
                rows[f.name] = saved[f.name].to(target.device)
                gbests[f.name] = old_g[f.name].to(target.device)
                if keep and f.name in old_p:
                    pbests[f.name] = old_p[f.name].to(target.device)
            else:
                before = f.before.to(target.device)
                rows[f.name] = before.unsqueeze(0).repeat((n,) + (1,) * before.dim())
                gbests[f.name] = before.clone()  # particle 0, the model as given
                if keep:
                    pbests[f.name] = rows[f.name].clone()
        swarm["buffers"], swarm["gbest_buffers"] = rows, gbests
        if keep:
            swarm["pbest_buffers"] = pbests
        self.slots = [(f.name, f.module, f.key) for f in found]
        tracked = {id(f.module) for f in found}
        norms = running_stat_modules(watch.modules)
        self.dormant_norms = [m for m in norms if id(m) not in tracked]
        self.from_checkpoint = False
        return [rows[name] for name in names]

    @staticmethod
    def _match_saved(saved: list[str], names: list[str]) -> None:
        for name in saved:
            if name not in names:
                raise ValueError(
                    f"the loaded state keeps per-particle buffer {name!r}, but this "
                    "model's forward pass does not update a buffer of that name "
                    f"(it updates {names or 'none'}); load it into the model it was "
                    "saved from, in the same train/eval mode"
                )
        for name in names:
            if name not in saved:
                raise ValueError(
                    f"this model's forward pass updates buffer {name!r}, which the loaded "
                    "state does not keep per particle; load it into the model it was "
                    "saved from, in the same train/eval mode"
                )

    def advance(
        self,
        swarm: dict[str, Any],
        placement: Placement,
        improved: Tensor,
        valid: Tensor,
        gbest_change: tuple[int, bool] | None,
        keep: bool,
    ) -> None:
        r"""The per-particle buffers after this step, swapped into ``swarm``.

        Particle :math:`i`'s buffers become those its forward pass left; a personal best
        keeps the buffers of its position (``forget < 1``); the global best's are those of
        particle :math:`b` (``gbest_change = (b, changed)``; ``None``: no particle is
        finite, and they stay); a re-seeded particle takes the global best's. Replicas
        average theirs over ranks first (each saw its shard of the batch); a sharded swarm
        gets the global best's from the rank holding particle :math:`b`. All on the
        device, no host read; nothing at all for a model without such buffers.
        ``improved`` and ``valid``: this process's rows.
        """
        request, self.inflight = self.inflight, None
        slots = self.slots
        if not slots or request is None or request.new_buffers is None:
            return
        new = list(request.new_buffers)
        placement.average_buffers(new)
        old_p = swarm.get("pbest_buffers") or {}
        old_g = [swarm["gbest_buffers"][name] for name, _, _ in slots]
        best_rows = []
        pbest_out = {}
        for (name, _, _), rows, before in zip(slots, new, request.buffers, strict=True):
            if keep:
                mask = improved.to(rows.device).view((-1,) + (1,) * (rows.dim() - 1))
                rows = torch.where(mask, rows, old_p.get(name, before))
                pbest_out[name] = rows
            best_rows.append(rows)
        if gbest_change is None:
            gbests = old_g
        else:
            gbests = placement.gbest_buffers(*gbest_change, best_rows, old_g)
        rows_out, gbest_out = {}, {}
        for (name, _, _), rows, gbest in zip(slots, new, gbests, strict=True):
            bad = (~valid).to(rows.device).view((-1,) + (1,) * (rows.dim() - 1))
            rows_out[name] = torch.where(bad, gbest, rows)
            gbest_out[name] = gbest
        swarm["buffers"], swarm["gbest_buffers"] = rows_out, gbest_out
        if keep:
            swarm["pbest_buffers"] = pbest_out
        else:
            swarm.pop("pbest_buffers", None)

    def write_into_model(
        self, swarm: dict[str, Any], values: dict[str, Tensor] | None = None
    ) -> None:
        """The model takes ``values`` (one tensor per buffer name), by default the global
        best's buffers."""
        if not self.slots:
            return
        values = swarm["gbest_buffers"] if values is None else values
        targets = resolve([(m, k) for _, m, k in self.slots])
        for (name, _, _), b in zip(self.slots, targets, strict=True):
            b.copy_(values[name])

    def check_live(self, swarm: dict[str, Any], n: int) -> None:
        """When the per-particle buffers of this model are known: the checkpoint's
        ``swarm`` keeps exactly those (names, shapes, dtypes)."""
        if self.slots is None or "buffers" not in swarm:
            return
        rows = swarm["buffers"]
        live = dict(
            zip(
                [name for name, _, _ in self.slots],
                resolve([(m, k) for _, m, k in self.slots]),
                strict=True,
            )
        )
        for name in rows:
            if name not in live:
                raise ValueError(
                    f"the state_dict keeps per-particle buffer {name!r}, but this model's "
                    f"forward pass does not update a buffer of that name (it updates "
                    f"{sorted(live) or 'none'})"
                )
        for name, b in live.items():
            if name not in rows:
                raise ValueError(
                    f"this model's forward pass updates buffer {name!r}, which the "
                    "state_dict does not keep per particle"
                )
            check_buffer(f"per-particle buffer {name!r}", rows[name], (n, *b.shape), b.dtype)
