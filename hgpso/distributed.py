r"""Everything a swarm exchanges with other processes, in one place.

When ``torch.distributed`` is initialized with more than one process in the optimizer's
process group, :class:`~hgpso.HGPSO` and :class:`~hgpso.PSO` behave as one swarm trained on
the global batch (``distributed="replicated"``, the default): every rank holds the whole
swarm, scores it on its own data shard, and the ranks agree on

- everything that must be the same on every rank, checked when the optimizer is built
  (:meth:`SwarmComm.check_config`): the device type, the number and total size of the
  trainable parameters, :math:`N` and the mode in one all-gather of
  :data:`CONFIG_COLUMNS` integers, the last of which is a digest of the optimizer's
  description of itself (class, options, group hyperparameters, shapes); a mismatch is a
  :class:`ValueError` on every rank naming the first difference and each rank's value;
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

``distributed="sharded"`` splits the *particles* instead of the data, for models where
:math:`N` copies do not fit one device: rank :math:`r` of :math:`W` stores and scores only
the contiguous slice :func:`shard_bounds` gives it (:math:`\lceil N/W \rceil` or
:math:`\lfloor N/W \rfloor` particles: the first :math:`N \bmod W` ranks hold one more), so
its positions, velocities, personal bests and per-particle buffers take about :math:`1/W` of
the unsharded memory; the global best (weights, buffers, loss) is kept on every rank. Every
rank must score its particles **on the same batch** (the losses of different particles are
compared with each other, so they must be losses on the same data): give every rank the
whole batch, not a :class:`~torch.utils.data.DistributedSampler` shard. Per step the ranks

- all-gather their slices of the losses (padded to :math:`\lceil N/W \rceil`, plus each
  rank's status and a fingerprint of its batch: one collective of
  :math:`\lceil N/W \rceil + 2` numbers per rank), so every rank holds all :math:`N` losses
  and computes the same arg-min (ties: the lowest particle index); a particle whose loss or
  gradient is not finite is sent as NaN, so every rank re-seeds the same particles;
- check the batch fingerprints, when they are known (:func:`hgpso.vectorized_closure`
  computes one from its inputs and targets; a plain closure's batch cannot be seen): ranks
  that scored different batches raise :class:`ValueError` on every rank, naming them;
- broadcast the new global best (its weights, and its gradient for HGPSO) from the rank that
  owns it, and its per-particle buffers when the model has any, only when it changed.

Gradients are never averaged in this mode (each rank's gradients belong to its own
particles), so a model wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` is
refused at the first forward pass of a step. Random numbers (initial scatter,
:math:`r_1, r_2`, re-seeding) come from one stream per particle
(``hgpso.optim.random.ParticleRandom``), so particle :math:`i` draws the same numbers
whatever :math:`W` is and a sharded run on :math:`W` ranks equals a sharded run in one
process; these streams differ from the one stream of the unsharded modes, so a sharded run
is not number-for-number the replicated one.

``distributed="independent"`` opts out: each rank keeps its own swarm and nothing is
exchanged. With no process group initialized, or a group of one process, nothing here runs
at all: :meth:`SwarmComm.resolve` returns ``None`` and the optimizer's step has no extra work
(a ``"sharded"`` swarm then holds all :math:`N` particles, with its per-particle streams).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "BUCKET_BYTES",
    "CONFIG_COLUMNS",
    "MODES",
    "Mode",
    "SwarmComm",
    "SwarmPeerError",
    "describe_digest",
    "shard_bounds",
]

Mode = Literal["replicated", "independent", "sharded"]
MODES: tuple[str, ...] = ("replicated", "independent", "sharded")

#: gradients are all-reduced in buckets of at most this many bytes (DDP's default size)
BUCKET_BYTES = 25 * 2**20
#: checksums within this relative distance count as "the same gradients on every rank"
_CHECKSUM_RTOL = 1e-9
_DEVICE_CODES = {"cpu": 0, "cuda": 1, "xpu": 2, "mps": 3}
_DEVICE_NAMES = {v: k for k, v in _DEVICE_CODES.items()}
_MODE_CODES = {mode: code for code, mode in enumerate(MODES)}
_MODE_NAMES = dict(enumerate(MODES))
#: the int64 columns each rank sends in :meth:`SwarmComm.check_config`
CONFIG_COLUMNS = 6
_COLUMN_LABELS = (
    "device type",
    "number of trainable tensors",
    "number of parameters",
    "N",
    "mode",
)
_SAME_MODEL = " (every rank must build the same model)"
_COLUMN_HINTS = (_SAME_MODEL, _SAME_MODEL, _SAME_MODEL, " (num_particles)", " (distributed=)")
#: the digest column of a rank whose description cannot be encoded (a digest is >= 0)
_UNDESCRIBABLE = -1
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


def shard_bounds(num_particles: int, world_size: int, rank: int) -> tuple[int, int]:
    """``(start, stop)``: the particles rank ``rank`` of ``world_size`` owns under
    ``distributed="sharded"``. Contiguous, in rank order; the first ``num_particles %
    world_size`` ranks hold one particle more than the others."""
    base, extra = divmod(num_particles, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def check_mode(mode: object) -> Mode:
    """Validate the ``distributed=`` argument of the optimizers."""
    if mode not in MODES:
        raise ValueError(f"distributed must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    return mode  # type: ignore[return-value]


def _canonical(value: object) -> str:
    """The canonical JSON text of ``value`` (keys sorted, no whitespace): the same string on
    every rank for equal values, whatever the dict order or the process."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True)


