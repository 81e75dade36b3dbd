r"""Everything a swarm exchanges with other processes, in one place.

When ``torch.distributed`` is initialized with more than one process in the optimizer's
process group, :class:`~hgpso.HGPSO` and :class:`~hgpso.PSO` behave as one swarm trained on
the global batch (``distributed="replicated"``, the default): every rank holds the whole
swarm, scores it on its own data shard, and the ranks agree on

- the initial weights and the swarm's random seed (rank 0's, broadcast once when the
  optimizer is built), so the initial scatter, :math:`r_1, r_2`, re-seeding and the fused
  kernel's counter-based randoms are the same on every rank even when torch's global
  generator differs per rank;
- the per-particle losses, averaged over ranks every step:

  .. math::
      f_i = \frac{1}{W} \sum_{r=0}^{W-1} f_i^{(r)}

  (one collective of :math:`N + 2` numbers per rank, which also carries each rank's status
  and a gradient checksum);
- the per-particle gradients, averaged the same way in one flattened (bucketed) all-reduce,
  **unless they are already identical on every rank**: a model wrapped in
  :class:`~torch.nn.parallel.DistributedDataParallel` all-reduces gradients inside
  ``backward()``, so a plain closure over a DDP model (Lightning's automatic optimization
  under ``strategy="ddp"``) needs no second average. The rule is checked every step from a
  float64 checksum of each rank's gradients carried in the loss exchange, so nothing has to
  be declared and nothing is averaged twice.

Because every rank then applies the same update to the same state with the same randoms,
replicas stay identical element for element. A rank whose closure raises still joins the
step's exchange, so the other ranks raise :class:`SwarmPeerError` naming it instead of
waiting forever. (With a DDP-wrapped model a failure *inside* the closure happens while the
other ranks are in DDP's own all-reduce; they are released when the failing process exits,
which ``torchrun`` and Lightning do, or by the process group's timeout, and then name the
rank that failed first, which records its error in the process group's store.)

``distributed="independent"`` opts out: each rank keeps its own swarm and nothing is
exchanged. With no process group initialized, or a group of one process, nothing here runs
at all: :meth:`SwarmComm.resolve` returns ``None`` and the optimizer's step has no extra work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["BUCKET_BYTES", "MODES", "Mode", "SwarmComm", "SwarmPeerError"]

Mode = Literal["replicated", "independent"]
MODES: tuple[str, ...] = ("replicated", "independent")

#: gradients are all-reduced in buckets of at most this many bytes (DDP's default size)
BUCKET_BYTES = 25 * 2**20
#: checksums within this relative distance count as "the same gradients on every rank"
_CHECKSUM_RTOL = 1e-9
_DEVICE_CODES = {"cpu": 0, "cuda": 1, "xpu": 2, "mps": 3}
_created = [0]  # communicators built in this process: the same sequence on every rank


class SwarmPeerError(RuntimeError):
    """Another rank of the swarm's process group failed during a step."""

    def __init__(self, failed_ranks: Sequence[int], messages: Sequence[str]) -> None:
        self.failed_ranks = list(failed_ranks)
        detail = "; ".join(f"rank {r}: {m}" for r, m in zip(failed_ranks, messages, strict=True))
        which = ", ".join(map(str, failed_ranks))
        super().__init__(
            f"rank {which} of the swarm's process group failed while scoring particles "
            f"({detail}); this rank stops too, so the replicas stay identical"
        )


