"""Where the particles live: :class:`Replicated` (every process holds all of them) and
:class:`Sharded` (each rank holds a contiguous share), behind one interface.

The step asks its placement, never ``if sharded``: which rows this process holds, which
random stream draws for them, how losses and gradients are agreed on, how the new global
best (weights, gradient, buffers) reaches every process, and what a checkpoint records of
the placement. ``distributed="independent"`` is a :class:`Replicated` placement without a
communicator (one swarm per process).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from hgpso.distributed import SwarmComm, shard_bounds
from hgpso.optim.bookkeeping import valid_particles
from hgpso.optim.random import ParticleRandom, SwarmRandom

__all__ = ["Placement", "Replicated", "Sharded", "make_placement"]


class Placement:
    """The interface; see :class:`Replicated` and :class:`Sharded`."""

    mode: str
    #: the particles this process holds (row ``j`` of its state tensors is particle
    #: ``rows.start + j``)
    rows: range
    #: whether the fused kernel may move this placement's rows
    fused_allowed: bool = True

    def __init__(self, mode: str, comm: SwarmComm | None, num_particles: int) -> None:
        self.mode = mode
        self.comm = comm
        self.num_particles = num_particles
        self.rows = range(num_particles)

    @property
    def refuses_ddp(self) -> bool:
        """Whether the step must refuse a DDP-wrapped model (each rank scores its own rows)."""
        return False

    @property
    def wants_fingerprint(self) -> bool:
        """Whether the ranks compare a fingerprint of the batch (they must score the same)."""
        return False

    def random(self, device: torch.device, seed: int) -> SwarmRandom:
        """The random stream of this process's particles."""
        return SwarmRandom(device, seed)

    def before_exchange(self, losses: Tensor, grads: list[Tensor] | None) -> Tensor:
        """This process's losses as sent to the others."""
        return losses

    def exchange(
        self, losses: Tensor, grads: list[Tensor] | None, fingerprint: float | None
    ) -> tuple[Tensor, list[Tensor] | None]:
        """The step's agreed losses (of all ``N`` particles) and gradients (of this
        process's rows); raises if a peer failed."""
        if self.comm is None:
            return losses, grads
        return self.comm.exchange(losses, grads, fingerprint=fingerprint)

    def report_failure(self, error: BaseException) -> None:
        """This process's scoring raised: tell the others (they raise too)."""
        if self.comm is not None:
            self.comm.report_failure(error)

    def valid(self, losses: Tensor, grads: list[Tensor] | None) -> Tensor:
        """After the exchange: which of the ``N`` particles are valid (finite)."""
        return valid_particles(losses, grads)

    def local(self, t: Tensor) -> Tensor:
        """The rows of an ``(N, ...)`` tensor that this process holds."""
        return t

    def particle_ids(self, rows: Tensor) -> list[int] | None:
        """Global particle indices of this process's ``rows`` for per-particle streams
        (``None``: one stream serves the whole swarm)."""
        return None

    def global_best(
        self,
        b: int,
        changed: bool,
        pbests: list[Tensor],
        grads: list[Tensor] | None,
        old: list[Tensor],
    ) -> tuple[list[Tensor], list[Tensor] | None]:
        """The new global best's weights (particle ``b``'s personal best, ``changed`` when
        it differs from the stored one ``old``) and, when ``grads`` is given, its gradient."""
        gbests = [pb[b].clone() for pb in pbests]  # one model's worth
        return gbests, None if grads is None else [g[b].clone() for g in grads]

    def gbest_buffers(
        self, b: int, changed: bool, best_rows: list[Tensor], old: list[Tensor]
    ) -> list[Tensor]:
        """The new global best's per-particle buffers (``best_rows``: this process's)."""
        return [r[b].clone() for r in best_rows]

    def average_buffers(self, new: list[Tensor]) -> None:
        """Agree on the buffers the forward passes left (each replica saw its own shard)."""
        if self.comm is not None:
            self.comm.average_([t for t in new if t.is_floating_point()])

    def sum_over_ranks(self, tensors: list[Tensor]) -> None:
        """Sums over this process's rows made sums over all ``N`` particles, in place (a
        collective when the particles are sharded over ranks)."""
        return None  # every particle is here

    def shard_info(self) -> dict[str, int] | None:
        """What a checkpoint records of the placement (``None``: all particles here)."""
        return None