def describe_digest(description: Mapping[str, object] | None) -> int:
    """A 63-bit digest (an int in ``[0, 2**63)``) of ``description``: SHA-256 over its
    canonical JSON, so equal descriptions give the same number on every rank and in every
    process (Python's ``hash()`` of a string is salted per process). ``-1`` when the
    description is not a mapping with string keys and JSON-able values."""
    if description is not None and (
        not isinstance(description, Mapping) or not all(isinstance(k, str) for k in description)
    ):
        return _UNDESCRIBABLE
    try:
        text = _canonical(None if description is None else dict(description))
    except (TypeError, ValueError):
        return _UNDESCRIBABLE
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def _first_difference(descriptions: Sequence[Mapping[str, object] | None]) -> str:
    """The message naming the first key (in rank 0's order, then the keys only other ranks
    have) whose values differ between the ranks, with each rank's value."""
    if any(d is None for d in descriptions):
        per_rank = ", ".join(
            f"rank {r}: {'none' if d is None else 'given'}" for r, d in enumerate(descriptions)
        )
        return (
            "the ranks of the swarm's process group disagree on whether the optimizer "
            f"describes its configuration: {per_rank} (every rank must run the same version "
            "of hgpso)"
        )
    given = [d for d in descriptions if d is not None]  # all of them, by now
    keys: dict[str, None] = {}
    for d in given:
        keys.update(dict.fromkeys(d))
    missing = object()
    for key in keys:
        values = [d.get(key, missing) for d in given]
        texts = {"" if v is missing else _canonical(v) for v in values}
        if len(texts) > 1:
            per_rank = ", ".join(
                f"rank {r}: {'(not set)' if v is missing else repr(v)}"
                for r, v in enumerate(values)
            )
            return (
                f"the ranks of the swarm's process group disagree on {key!r}: {per_rank} "
                "(every rank must build the same optimizer, options and model)"
            )
    return (  # unreachable: different digests mean different canonical texts
        "the ranks of the swarm's process group disagree on the optimizer's configuration"
    )


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
        self.num_particles = 0  # set by check_config
        #: ``(start, stop)`` of every rank's particles (sharded mode; set by check_config)
        self.bounds: list[tuple[int, int]] = []
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

    def check_config(
        self,
        *,
        params: Sequence[Tensor],
        num_particles: int,
        description: Mapping[str, object] | None = None,
    ) -> None:
        """Raise :class:`ValueError` on every rank if the ranks disagree on anything that
        must be the same everywhere, naming the first difference and each rank's value.

        One all-gather of :data:`CONFIG_COLUMNS` int64 numbers per rank carries the device
        type, the number and total size of the trainable parameters, ``N``, the mode
        (``"replicated"`` or ``"sharded"``) and a 63-bit digest of ``description``: a flat
        JSON-able mapping built by the optimizer (its class, the swarm-wide options, each
        param group's hyperparameters, the parameters' shapes and dtypes, ...). Only when
        the digests differ are the descriptions themselves all-gathered (as objects), to name
        the first key whose values differ. Every rank takes the same collectives whatever
        they disagree on, so a mismatch is an error on every rank, never a hang or a crash
        in the backend. ``description=None`` compares the fixed columns only.
        """
        self.num_particles = num_particles
        device = params[0].device if params else torch.device("cpu")
        numel = sum(p.numel() for p in params)
        digest = describe_digest(description)
        mine = torch.tensor(
            [
                _DEVICE_CODES.get(device.type, 99),
                len(params),
                numel,
                num_particles,
                _MODE_CODES[self.mode],
                digest,
            ],
            dtype=torch.int64,
            device=self.device,
        )
        rows = [t.tolist() for t in self._all_gather(mine)]
        for col, label in enumerate(_COLUMN_LABELS):
            values = [row[col] for row in rows]
            if len(set(values)) > 1:
                if col == 0:
                    shown = [_DEVICE_NAMES.get(v, "other") for v in values]
                elif col == 4:
                    shown = [repr(_MODE_NAMES.get(v, "other")) for v in values]
                else:
                    shown = values
                per_rank = ", ".join(f"rank {r}: {v}" for r, v in enumerate(shown))
                raise ValueError(
                    f"the ranks of the swarm's process group disagree on the {label}"
                    f"{_COLUMN_HINTS[col]}: {per_rank}"
                )
        digests = [row[5] for row in rows]
        if len(set(digests)) > 1:
            self._raise_for_descriptions(description, digests)
        if self.mode == "sharded":
            if num_particles < self.world_size:
                raise ValueError(
                    f"distributed='sharded' gives every rank at least one particle, but "
                    f"num_particles={num_particles} is smaller than the process group's "
                    f"{self.world_size} ranks: use num_particles >= {self.world_size}, fewer "
                    "ranks, or distributed='replicated'"
                )
            self.bounds = [
                shard_bounds(num_particles, self.world_size, r) for r in range(self.world_size)
            ]

    def _raise_for_descriptions(
        self, description: Mapping[str, object] | None, digests: list[int]
    ) -> None:
        """The digests differ (the same list on every rank): gather the descriptions and
        raise on every rank, naming the first differing key."""
        unreadable = [r for r, d in enumerate(digests) if d == _UNDESCRIBABLE]
        mine: object = None if digests[self.rank] == _UNDESCRIBABLE else description
        gathered: list[Any] = [None] * self.world_size
        self.collectives += 1
        dist.all_gather_object(gathered, mine, group=self.group)
        if unreadable:
            which = ", ".join(map(str, unreadable))
            raise ValueError(
                f"the swarm's configuration on rank {which} of its process group cannot be "
                "compared with the other ranks' (its description is not a flat JSON-able "
                "mapping with string keys)"
            )
        raise ValueError(_first_difference(gathered))

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
        fingerprint: float | None = None,
    ) -> tuple[Tensor, list[Tensor] | None]:
        """Agree on the step's losses and gradients, or fail together.

        Every rank calls this once per step, after scoring its particles: with its
        ``losses`` and ``grads`` (``(M, *S)`` per parameter, or ``None``), or with ``error``
        when its own scoring raised (``losses`` is then ignored and the caller re-raises
        ``error`` after this returns). If any rank failed, the others raise
        :class:`SwarmPeerError` naming it.

        Replicated mode: ``M = N``; the losses come back averaged over ranks, and the
        gradients averaged in place unless they already agree. Sharded mode: ``M`` is this
        rank's share; the result is all ``N`` losses in particle order (the same tensor on
        every rank) and ``grads`` untouched. ``fingerprint`` (sharded mode: a number
        computed from the batch, or ``None`` when unknown) must agree across the ranks that
        give one, or every rank raises :class:`ValueError`.
        """
        sharded = self.mode == "sharded"
        width = max(b - a for a, b in self.bounds) if sharded else self.num_particles
        # [status, checksum or fingerprint, losses...]: one all-gather of width + 2 numbers
        mine = torch.zeros(width + 2, dtype=torch.float64, device=self.device)
        if error is not None:
            mine[0] = 1.0
        else:
            assert losses is not None
            if sharded:
                mine[1] = math.nan if fingerprint is None else fingerprint
            elif grads:
                mine[1] = _checksum(grads).to(self.device)
            mine[2 : 2 + losses.numel()] = losses.detach().to(self.device, torch.float64)
        self.steps += 1
        rows = self._all_gather(mine)
        table = torch.stack(rows)  # (W, width + 2), the same on every rank
        status = table[:, 0].tolist()
        failed = [r for r, s in enumerate(status) if s != 0.0]
        if failed:
            self._raise_for(failed, error)
        if error is not None or losses is None:
            return torch.empty(0), None  # unreachable for a healthy caller: it re-raises
        if sharded:
            self._check_fingerprints(table[:, 1].tolist())
            parts = [table[r, 2 : 2 + b - a] for r, (a, b) in enumerate(self.bounds)]
            return torch.cat(parts).to(losses.device, torch.float32), grads
        # the sum in rank order, done identically on every rank, so the result is bitwise equal
        mean = table[:, 2:].sum(0) / self.world_size
        out = mean.to(losses.device, torch.float32)
        if grads and not _same_everywhere(table[:, 1].tolist()):
            self.average_(grads)
        return out, grads

    def _check_fingerprints(self, prints: list[float]) -> None:
        """Sharded mode: raise on every rank if the ranks that know their batch's
        fingerprint scored different batches."""
        known = [(r, f) for r, f in enumerate(prints) if math.isfinite(f)]
        if len(known) < 2 or _same_everywhere([f for _, f in known]):
            return
        shown = ", ".join(f"rank {r}: {f:.17g}" for r, f in known)
        raise ValueError(
            "distributed='sharded' compares the losses of particles scored on different "
            "ranks, so every rank must score its particles on the same batch, but the ranks' "
            f"batches differ (fingerprints of inputs and targets: {shown}). Give every rank "
            "the whole batch (no DistributedSampler shard), or use distributed='replicated'. "
            "Nothing was changed."
        )

    def broadcast_from(self, owner: int, tensors: Sequence[Tensor]) -> None:
        """Overwrite ``tensors`` on every rank with the group rank ``owner``'s (in place;
        flattened into buckets of at most :data:`BUCKET_BYTES` of one dtype each)."""
        with torch.no_grad():
            for bucket in _buckets(list(tensors)):
                flat = torch.cat([t.reshape(-1) for t in bucket])
                if flat.device != self.device and self.device.type == "cuda":
                    flat = flat.to(self.device)
                self._count(flat)
                dist.broadcast(flat, src=self._global(owner), group=self.group)
                _unflatten_into(flat, bucket)

    def owner_of(self, particle: int) -> int:
        """Sharded mode: the group rank that holds ``particle``."""
        for r, (a, b) in enumerate(self.bounds):
            if a <= particle < b:
                return r
        raise IndexError(f"particle {particle} is out of range for N={self.num_particles}")

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
        self._all_reduce_(tensors, divide=True)

    def sum_(self, tensors: Sequence[Tensor]) -> None:
        """Sum ``tensors`` over ranks in place, bucketed as :meth:`average_`."""
        self._all_reduce_(tensors, divide=False)

    def _all_reduce_(self, tensors: Sequence[Tensor], *, divide: bool) -> None:
        for bucket in _buckets(list(tensors)):
            flat = torch.cat([t.reshape(-1) for t in bucket])
            moved = flat.device != self.device and self.device.type == "cuda"
            if moved:
                flat = flat.to(self.device)
            self._count(flat)
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
            if divide:
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