def check_mode(mode: object) -> Mode:
    """Validate the ``distributed=`` argument of the optimizers."""
    if mode not in MODES:
        raise ValueError(f"distributed must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    return mode  # type: ignore[return-value]


class SwarmComm:
    """The collectives of one swarm on one process group.

    Built by :meth:`resolve`; the optimizer calls :meth:`check_config` and
    :meth:`agree_start` once when it is built and :meth:`exchange` once per step.

    Attributes:
        group: the process group (``None`` is the default group).
        rank, world_size: this process's rank in ``group`` and the group's size.
        bytes_communicated: payload bytes this rank has handed to collectives (the input
            size of each call; a ring all-reduce moves about twice that over the wire).
        collectives: number of collective calls made.
    """

    def __init__(self, group: Any, rank: int, world_size: int, mode: Mode) -> None:
        self.group = group
        self.rank = rank
        self.world_size = world_size
        self.mode = mode
        backend = dist.get_backend(group)
        # NCCL only moves CUDA tensors; gloo (and the others) move CPU tensors
        self.device = (
            torch.device("cuda", torch.cuda.current_device())
            if backend == "nccl"
            else torch.device("cpu")
        )
        self.bytes_communicated = 0
        self.collectives = 0
        self.num_particles = 0  # set by check_config; every rank sends this many losses
        self.steps = 0  # exchanges so far (ranks step in lock-step, so the same everywhere)
        _created[0] += 1
        self._namespace = f"hgpso.swarm/{_created[0]}"

    # ------------------------------------------------------------------ creation
    @classmethod
    def resolve(cls, process_group: Any, mode: Mode) -> SwarmComm | None:
        """The communicator for ``process_group`` (``None``: the default group), or
        ``None`` when there is nothing to exchange: ``mode="independent"``,
        ``torch.distributed`` unavailable or not initialized, or a group of one process."""
        mode = check_mode(mode)
        if mode == "independent":
            return None
        if not dist.is_available() or not dist.is_initialized():
            if process_group is not None:
                raise RuntimeError(
                    "process_group was given but torch.distributed is not initialized; "
                    "call torch.distributed.init_process_group() before building the optimizer"
                )
            return None
        world_size = dist.get_world_size(process_group)
        if world_size < 0:  # this process is not a member of the group
            raise ValueError("this process is not a member of the given process_group")
        if world_size == 1:
            return None
        return cls(process_group, dist.get_rank(process_group), world_size, mode)

    def _count(self, t: Tensor) -> None:
        self.bytes_communicated += t.numel() * t.element_size()
        self.collectives += 1

    def _all_gather(self, t: Tensor) -> list[Tensor]:
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        self._count(t)
        dist.all_gather(out, t, group=self.group)
        return out

    def check_config(self, *, params: Sequence[Tensor], num_particles: int) -> None:
        """Raise on every rank if the ranks disagree on the device type, the number and
        sizes of the trainable parameters, or the swarm size."""
        self.num_particles = num_particles
        device = params[0].device if params else torch.device("cpu")
        numel = sum(p.numel() for p in params)
        mine = torch.tensor(
            [_DEVICE_CODES.get(device.type, 99), len(params), numel, num_particles],
            dtype=torch.int64,
            device=self.device,
        )
        rows = [t.tolist() for t in self._all_gather(mine)]
        names = {v: k for k, v in _DEVICE_CODES.items()}
        what = ("device type", "number of trainable tensors", "number of parameters", "N")
        for col, label in enumerate(what):
            values = [row[col] for row in rows]
            if len(set(values)) > 1:
                shown = [names.get(v, "other") for v in values] if col == 0 else values
                per_rank = ", ".join(f"rank {r}: {v}" for r, v in enumerate(shown))
                hint = " (num_particles)" if col == 3 else " (every rank must build the same model)"
                raise ValueError(
                    f"the ranks of the swarm's process group disagree on the {label}{hint}: "
                    f"{per_rank}"
                )

    def agree_start(self, params: Sequence[Tensor], seed: int) -> int:
        """Broadcast rank 0's parameters (in place) and seed; return the agreed seed."""
        box = torch.tensor([seed], dtype=torch.int64, device=self.device)
        self._count(box)
        dist.broadcast(box, src=self._global(0), group=self.group)
        with torch.no_grad():
            for bucket in _buckets(list(params)):
                flat = torch.cat([p.detach().reshape(-1) for p in bucket]).to(self.device)
                self._count(flat)
                dist.broadcast(flat, src=self._global(0), group=self.group)
                _unflatten_into(flat, bucket)
        return int(box.item())

    def _global(self, group_rank: int) -> int:
        if self.group is None:
            return group_rank
        return dist.get_global_rank(self.group, group_rank)

    # ------------------------------------------------------------------- a step
    def exchange(
        self,
        losses: Tensor | None,
        grads: list[Tensor] | None,
        error: BaseException | None = None,
    ) -> tuple[Tensor, list[Tensor] | None]:
        """Agree on the step's losses and gradients, or fail together.

        Every rank calls this once per step, after scoring its particles: with its
        ``losses`` (``(N,)``) and ``grads`` (``(N, *S)`` per parameter, or ``None``), or
        with ``error`` when its own scoring raised (``losses`` is then ignored and the
        caller re-raises ``error`` after this returns). If any rank failed, the others raise
        :class:`SwarmPeerError` naming it. Otherwise the losses come back averaged over
        ranks, and the gradients averaged in place unless they already agree.
        """
        n = self.num_particles
        # [status, gradient checksum, losses...]: one all-gather of N + 2 numbers
        mine = torch.zeros(n + 2, dtype=torch.float64, device=self.device)
        if error is not None:
            mine[0] = 1.0
        else:
            assert losses is not None
            if grads:
                mine[1] = _checksum(grads).to(self.device)
            mine[2:] = losses.detach().to(self.device, torch.float64)
        self.steps += 1
        rows = self._all_gather(mine)
        table = torch.stack(rows)  # (W, N + 2), the same on every rank
        status = table[:, 0].tolist()
        failed = [r for r, s in enumerate(status) if s != 0.0]
        if failed:
            self._raise_for(failed, error)
        if error is not None or losses is None:
            return torch.empty(0), None  # unreachable for a healthy caller: it re-raises
        # the sum in rank order, done identically on every rank, so the result is bitwise equal
        mean = table[:, 2:].sum(0) / self.world_size
        out = mean.to(losses.device, torch.float32)
        if grads and not _same_everywhere(table[:, 1].tolist()):
            self.average_(grads)
        return out, grads

    def report_failure(self, error: BaseException) -> None:
        """Join this step's exchange as a failed rank, so the others raise
        :class:`SwarmPeerError` naming this one instead of waiting. Never raises: if the
        group is itself broken (a peer stuck in another collective, such as DDP's all-reduce
        inside ``backward()``, until the group's timeout), the caller's own error is what
        matters.

        The first rank to fail in a step also records its error in the process group's
        store. A rank whose own error came later, typically the backend's timeout in DDP's
        all-reduce while the first rank failed inside its closure, raises
        :class:`SwarmPeerError` naming that first rank, chained to its own error."""
        step = self.steps
        first = self._record_failure(step, error)
        try:
            self.exchange(None, None, error)
        except Exception:
            pass
        self.steps = step + 1
        if first is not None and first[0] != self.rank:
            raise SwarmPeerError([first[0]], [first[1]]) from error

    def _record_failure(self, step: int, error: BaseException) -> tuple[int, str] | None:
        """(rank, message) of the first rank to fail in ``step``, via the default store."""
        try:
            store = dist.distributed_c10d._get_default_store()
            key = f"{self._namespace}/{step}"
            if store.add(f"{key}/count", 1) == 1:
                store.set(f"{key}/first", f"{self.rank}\n{type(error).__name__}: {error}")
            rank, _, message = store.get(f"{key}/first").decode().partition("\n")
            return int(rank), message
        except Exception:  # no store (a private API) or a broken one: nothing to add
            return None

    def _raise_for(self, failed: list[int], error: BaseException | None) -> None:
        text = "" if error is None else f"{type(error).__name__}: {error}"
        messages: list[Any] = [None] * self.world_size
        self.collectives += 1
        dist.all_gather_object(messages, text, group=self.group)
        if error is not None:
            return  # the failing rank re-raises its own exception
        raise SwarmPeerError(failed, [str(messages[r]) for r in failed])

    def average_(self, tensors: Sequence[Tensor]) -> None:
        """Average ``tensors`` over ranks in place: flattened into buckets of at most
        :data:`BUCKET_BYTES`, one all-reduce per bucket."""
        for bucket in _buckets(list(tensors)):
            flat = torch.cat([t.reshape(-1) for t in bucket])
            moved = flat.device != self.device and self.device.type == "cuda"
            if moved:
                flat = flat.to(self.device)
            self._count(flat)
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
            flat.div_(self.world_size)
            _unflatten_into(flat, bucket)


def _checksum(tensors: Sequence[Tensor]) -> Tensor:
    total = torch.zeros((), dtype=torch.float64, device=tensors[0].device)
    for t in tensors:
        total += t.sum(dtype=torch.float64)
        # the L1 norm too, so that sign changes cannot cancel out (a reduction: no temporary)
        total += torch.linalg.vector_norm(t, 1, dtype=torch.float64)
    return total


def _same_everywhere(checksums: list[float]) -> bool:
    first = checksums[0]
    if not all(math.isfinite(c) for c in checksums):
        return False  # NaN/inf: average, so every rank ends up with the same non-finite value
    scale = max(abs(c) for c in checksums)
    return all(abs(c - first) <= _CHECKSUM_RTOL * scale for c in checksums)


def _buckets(tensors: list[Tensor]) -> list[list[Tensor]]:
    """Consecutive runs of tensors of one dtype and device, each at most BUCKET_BYTES
    (a single larger tensor is a bucket of its own)."""
    out: list[list[Tensor]] = []
    size = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        last = out[-1] if out else None
        if (
            last is None
            or last[0].dtype != t.dtype
            or last[0].device != t.device
            or size + nbytes > BUCKET_BYTES
        ):
            out.append([t])
            size = nbytes
        else:
            last.append(t)
            size += nbytes
    return out


def _unflatten_into(flat: Tensor, tensors: Sequence[Tensor]) -> None:
    offset = 0
    for t in tensors:
        k = t.numel()
        t.copy_(flat[offset : offset + k].view_as(t))
        offset += k