class Replicated(Placement):
    """Every process holds all ``N`` particles (``"replicated"``, ``"independent"``)."""


class Sharded(Placement):
    """Rank ``r`` of ``W`` holds particles ``shard_bounds(N, W, r)``; each particle draws
    from its own random stream, so any ``W`` gives the same swarm."""

    fused_allowed = False  # the kernel's randoms depend on a particle's row in its tensor

    def __init__(self, mode: str, comm: SwarmComm | None, num_particles: int) -> None:
        super().__init__(mode, comm, num_particles)
        self.world_size = 1 if comm is None else comm.world_size
        self.rank = 0 if comm is None else comm.rank
        if comm is not None:
            comm.num_particles = num_particles
            comm.bounds = [
                shard_bounds(num_particles, comm.world_size, r) for r in range(comm.world_size)
            ]
            self.rows = range(*comm.bounds[comm.rank])

    @property
    def refuses_ddp(self) -> bool:
        return self.comm is not None

    @property
    def wants_fingerprint(self) -> bool:
        return self.comm is not None

    def random(self, device: torch.device, seed: int) -> SwarmRandom:
        return ParticleRandom(device, seed, self.rows)

    def before_exchange(self, losses: Tensor, grads: list[Tensor] | None) -> Tensor:
        # the NaN guard on this rank's own particles, whose gradients no other rank sees:
        # an invalid particle's loss is sent as NaN, so all ranks agree on it
        valid = valid_particles(losses, grads)
        return torch.where(valid, losses, math.nan)

    def valid(self, losses: Tensor, grads: list[Tensor] | None) -> Tensor:
        return torch.isfinite(losses)

    def local(self, t: Tensor) -> Tensor:
        return t[self.rows.start : self.rows.stop]

    def particle_ids(self, rows: Tensor) -> list[int] | None:
        return (rows + self.rows.start).tolist()

    def global_best(
        self,
        b: int,
        changed: bool,
        pbests: list[Tensor],
        grads: list[Tensor] | None,
        old: list[Tensor],
    ) -> tuple[list[Tensor], list[Tensor] | None]:
        if not changed:
            return old, None
        sent = self.row_from_owner(b, [*pbests, *(grads or [])])  # one broadcast
        return sent[: len(pbests)], sent[len(pbests) :] if grads is not None else None

    def gbest_buffers(
        self, b: int, changed: bool, best_rows: list[Tensor], old: list[Tensor]
    ) -> list[Tensor]:
        return self.row_from_owner(b, best_rows) if changed else old

    def average_buffers(self, new: list[Tensor]) -> None:
        return None  # each rank's buffers belong to its own particles

    def sum_over_ranks(self, tensors: list[Tensor]) -> None:
        if self.comm is not None:
            self.comm.sum_(tensors)

    def row_from_owner(self, b: int, stacks: Sequence[Tensor]) -> list[Tensor]:
        """Row ``b`` (a global particle index) of each of ``stacks`` (this rank's rows) on
        every rank, sent by the rank that holds particle ``b``."""
        if b in self.rows:
            out = [t[b - self.rows.start].clone() for t in stacks]
        else:
            out = [t.new_empty(t.shape[1:]) for t in stacks]
        if self.comm is not None:
            self.comm.broadcast_from(self.comm.owner_of(b), out)
        return out

    def gather(self, obj: Any, to: int) -> list[Any] | None:
        """Every rank's ``obj`` on rank ``to`` (in rank order), ``None`` on the others."""
        if self.comm is None:
            return [obj]
        comm = self.comm
        dst = to if comm.group is None else dist.get_global_rank(comm.group, to)
        out: list[Any] | None = [None] * comm.world_size if comm.rank == to else None
        dist.gather_object(obj, out, dst=dst, group=comm.group)
        return out

    def shard_info(self) -> dict[str, int] | None:
        return {
            "world_size": self.world_size,
            "rank": self.rank,
            "start": self.rows.start,
            "stop": self.rows.stop,
        }


def make_placement(mode: str, comm: SwarmComm | None, num_particles: int) -> Placement:
    """The placement of a swarm built with ``distributed=mode`` over ``comm``."""
    cls: Any = Sharded if mode == "sharded" else Replicated
    placement: Placement = cls(mode, comm, num_particles)
    return placement
