"""The swarm optimizer base: state layout, the step contract, bookkeeping and adaptation.

:class:`~hgpso.optim.HGPSO` and :class:`~hgpso.optim.PSO` differ only in whether the
gradient enters the velocity; everything else (how particles are stored, scored, accepted
as bests, guarded against NaN, adapted and saved) is defined once, here.

State layout (the single definition of it):

``optimizer.state[p]`` for every trainable parameter ``p`` (shape ``S``, ``P`` elements),
in ``p``'s dtype and device:
    ``position``, ``velocity``: tensors of shape ``(N, *S)``; row ``i`` is particle ``i``.
    ``gbest``: shape ``S``, the global best position (what the model holds after a step).
    ``pbest``: shape ``(N, *S)``, the personal bests, **only when** ``forget < 1``. With
    ``forget = 1`` a particle's personal best is always the position it was just scored at,
    so none is stored: the swarm keeps :math:`(2N + 1)P` numbers instead of
    :math:`(3N + 1)P` (see :meth:`SwarmOptimizer._score` for the one case where this
    changes a result: particles that are not finite).
``optimizer.state["swarm"]`` (one per optimizer, since a particle spans all groups):
    ``step`` (int), ``pbest_losses`` (``(N,)`` float32 on the parameters' device; with
    ``forget = 1`` the losses of the last scoring, ``+inf`` for a non-finite particle),
    ``gbest_index`` (int: the particle whose scored position became ``gbest``),
    ``gbest_loss`` (float), ``rng_state`` (the state of the swarm's
    :class:`~hgpso.optim.random.SwarmRandom`, refreshed by :meth:`state_dict`),
    ``kernel_seed`` (int, for the fused kernel's counter-based randoms), ``success_rate``,
    ``loss_ema``, ``best_loss_ema`` (floats),
    ``steps_since_improvement`` (int), ``lr_scale`` (float), ``nan_reseeds`` (int),
    ``evaluations`` (int: forward passes spent); and, once the first step found the buffers
    the forward pass updates (BatchNorm's running statistics; ``{}`` when there are none),
    per-particle buffers keyed by their ``model.named_buffers()`` name, in the buffer's
    dtype: ``buffers`` (``(N, *B)``, each particle's after its last forward pass),
    ``gbest_buffers`` (``B``, the global best's: what the model holds after a step) and,
    only when ``forget < 1``, ``pbest_buffers`` (``(N, *B)``, each personal best's).

Under ``distributed="sharded"`` (see :mod:`hgpso.distributed`) rank ``r`` holds only its
particles ``start..stop`` (``_rows``): ``position``, ``velocity``, ``pbest``, ``buffers`` and
``pbest_buffers`` have ``stop - start`` rows instead of ``N``, row ``j`` being particle
``start + j``; ``gbest``, ``gbest_buffers`` and the swarm-wide entries (``pbest_losses`` of all
``N`` particles included) are the same on every rank. ``state["swarm"]["shard"]`` records
``world_size``, ``rank``, ``start`` and ``stop``, and ``rng_state`` the per-particle streams.

A step is atomic: the new positions, velocities, personal and global bests are computed
into new tensors, and only when everything has succeeded are they swapped into
``optimizer.state`` (plain reference assignments); a failure anywhere before leaves the state
exactly as it was and the model on the last global best.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from hgpso import distributed as distributed_
from hgpso import functional as F
from hgpso import kernels
from hgpso.evaluate import EvaluationRequest, evaluate_particles
from hgpso.evaluate.buffers import BufferWatch, resolve, running_stat_modules
from hgpso.evaluate.request import active_request
from hgpso.optim.random import ParticleRandom, SwarmRandom

__all__ = ["SwarmOptimizer"]

_SWARM = "swarm"
#: the state_dict entry holding the swarm-wide options (not per group: a particle spans all)
_OPTIONS = "swarm_options"
_OPTION_KEYS = (
    "forget",
    "adaptive",
    "ema_beta",
    "tol",
    "patience",
    "lr_patience",
    "lr_factor",
    "min_lr_scale",
    "seed",
)
#: swarm-wide entries an older checkpoint may lack, and the value they start from
_SWARM_DEFAULTS: dict[str, Any] = {
    "gbest_loss": math.inf,
    "rng_state": None,
    "kernel_seed": 0,
    "success_rate": 1.0,
    "loss_ema": None,
    "best_loss_ema": math.inf,
    "steps_since_improvement": 0,
    "lr_scale": 1.0,
    "nan_reseeds": 0,
    "evaluations": 0,
}


def _check_number(
    name: str,
    value: Any,
    *,
    low: float = 0.0,
    high: float = math.inf,
    low_open: bool = False,
    allow_none: bool = False,
) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        lo = "(" if low_open else "["
        raise ValueError(f"invalid {name}: {value!r}, expected a value in {lo}{low}, {high}]")


def _check_buffer(what: str, t: object, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """A saved per-particle buffer tensor must have the live buffer's shape and dtype."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{what} must be a tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{what} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if t.dtype != dtype:
        raise ValueError(f"{what} has dtype {t.dtype}, expected {dtype}")


#: names of one group value: torch's schedulers cycle ``momentum``, the swarm calls it ``inertia``
_ALIASES = ("inertia", "momentum")


class _ParamGroup(dict):
    """A param group in which ``momentum`` is another name for ``inertia``.

    :class:`~torch.optim.lr_scheduler.OneCycleLR` and
    :class:`~torch.optim.lr_scheduler.CyclicLR` (``cycle_momentum=True``) cycle
    ``group["momentum"]``; writing either name sets both, so the inertia the next step uses
    is the value last written under either name (a scheduler's, a user's or a callback's).
    """

    def __init__(self, items: dict[str, Any]) -> None:
        super().__init__()
        self.update(items)

    def __setitem__(self, key: str, value: Any) -> None:
        if key in _ALIASES:
            for name in _ALIASES:
                super().__setitem__(name, value)
        else:
            super().__setitem__(key, value)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def __reduce__(self) -> tuple[Any, ...]:
        return (_ParamGroup, (dict(self),))


def _merge_aliases(group: dict[str, Any], where: str) -> dict[str, Any]:
    """``group`` with ``inertia`` and ``momentum`` both set when either is (a copy); giving
    both with different values is an error."""
    given = {name: group[name] for name in _ALIASES if name in group}
    a, b = given.get("inertia"), given.get("momentum")
    if len(given) == 2 and a is not b and a != b:
        raise ValueError(
            f"{where} sets inertia={given['inertia']!r} and momentum={given['momentum']!r}: "
            "momentum is another name for the swarm's inertia (so that torch's schedulers "
            "can cycle it), give one of them"
        )
    if not given:
        return dict(group)
    value = next(iter(given.values()))
    return {**group, **{name: value for name in _ALIASES}}


def _mark_grads(params: list[Tensor]) -> None:
    """Record that the ``p.grad`` tensors as they are now were left by a step (their
    version: an in-place ``backward()`` accumulation into one changes it)."""
    for p in params:
        if p.grad is not None:
            p.grad._hgpso_version = p.grad._version  # type: ignore[attr-defined]


def _refuse_ddp(module: torch.nn.Module, args: Any) -> None:
    if isinstance(module, torch.nn.parallel.DistributedDataParallel):
        raise RuntimeError(
            "distributed='sharded' cannot score particles through a DistributedDataParallel "
            "model: DDP averages gradients over ranks, but each rank scores its own "
            "particles. Pass the plain model (every rank needs the whole batch), or use "
            "distributed='replicated' with DDP"
        )


class SwarmOptimizer(Optimizer):
    """Common machinery of the particle-swarm optimizers (not used directly)."""

    #: whether the velocity has a gradient term (and so the closure must call backward)
    uses_gradients: bool = True
    #: per-group hyperparameters checked by :meth:`_validate_group`
    _group_keys: tuple[str, ...] = ()

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        defaults: dict[str, Any],
        *,
        num_particles: int,
        forget: float,
        adaptive: bool,
        ema_beta: float,
        tol: float,
        patience: int,
        lr_patience: int,
        lr_factor: float,
        min_lr_scale: float,
        seed: int | None,
        fused: bool | None,
        distributed: str = "replicated",
        process_group: Any = None,
    ) -> None:
        if (
            isinstance(num_particles, bool)
            or not isinstance(num_particles, int)
            or num_particles < 1
        ):
            raise ValueError(f"num_particles must be a positive int, got {num_particles!r}")
        _check_number("forget", forget, high=1.0)
        _check_number("ema_beta", ema_beta, high=1.0)
        if ema_beta >= 1.0:
            raise ValueError(f"invalid ema_beta: {ema_beta!r}, expected a value in [0, 1)")
        _check_number("tol", tol)
        for name, value in (("patience", patience), ("lr_patience", lr_patience)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        _check_number("lr_factor", lr_factor, high=1.0, low_open=True)
        _check_number("min_lr_scale", min_lr_scale, high=1.0, low_open=True)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        if fused not in (None, True, False):
            raise ValueError(f"fused must be None, True or False, got {fused!r}")
        mode = distributed_.check_mode(distributed)
        if mode == "sharded" and fused:
            raise ValueError(
                "fused=True cannot be combined with distributed='sharded': the fused kernel's "
                "counter-based randoms depend on a particle's row in its tensor, which "
                "sharding changes; use fused=None or fused=False"
            )
        defaults = _merge_aliases(defaults, "the defaults")
        for key, value in defaults.items():
            self._validate_value(key, value)
        self._members: set[int] | None = None
        super().__init__(params, defaults)
        if not self._trainable():
            raise ValueError(
                "no parameter has requires_grad=True: a swarm needs at least one trainable "
                "parameter (unfreeze some, or pass only the trainable ones)"
            )
        self.num_particles = num_particles
        self.forget = float(forget)
        self.adaptive = bool(adaptive)
        self.ema_beta = float(ema_beta)
        self.tol = float(tol)
        self.patience = patience
        self.lr_patience = lr_patience
        self.lr_factor = float(lr_factor)
        self.min_lr_scale = float(min_lr_scale)
        self.seed = seed
        self.fused = fused
        self._random: SwarmRandom | None = None
        #: ``distributed="sharded"``: this rank holds particles ``_rows`` (all of them otherwise)
        self._sharded = mode == "sharded"
        self.distributed = mode
        self._rows = range(num_particles)
        #: sharded: the global best's gradient, sent with its weights (for p.grad)
        self._gbest_grad: list[Tensor] | None = None
        devices = {p.device for p in self._trainable()}
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
        if fused and not kernels.supports_device(self._device()):
            raise ValueError(
                f"fused=True needs CUDA parameters, but they are on {self._device()}; "
                "use fused=None (the default) or fused=False"
            )
        # distributed: None unless a process group of >1 ranks is initialized (zero cost then)
        self._comm = distributed_.SwarmComm.resolve(process_group, mode)
        if self._comm is not None:
            # distributed: same model/N everywhere; rank 0's weights and seed on every rank
            params = self._trainable()
            self._comm.check_config(params=params, num_particles=num_particles)
            if self.seed is None:
                self.seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
            self.seed = self._comm.agree_start(params, self.seed)
            if self._sharded:
                self._rows = range(*self._comm.bounds[self._comm.rank])

    # ----------------------------------------------------------------- validation
    def _validate_value(self, key: str, value: Any) -> None:
        if key == "max_velocity":
            _check_number(key, value, low=0.0, low_open=True, allow_none=True)
        elif key in ("lr", "inertia", "momentum", "cognitive", "social", "init_spread"):
            _check_number(key, value)

    def _validate_groups(self, groups: list[dict[str, Any]], where: str) -> None:
        """Every known hyperparameter of ``groups`` valid, ``inertia``/``momentum`` agreeing."""
        for k, group in enumerate(groups):
            _merge_aliases(group, f"{where} {k}")
            for key, value in group.items():
                if key != "params":
                    self._validate_value(key, value)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        param_group = _merge_aliases(param_group, f"param group {len(self.param_groups)}")
        for key, value in param_group.items():
            if key != "params":
                self._validate_value(key, value)
        if getattr(self, "_random", None) is not None or _SWARM in self.state:
            raise RuntimeError(
                "cannot add a param group after the swarm was created: every particle must "
                "cover the same parameters from the first step on"
            )
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        param_group = {**param_group, "params": params}
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for i, p in enumerate(params):
            if id(p) in seen:
                raise ValueError(
                    f"parameter {i} of param group {len(self.param_groups)} (shape "
                    f"{tuple(p.shape)}) appears more than once in the optimizer: each "
                    "parameter must be given once, or it would move several times per step"
                )
            seen.add(id(p))
        super().add_param_group(param_group)
        self.param_groups[-1] = _ParamGroup(self.param_groups[-1])

    # ------------------------------------------------------------------ helpers
    def _trainable(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in self._group_trainable(g)]

    def _group_trainable(self, group: dict[str, Any]) -> list[Tensor]:
        """The group's swarm parameters: fixed when the swarm is created (freezing a layer
        later must not reshape the swarm), ``requires_grad`` ones before that."""
        if self._members is not None:
            return [p for p in group["params"] if id(p) in self._members]
        return [p for p in group["params"] if p.requires_grad]

    def _device(self) -> torch.device:
        params = self._trainable()
        return params[0].device if params else torch.device("cpu")

    def _all(self, key: str) -> list[Tensor]:
        return [self.state[p][key] for p in self._trainable()]

    @property
    def random(self) -> SwarmRandom:
        """The swarm's own random stream (initial scatter, ``r1``, ``r2``, re-seeding): one
        for the whole swarm, or one per particle when ``distributed="sharded"``."""
        if self._random is None:
            seed = self.seed
            if seed is None:  # follow torch.manual_seed, like torch's own initialisers
                seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
            if self._sharded:
                self._random = ParticleRandom(self._device(), seed, self._rows)
            else:
                self._random = SwarmRandom(self._device(), seed)
        return self._random

    @property
    def swarm(self) -> dict[str, Any]:
        """Swarm-wide state (creates the swarm on first use)."""
        self._init_swarm()
        return self.state[_SWARM]

    def _init_swarm(self) -> None:
        if _SWARM in self.state:
            return
        rng = self.random
        n = self.num_particles
        self._members = {id(p) for p in self._trainable()}
        try:
            self._allocate_swarm(rng, self._rows)
        except (RuntimeError, MemoryError) as error:
            for p in self._trainable():
                self.state.pop(p, None)
            self._members = None
            if isinstance(error, RuntimeError) and "memory" not in str(error).lower():
                raise
            raise RuntimeError(self._out_of_memory_message(len(self._rows))) from error
        self.state[_SWARM] = {
            "step": 0,
            "pbest_losses": torch.full((n,), math.inf, device=self._device()),
            "gbest_index": 0,
            **_SWARM_DEFAULTS,
            "kernel_seed": rng.integer(),
        }
        if self._sharded:
            self.state[_SWARM]["shard"] = self._shard_info()
        self._reset_buffer_tracking(from_checkpoint=False)

    def _shard_info(self) -> dict[str, int]:
        """Which slice of the swarm this rank holds (sharded mode), as saved in checkpoints."""
        comm = self._comm
        return {
            "world_size": 1 if comm is None else comm.world_size,
            "rank": 0 if comm is None else comm.rank,
            "start": self._rows.start,
            "stop": self._rows.stop,
        }

    def _keeps_pbest(self) -> bool:
        """Whether personal bests are stored: only with memory across batches (``forget < 1``);
        with ``forget = 1`` a personal best is the position the particle was scored at."""
        return self.forget < 1.0

    def _out_of_memory_message(self, n: int) -> str:
        """``n``: the particles this process holds (all ``N`` unless sharded)."""
        params = self._trainable()
        count = sum(p.numel() for p in params)
        per_copy = sum(p.numel() * p.element_size() for p in params)
        copies = 3 * n + 1 if self._keeps_pbest() else 2 * n + 1
        need = copies * per_copy
        what = "positions, velocities" + (", personal bests" if self._keeps_pbest() else "")
        return (
            f"cannot allocate a swarm of num_particles={n} for a model of {count} parameters "
            f"({len(params)} tensors, {per_copy} bytes): its {what} and global best "
            f"({copies} copies of the model) need {need} bytes ({need / 2**30:.2f} GiB) on "
            f"{self._device()}, and a step needs about 4 more per particle for gradients "
            "and temporaries; lower num_particles"
        )

    def _allocate_swarm(self, rng: SwarmRandom, rows: range) -> None:
        """Per-parameter state: ``position``, ``velocity`` (and ``pbest`` when
        ``forget < 1``) of shape ``(M, *S)`` for the ``M`` particles of ``rows`` (all ``N``
        unless sharded), ``gbest`` of shape ``S``."""
        n = len(rows)
        first = 1 if rows.start == 0 else 0  # particle 0 is the model as given
        scattered = rows[first:]
        with torch.no_grad():
            for group in self.param_groups:
                for p in self._group_trainable(group):
                    if p.is_sparse:
                        raise RuntimeError("HGPSO does not support sparse parameters")
                    position = p.detach().unsqueeze(0).repeat((n,) + (1,) * p.dim())
                    # the others scatter around it
                    noise = rng.normal((n - first, *p.shape), p.dtype, rows=scattered)
                    F.perturb_([position[first:]], [p.detach()], group["init_spread"], [noise])
                    self.state[p] = {
                        "position": position,
                        "velocity": torch.zeros_like(position),
                        "gbest": p.detach().clone(),  # particle 0, the model as given
                    }
                    if self._keeps_pbest():
                        self.state[p]["pbest"] = position.clone()

    # -------------------------------------------------------------- public views
    @property
    def stalled(self) -> bool:
        """True when the smoothed best loss has not improved by more than ``tol``
        (relative) for ``patience`` consecutive steps: a loop may stop early."""
        if _SWARM not in self.state:
            return False
        return self.state[_SWARM]["steps_since_improvement"] >= self.patience

    def gbest(self) -> list[Tensor]:
        """The global best position, one tensor per trainable parameter (the swarm's own
        copies: read them, do not modify them)."""
        self._init_swarm()
        return self._all("gbest")

    def effective_hyperparameters(self, group: dict[str, Any] | int = 0) -> dict[str, float]:
        """``lr``, ``inertia``, ``cognitive``, ``social`` as the next step will use them
        (the group's values after adaptation)."""
        if isinstance(group, int):
            group = self.param_groups[group]
        swarm = self.swarm
        w, c1, c2 = group["inertia"], group["cognitive"], group["social"]
        lr = group.get("lr", 0.0)
        if self.adaptive:
            w, c1, c2 = F.success_adaptive_coefficients(
                swarm["success_rate"], inertia=w, cognitive=c1, social=c2
            )
            lr = lr * swarm["lr_scale"]
        return {"lr": lr, "inertia": w, "cognitive": c1, "social": c2}

    def swarm_stats(self) -> dict[str, float]:
        """Numbers worth logging: best and smoothed losses, adaptation, NaN re-seeds."""
        s = self.swarm
        return {
            "step": float(s["step"]),
            "gbest_loss": float(s["gbest_loss"]),
            "loss_ema": float("nan") if s["loss_ema"] is None else float(s["loss_ema"]),
            "success_rate": float(s["success_rate"]),
            "lr_scale": float(s["lr_scale"]),
            "nan_reseeds": float(s["nan_reseeds"]),
            "evaluations": float(s["evaluations"]),
            "steps_since_improvement": float(s["steps_since_improvement"]),
        }

    # ------------------------------------------------------------------ the step
    def _write_gbest_into_params(self) -> None:
        """The model takes the global best's weights and its per-particle buffers."""
        for p, g in zip(self._trainable(), self.gbest(), strict=True):
            p.copy_(g)
        slots = self.__dict__.get("_buffer_slots")
        if slots:
            gbest_buffers = self.state[_SWARM]["gbest_buffers"]
            for (name, _, _), b in zip(slots, resolve([(m, k) for _, m, k in slots]), strict=True):
                b.copy_(gbest_buffers[name])

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Tensor:  # type: ignore[override]
        """Score every particle with ``closure``, update bests and move the swarm.

        Args:
            closure: re-evaluates the model and returns the loss. For :class:`HGPSO` it must
                also call ``backward()`` (a standard closure: ``zero_grad``, forward,
                ``backward``, ``return loss``); it is called once per particle, with that
                particle's weights loaded into the model. Or a
                :func:`hgpso.vectorized_closure`, which scores all particles in one call.

        Returns:
            The lowest loss any particle reached on this step's batch.

        Raises:
            RuntimeError: a parameter of the swarm was frozen (``requires_grad=False``) after
                the swarm was created. The swarm's parameters are fixed at its first step, so
                a later freeze is refused (nothing changes) rather than keep moving the
                frozen parameter; unfreeze it, or create a new optimizer.

        Whatever the closure or the update raises, the step is all or nothing: the swarm's
        state is left as it was and the model back on the global best.

        After the step the model's parameters hold the swarm's global best, and ``p.grad``
        its gradient on this batch (``None`` when the global best was not scored on it).
        """
        closure = self._enter_step(closure)
        if closure is None:
            raise RuntimeError(
                f"{type(self).__name__}.step() needs a closure: a swarm scores N candidate "
                "weight sets per step, so it must be able to re-evaluate the loss for each. "
                "Pass `optimizer.step(closure)` (or `hgpso.vectorized_closure(...)`)."
            )
        self._init_swarm()
        self._check_members()
        params = self._trainable()
        if not params:
            return torch.tensor(math.nan)
        swarm = self.state[_SWARM]
        request = self._evaluation_request(params)
        try:
            losses, grads = evaluate_particles(closure, request)
            if losses.shape != (len(self._rows),):
                raise ValueError(
                    f"expected {len(self._rows)} particle losses, got shape {tuple(losses.shape)}"
                )
            if self._sharded:
                # the NaN guard on this rank's own particles, whose gradients no other rank
                # sees: an invalid particle's loss is sent as NaN, so all ranks agree on it
                valid = self._valid_particles(losses, grads)
                losses = torch.where(valid, losses, math.nan)
        except BaseException as error:
            # the model goes back to the last good global best; the swarm is untouched
            self._write_gbest_into_params()
            if self._comm is not None:  # distributed: tell the other ranks, then re-raise
                self._comm.report_failure(error)
            raise
        if self._comm is not None:
            # distributed: losses (and gradients) averaged over ranks; raises if a peer failed
            try:
                losses, grads = self._comm.exchange(
                    losses, grads, fingerprint=request.batch_fingerprint
                )
            except BaseException:
                self._write_gbest_into_params()
                raise
        # the bookkeeping and the move are prepared out of place and committed by swapping
        # references (see _advance): a failure leaves every state tensor untouched. The
        # swarm-wide numbers that _adapt updates and the random stream are restored from
        # these cheap copies, and the model goes back on the global best.
        saved = dict(swarm)
        saved_rng = self.random.get_state()
        try:
            self._advance(losses, grads)
        except BaseException:
            swarm.clear()
            swarm.update(saved)
            self.random.set_state(saved_rng)
            self._write_gbest_into_params()
            raise
        self._write_gbest_into_params()
        swarm["evaluations"] += self.num_particles
        self._leave_gbest_grad(losses, grads)
        finite = losses[torch.isfinite(losses)]
        return finite.min() if finite.numel() else losses.min()

    # ------------------------------------------ step entry and exit (AMP, accumulation, grads)
    @property
    def _step_supports_amp_scaling(self) -> bool:
        """True outside a step, so that ``torch.amp.GradScaler.step`` hands its scale to
        :meth:`step` (which refuses it, see :meth:`_refuse_grad_scaler`) instead of
        unscaling and stepping silently; False while particles are scored, so that
        Lightning's precision plugins keep clipping each particle's gradients."""
        return active_request() is None

    def _enter_step(self, closure: Callable[[], Any] | None) -> Callable[[], Any] | None:
        """Checks made before anything moves; returns the closure to score particles with.

        Refuses fp16 gradient scaling and gradients accumulated outside the step, checks
        the groups' hyperparameters (a scheduler or callback may have written them), and
        wraps the closure so that the gradients it leaves are known as the step's own.
        """
        self._refuse_grad_scaler()
        self._validate_groups(self.param_groups, "param group")
        params = self._trainable()
        self._refuse_accumulated_grads(params)
        if closure is None:
            return None

        # an autocast region around the step would reuse its cached low-precision copy of
        # a weight for every particle (the cache is keyed on the parameter, whose values
        # change between particles): no caching while particles are scored
        torch.clear_autocast_cache()

        def scored() -> Any:
            cache = torch.is_autocast_cache_enabled()
            torch.set_autocast_cache_enabled(False)
            try:
                return closure()
            finally:
                torch.set_autocast_cache_enabled(cache)
                _mark_grads(params)

        if not self._sharded or self._comm is None:
            return scored
        first = [True]

        def scored_refusing_ddp() -> Any:
            # sharded: a DDP model would average the gradients of different particles (and
            # deadlock when ranks hold different numbers of them): refuse it at its first
            # forward pass of the step, before DDP communicates
            if not first[0]:
                return scored()
            first[0] = False
            hook = torch.nn.modules.module.register_module_forward_pre_hook(_refuse_ddp)
            try:
                return scored()
            finally:
                hook.remove()

        return scored_refusing_ddp

    def _refuse_grad_scaler(self) -> None:
        """``torch.amp.GradScaler.step`` (plain PyTorch, or Lightning's ``16-mixed``)
        sets ``grad_scale`` and ``found_inf`` on the optimizer before calling :meth:`step`
        (see :attr:`_step_supports_amp_scaling`): refuse, naming bfloat16."""
        if getattr(self, "grad_scale", None) is None and getattr(self, "found_inf", None) is None:
            return
        # the scaler deletes them only after a step that returns: leave no trace
        self.__dict__.pop("grad_scale", None)
        self.__dict__.pop("found_inf", None)
        raise RuntimeError(
            f"{type(self).__name__} does not support fp16 gradient scaling "
            "(torch.amp.GradScaler, Lightning precision='16-mixed'): every particle is scored "
            "by its own closure call, which GradScaler.step cannot drive (Lightning's 16-mixed "
            "even calls step() without a closure), and an overflow cannot be reported back "
            "to the scaler. Use bfloat16 mixed precision, which needs no scaler: "
            "torch.autocast(device_type, dtype=torch.bfloat16) inside the closure, or "
            "Lightning precision='bf16-mixed'. Nothing was changed."
        )

    def _refuse_accumulated_grads(self, params: list[Tensor]) -> None:
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
                f"backward() outside {type(self).__name__}.step() accumulated. A swarm scores "
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

    def _leave_gbest_grad(self, losses: Tensor, grads: list[Tensor] | None) -> None:
        """After a successful step, ``p.grad`` is the global best's gradient on this step's
        batch: row ``gbest_index`` of the particles' gradients, when the global best is a
        position scored in this step. Otherwise (:class:`~hgpso.PSO`, which collects no
        gradients; no finite particle; with ``forget < 1`` a best kept from an earlier
        batch) ``p.grad`` is ``None``."""
        if self._sharded:  # the global best's gradient came with its weights, from its owner
            sent = self.__dict__.get("_gbest_grad")
            for k, p in enumerate(self._trainable()):
                p.grad = None if sent is None else sent[k]
            self._gbest_grad = None
            _mark_grads(self._trainable())
            return
        swarm = self.state[_SWARM]
        b = swarm["gbest_index"]
        scored = grads is not None and float(losses[b]) == swarm["gbest_loss"]
        for k, p in enumerate(self._trainable()):
            if not scored:
                p.grad = None
                continue
            assert grads is not None
            p.grad = grads[k][b].clone()
        _mark_grads(self._trainable())

    def _check_members(self) -> None:
        """The swarm's parameters are fixed when it is created: refuse to step once one of
        them was frozen, rather than keep moving a parameter its owner froze."""
        members = self._members or set()
        frozen = [
            (k, j, p)
            for k, group in enumerate(self.param_groups)
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

    def _use_fused(self) -> bool:
        """Whether the move runs through the fused kernel (one device for all groups)."""
        if self._sharded:
            return False  # its randoms depend on a particle's row, which sharding changes
        device = self._device()
        return self.fused is True or (
            self.fused is None and device.type == "cuda" and kernels.is_available()
        )

    def _advance(self, losses: Tensor, grads: list[Tensor] | None) -> None:
        """Bookkeeping, then the move: prepared into new tensors, then committed.

        Everything is first computed without writing to ``self.state``: validity, the new best
        losses, the one host read, adaptation, the new personal bests (``forget < 1``), the
        new global best, the moved positions and velocities, re-seeded rows. The commit at
        the end only assigns references (and, on the fused path, launches the in-place
        kernels), so a failure before it leaves every state tensor as it was.
        """
        swarm = self.state[_SWARM]
        n = self.num_particles
        losses = losses.to(self._device())
        # sharded: each rank ran the NaN guard on its own particles before the exchange, and
        # sent an invalid particle's loss as NaN
        valid = torch.isfinite(losses) if self._sharded else self._valid_particles(losses, grads)
        improved, pbest_losses = self._score(losses, valid)
        # one host read per step for everything the bookkeeping needs
        stats = [
            valid.sum().float(),
            improved.sum().float(),
            torch.where(valid, losses, math.inf).min(),
            pbest_losses.min(),
            pbest_losses.argmin().float(),
        ]
        # sharded: losses, valid, improved and pbest_losses hold all N particles (the same
        # on every rank); the state tensors only this rank's rows ``mine``
        mine = slice(self._rows.start, self._rows.stop)
        if self._sharded:
            stats += [improved[mine].sum().float(), improved[pbest_losses.argmin()].float()]
        n_valid, n_improved, best_now, gbest_loss, gbest_index, *local = torch.stack(stats).tolist()
        self._adapt(n_improved / n, best_now)
        if self._sharded:
            pbests = self._accept_bests(improved[mine], int(local[0]))
        else:
            pbests = self._accept_bests(improved, int(n_improved))
        gbest_change: tuple[int, bool] | None = None
        self._gbest_grad = None
        if math.isfinite(gbest_loss):
            b = int(gbest_index)
            if self._sharded:
                changed = self._gbest_changed(b, bool(local[1]))
                gbest_change = (b, changed)
                scored = grads is not None and float(losses[b]) == gbest_loss
                gbests = self._sharded_gbest(b, changed, pbests, grads if scored else None)
            else:
                gbests = [pb[b].clone() for pb in pbests]  # one model's worth
        else:  # no particle has a finite best loss: the last global best stays
            gbests = self.gbest()
            gbest_index, gbest_loss = swarm["gbest_index"], swarm["gbest_loss"]
        moved, launches = self._move(gbests, grads, pbests)
        n_bad = n - int(n_valid)
        rows = self._reseed(~valid[mine], gbests) if n_bad else []
        if not launches:  # the moved tensors are new: re-seed them before the commit
            self._write_rows(moved, rows)
        # small: computed and swapped in
        self._advance_buffers(improved, valid, pbest_losses, gbest_change)
        # ---- commit: reference assignments only
        keep = self._keeps_pbest()
        for p, (x, v), pb, g in zip(self._trainable(), moved, pbests, gbests, strict=True):
            st = self.state[p]
            st["position"], st["velocity"], st["gbest"] = x, v, g
            if keep:
                st["pbest"] = pb
            else:
                st.pop("pbest", None)  # forget was raised to 1: the stored bests are unused
        swarm["pbest_losses"] = pbest_losses
        swarm["gbest_index"] = int(gbest_index)
        swarm["gbest_loss"] = gbest_loss
        # the fused kernel updates in place: its launches come last, after every check
        for launch in launches:
            launch()
        if launches:
            self._write_rows(moved, rows)
        swarm["nan_reseeds"] += n_bad
        swarm["step"] += 1

    def _gbest_changed(self, b: int, improved_b: bool) -> bool:
        """Sharded mode: whether the new global best (particle ``b``'s personal best)
        differs from the stored one, so that its owner must send it."""
        swarm = self.state[_SWARM]
        return (
            not self._keeps_pbest()  # forget = 1: the bests are the positions just scored
            or not self._has_pbest()
            or improved_b
            or b != swarm["gbest_index"]
            or not math.isfinite(swarm["gbest_loss"])
        )

    def _sharded_gbest(
        self, b: int, changed: bool, pbests: list[Tensor], grads: list[Tensor] | None
    ) -> list[Tensor]:
        """Sharded mode: the new global best's weights on every rank, sent by the rank that
        holds particle ``b`` when they changed (with its gradient when ``grads`` is given,
        kept in ``_gbest_grad`` for :meth:`_leave_gbest_grad`)."""
        if not changed:
            return self.gbest()
        sent = self._row_from_owner(b, [*pbests, *(grads or [])])  # one broadcast
        self._gbest_grad = sent[len(pbests) :] if grads is not None else None
        return sent[: len(pbests)]

    def _row_from_owner(self, b: int, stacks: list[Tensor]) -> list[Tensor]:
        """Sharded mode: row ``b`` (a global particle index) of each of ``stacks`` (this
        rank's rows) on every rank, sent by the rank that holds particle ``b``."""
        if b in self._rows:
            out = [t[b - self._rows.start].clone() for t in stacks]
        else:
            out = [t.new_empty(t.shape[1:]) for t in stacks]
        if self._comm is not None:
            self._comm.broadcast_from(self._comm.owner_of(b), out)
        return out

    def _valid_particles(self, losses: Tensor, grads: list[Tensor] | None) -> Tensor:
        """NaN guard: a particle with a non-finite loss or gradient is never a best; its
        gradient rows are zeroed so its garbage stays out of the arithmetic."""
        valid = torch.isfinite(losses)
        if grads is None:
            return valid
        for g in grads:
            flat = g.reshape(g.shape[0], -1)
            # a NaN/inf element always makes the row sum non-finite; only a row whose
            # finite elements overflow the sum needs the exact (8x dearer) check
            row_ok = torch.isfinite(flat.sum(1))
            if not bool(row_ok.all()):
                row_ok = torch.isfinite(flat).all(1)
            valid &= row_ok
        if not bool(valid.all()):
            for g in grads:
                g.masked_fill_(~valid.view((-1,) + (1,) * (g.dim() - 1)), 0.0)
        return valid

    def _score(self, losses: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        r"""This step's improved mask and new best losses, into temporaries.

        With ``forget < 1`` this is :func:`hgpso.functional.accept_personal_bests_`. With
        ``forget = 1`` (:math:`\phi = 1`) every finite particle improves and its best loss
        becomes its loss on this batch; no personal-best position is stored (it would equal
        the position just scored), so a particle that is not finite has no best on this
        batch: its best loss becomes :math:`+\infty` (with a stored best it would keep a loss
        measured on an earlier batch, which could make its old position the global best).
        If no particle is finite, the global best of the previous step is kept.
        """
        pbest_losses = self.state[_SWARM]["pbest_losses"].clone()
        if self._keeps_pbest() and not self._has_pbest():
            pbest_losses.fill_(math.inf)  # forget lowered below 1: memory starts afresh
        improved = F.accept_personal_bests_([], [], pbest_losses, losses, valid, forget=self.forget)
        if not self._keeps_pbest():
            pbest_losses.masked_fill_(~valid, math.inf)
        return improved, pbest_losses

    def _has_pbest(self) -> bool:
        return all("pbest" in self.state[p] for p in self._trainable())

    def _accept_bests(self, improved: Tensor, count: int) -> list[Tensor]:
        """The personal bests after this step (``pbest_i <- x_i`` for improved particles),
        as new tensors or as the unchanged stored ones; the state is not touched. With
        ``forget = 1`` they are the positions themselves (nothing is stored)."""
        positions = self._all("position")
        if not self._keeps_pbest():
            return positions
        if not self._has_pbest():  # forget lowered below 1: start from the positions
            olds = [x.clone() for x in positions]
        else:
            olds = self._all("pbest")
        if count == 0:  # ``count``: improved.sum(), already read on the host
            return olds
        if count == improved.numel():
            # every particle improved: the scored positions become the bests; they are
            # replaced (not written) by the move, except on the fused path, which writes
            # them in place
            return [x.clone() for x in positions] if self._use_fused() else positions
        out = []
        for x, old in zip(positions, olds, strict=True):
            mask = improved.view((-1,) + (1,) * (x.dim() - 1))
            out.append(torch.where(mask, x, old))
        return out

    def _move(
        self, gbests: list[Tensor], grads: list[Tensor] | None, pbests: list[Tensor]
    ) -> tuple[list[tuple[Tensor, Tensor]], list[Callable[[], None]]]:
        """The velocity and position update, group by group, into new tensors.

        Returns the new ``(position, velocity)`` of every trainable parameter, and the fused
        kernel's deferred launches (empty on the reference path).
        """
        params = self._trainable()
        index = {id(p): k for k, p in enumerate(params)}
        moved: list[tuple[Tensor, Tensor] | None] = [None] * len(params)
        launches: list[Callable[[], None]] = []
        for gi, group in enumerate(self.param_groups):
            trainable = self._group_trainable(group)
            if not trainable:
                continue
            ks = [index[id(p)] for p in trainable]
            hp = self.effective_hyperparameters(group)
            new_x, new_v, launch = self._update_group(
                group_index=gi,
                positions=[self.state[p]["position"] for p in trainable],
                velocities=[self.state[p]["velocity"] for p in trainable],
                pbests=[pbests[k] for k in ks],
                gbests=[gbests[k] for k in ks],
                grads=None if grads is None else [grads[k] for k in ks],
                lr=hp["lr"] if self.uses_gradients else 0.0,
                inertia=hp["inertia"],
                cognitive=hp["cognitive"],
                social=hp["social"],
                max_velocity=group["max_velocity"],
            )
            for k, x, v in zip(ks, new_x, new_v, strict=True):
                moved[k] = (x, v)
            if launch is not None:
                launches.append(launch)
        assert all(m is not None for m in moved)
        return [m for m in moved if m is not None], launches

    def _update_group(
        self,
        *,
        group_index: int,
        positions: list[Tensor],
        velocities: list[Tensor],
        pbests: list[Tensor],
        gbests: list[Tensor],
        grads: list[Tensor] | None,
        lr: float,
        inertia: float,
        cognitive: float,
        social: float,
        max_velocity: float | None,
    ) -> tuple[list[Tensor], list[Tensor], Callable[[], None] | None]:
        """One group's move: ``(new positions, new velocities, deferred launch or None)``.

        Reference path: :func:`hgpso.functional.hgpso_update` into new tensors (``r1``'s
        storage becomes the velocities; one more ``(N, *S)`` scratch per parameter becomes
        the positions), nothing written. Fused path: the kernel updates in place, so every
        input is made ready (contiguous, right dtype) here and the launch is deferred to the
        commit; it then writes the state's own tensors (no copy, which is the point of the
        kernel). Only an error inside the op itself (a CUDA error, after which the CUDA
        context is unusable anyway) could leave one group moved and another not.
        """
        swarm = self.state[_SWARM]
        if self._use_fused():
            xs = [x.contiguous() for x in positions]
            vs = [v.contiguous() for v in velocities]

            def ready(ts: list[Tensor]) -> list[Tensor]:
                return [t.to(x.dtype).contiguous() for t, x in zip(ts, xs, strict=True)]

            ps, gs = ready(pbests), ready(gbests)
            grs = None if grads is None else ready(grads)
            for x in xs:
                if not kernels.supports_device(x.device):
                    raise RuntimeError(
                        f"the fused HG-PSO kernel runs on CUDA tensors only, got {x.device}"
                    )
            offset = swarm["step"] * len(self.param_groups) + group_index
            seed = swarm["kernel_seed"]

            def launch() -> None:
                kernels.fused_hgpso_update_(
                    xs,
                    vs,
                    ps,
                    gs,
                    grs,
                    seed=seed,
                    offset=offset,
                    lr=lr,
                    inertia=inertia,
                    cognitive=cognitive,
                    social=social,
                    max_velocity=max_velocity,
                )

            return xs, vs, launch
        rng = self.random
        r1 = [rng.uniform(x.shape, x.dtype) for x in positions]
        r2 = [rng.uniform(x.shape, x.dtype) for x in positions]
        new_x, new_v = F.hgpso_update(
            positions,
            velocities,
            pbests,
            gbests,
            grads,
            r1,
            r2,
            lr=lr,
            inertia=inertia,
            cognitive=cognitive,
            social=social,
            max_velocity=max_velocity,
        )
        return new_x, new_v, None

    def _reseed(self, bad: Tensor, gbests: list[Tensor]) -> list[tuple[int, Tensor, Tensor]]:
        """Fresh rows near the global best for the non-finite particles, to be written (at
        rest) into the moved tensors: ``(parameter index, particle rows, new positions)``."""
        idx = bad.nonzero().flatten()
        # sharded: each particle's noise from its own stream (rows: global particle indices)
        particles = (idx + self._rows.start).tolist() if self._sharded else None
        rng = self.random
        index = {id(p): i for i, p in enumerate(self._trainable())}
        rows = []
        # one pass in parameter order, so the random stream is deterministic
        for group in self.param_groups:
            for p in self._group_trainable(group):
                k = index[id(p)]
                x = self.state[p]["position"]
                fresh = torch.empty((idx.numel(), *x.shape[1:]), dtype=x.dtype, device=x.device)
                noise = rng.normal(tuple(fresh.shape), fresh.dtype, rows=particles)
                F.perturb_([fresh], [gbests[k]], group["init_spread"], [noise])
                rows.append((k, idx, fresh))
        return rows

    @staticmethod
    def _write_rows(
        moved: list[tuple[Tensor, Tensor]], rows: list[tuple[int, Tensor, Tensor]]
    ) -> None:
        for k, idx, fresh in rows:
            x, v = moved[k]
            x[idx] = fresh
            v[idx] = 0.0

    # ------------------------------------------------------- per-particle buffers
    # (layout in the module docstring; how they are found: hgpso/evaluate/buffers.py). The
    # dicts are replaced at every step, never written in place, so a failed step's restore
    # of state["swarm"] restores them too.
    def _reset_buffer_tracking(self, *, from_checkpoint: bool) -> None:
        """Forget which model buffers are per particle: the next step finds them again
        (strictly matched to the saved ones after a ``load_state_dict``)."""
        #: ``(name, module, key)`` of every per-particle buffer; ``None``: not known yet
        self._buffer_slots: list[tuple[str, torch.nn.Module, str]] | None = None
        #: running-statistics norm layers whose buffers did not change (``eval()`` mode)
        self._dormant_norms: list[torch.nn.Module] = []
        self._buffers_from_checkpoint = from_checkpoint
        self._inflight: EvaluationRequest | None = None

    def _evaluation_request(self, params: list[Tensor]) -> EvaluationRequest:
        """This step's request: positions, and the per-particle buffers (or, before they
        are known, how to bind them)."""
        swarm = self.state[_SWARM]
        request = EvaluationRequest(params, self._all("position"), self.uses_gradients)
        # sharded: a vectorized closure reports its batch, which the ranks compare
        request.want_fingerprint = self._sharded and self._comm is not None
        if "_buffer_slots" not in self.__dict__:  # unpickled from an older version
            self._reset_buffer_tracking(from_checkpoint="buffers" in swarm)
        slots = self._buffer_slots
        if slots is not None and any(m.training for m in self._dormant_norms):
            slots = self._buffer_slots = None  # a norm layer began training: watch again
        if slots is None:
            request.bind_buffers = self._bind_buffers
            request.saved_buffers = dict(swarm.get("buffers") or {})
        elif slots:
            request.buffer_targets = list(resolve([(m, k) for _, m, k in slots]))
            request.buffers = [swarm["buffers"][name] for name, _, _ in slots]
        self._inflight = request
        return request

    def _bind_buffers(self, watch: BufferWatch) -> list[Tensor]:
        """Take the buffers ``watch`` saw change as the per-particle buffers; return their
        rows. New ones start, for every particle, from the value they held before the pass;
        saved ones (a checkpoint, or an earlier binding) keep their rows, and after
        ``load_state_dict`` the two sets must match, shape and dtype included."""
        swarm = self.state[_SWARM]
        n = len(self._rows)  # this rank's particles (all N unless sharded)
        found = watch.found()
        saved = swarm.get("buffers") or {}
        names = [f.name for f in found]
        if self._buffers_from_checkpoint:
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
        keep = self._keeps_pbest()
        rows, gbests, pbests = {}, {}, {}
        old_g = swarm.get("gbest_buffers") or {}
        old_p = swarm.get("pbest_buffers") or {}
        for f in found:
            target = f.module._buffers[f.key]
            assert target is not None
            if f.name in saved:
                what = f"per-particle buffer {f.name!r}"
                _check_buffer(what, saved[f.name], (n, *target.shape), target.dtype)
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
        self._buffer_slots = [(f.name, f.module, f.key) for f in found]
        tracked = {id(f.module) for f in found}
        norms = running_stat_modules(watch.modules)
        self._dormant_norms = [m for m in norms if id(m) not in tracked]
        self._buffers_from_checkpoint = False
        return [rows[name] for name in names]

    def _advance_buffers(
        self,
        improved: Tensor,
        valid: Tensor,
        pbest_losses: Tensor,
        gbest_change: tuple[int, bool] | None = None,
    ) -> None:
        r"""The per-particle buffers after this step, swapped into the swarm state.

        Particle :math:`i`'s buffers become those its forward pass left; a personal best
        keeps the buffers of its position (``forget < 1``); the global best's are those of
        :math:`\arg\min_i \hat f_i` (unchanged when no particle is finite); a re-seeded
        particle takes the global best's. Under ``distributed="replicated"`` each rank's
        floating buffers saw only its shard of the batch: they are averaged over ranks first
        (one all-reduce of :math:`N` times the buffers), so the replicas stay identical.
        All on the device, no host read; nothing at all for a model without such buffers.
        Under ``distributed="sharded"`` (``improved``, ``valid``, ``pbest_losses`` of all
        :math:`N` particles, the buffers of this rank's) the global best's buffers come from
        the rank holding particle :math:`b`, when ``gbest_change = (b, changed)`` says they
        changed (``None``: no particle is finite).
        """
        request, self._inflight = self._inflight, None
        slots = self._buffer_slots
        if not slots or request is None or request.new_buffers is None:
            return
        swarm = self.state[_SWARM]
        new = list(request.new_buffers)
        if self._sharded:
            mine = slice(self._rows.start, self._rows.stop)
            improved, valid = improved[mine], valid[mine]
        elif self._comm is not None:
            self._comm.average_([t for t in new if t.is_floating_point()])
        any_finite = torch.isfinite(pbest_losses).any()
        best = pbest_losses.argmin().view(1)
        keep = self._keeps_pbest()
        old_p = swarm.get("pbest_buffers") or {}
        rows_out, pbest_out, gbest_out = {}, {}, {}
        all_best_rows = []
        for (name, _, _), rows, before in zip(slots, new, request.buffers, strict=True):
            shape = (-1,) + (1,) * (rows.dim() - 1)
            best_rows = rows
            if keep:
                mask = improved.to(rows.device).view(shape)
                best_rows = torch.where(mask, rows, old_p.get(name, before))
                pbest_out[name] = best_rows
            all_best_rows.append(best_rows)
        sent = self._sharded_gbest_buffers(all_best_rows, gbest_change) if self._sharded else None
        for k, ((name, _, _), rows) in enumerate(zip(slots, new, strict=True)):
            shape = (-1,) + (1,) * (rows.dim() - 1)
            if sent is not None:
                gbest = sent[k]
            else:
                gbest = all_best_rows[k].index_select(0, best.to(rows.device))[0]
                old = swarm["gbest_buffers"][name]
                gbest = torch.where(any_finite.to(rows.device), gbest, old)
            bad = (~valid).to(rows.device).view(shape)
            rows_out[name] = torch.where(bad, gbest, rows)
            gbest_out[name] = gbest
        swarm["buffers"], swarm["gbest_buffers"] = rows_out, gbest_out
        if keep:
            swarm["pbest_buffers"] = pbest_out
        else:
            swarm.pop("pbest_buffers", None)

    def _sharded_gbest_buffers(
        self, best_rows: list[Tensor], gbest_change: tuple[int, bool] | None
    ) -> list[Tensor]:
        """Sharded mode: the global best's buffers on every rank, in ``_buffer_slots``
        order; sent by the rank holding particle ``b`` when they changed."""
        old = self.state[_SWARM]["gbest_buffers"]
        slots = self._buffer_slots or []
        if gbest_change is None or not gbest_change[1]:
            return [old[name] for name, _, _ in slots]
        return self._row_from_owner(gbest_change[0], best_rows)

    def _adapt(self, success: float, best_now: float) -> None:
        r"""Smoothed progress signals: success rate, loss EMA, stall counter, lr scale."""
        swarm = self.state[_SWARM]
        beta = self.ema_beta
        swarm["success_rate"] = beta * swarm["success_rate"] + (1 - beta) * success
        if not math.isfinite(best_now):
            swarm["steps_since_improvement"] += 1
            return
        ema = swarm["loss_ema"]
        ema = best_now if ema is None else beta * ema + (1 - beta) * best_now
        swarm["loss_ema"] = ema
        best = swarm["best_loss_ema"]
        if ema < best - self.tol * abs(best) or not math.isfinite(best):
            swarm["best_loss_ema"] = ema
            swarm["steps_since_improvement"] = 0
            return
        swarm["steps_since_improvement"] += 1
        if self.adaptive and swarm["steps_since_improvement"] % self.lr_patience == 0:
            swarm["lr_scale"] = max(swarm["lr_scale"] * self.lr_factor, self.min_lr_scale)

    # --------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        if _SWARM in self.state:
            self.state[_SWARM]["rng_state"] = self.random.get_state()
        sd = super().state_dict()
        if _SWARM in sd["state"]:  # a snapshot, not the live dict the next step mutates
            sd["state"][_SWARM] = copy.deepcopy(sd["state"][_SWARM])
        # swarm-wide options travel with the state, like the groups' hyperparameters
        sd[_OPTIONS] = {key: getattr(self, key) for key in _OPTION_KEYS}
        return sd

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # optimizers pickled by older versions lack these attributes
        self.__dict__.setdefault("_members", None)
        self.__dict__.setdefault("_sharded", False)
        # (torch pickles only defaults, state and param_groups: num_particles may be absent)
        self.__dict__.setdefault("_rows", range(self.__dict__.get("num_particles", 0)))
        self.__dict__.setdefault("_gbest_grad", None)
        self.__dict__.setdefault("distributed", "replicated")
        self._wrap_param_groups()
        if "_buffer_slots" not in self.__dict__:
            swarm = self.state[_SWARM] if _SWARM in self.state else {}
            self._reset_buffer_tracking(from_checkpoint="buffers" in swarm)

    def _validate_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Check every entry against this optimizer before anything is loaded."""
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= state_dict.keys():
            raise ValueError("a state_dict must hold 'state' and 'param_groups'")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"the state_dict has {len(saved_groups)} param groups, this optimizer "
                f"{len(self.param_groups)}"
            )
        state = state_dict["state"]
        swarm = state.get(_SWARM)
        n = self.num_particles
        if swarm is not None:
            if not isinstance(swarm, dict):
                raise ValueError(f"state['swarm'] must be a dict, got {type(swarm).__name__}")
            pl = swarm.get("pbest_losses")
            if not isinstance(pl, Tensor) or pl.dim() != 1:
                raise ValueError("state['swarm']['pbest_losses'] must be a 1-d tensor")
            if pl.device.type == "meta" or not pl.is_floating_point():
                raise ValueError(
                    f"state['swarm']['pbest_losses'] must be a floating tensor with data, got "
                    f"a {pl.dtype} tensor on {pl.device}"
                )
            if pl.numel() != n:
                raise ValueError(
                    f"the state_dict holds a swarm of {pl.numel()} particles but this "
                    f"optimizer was built with num_particles={n}"
                )
            self._validate_shard(swarm.get("shard"))
            for key in (
                "step",
                "gbest_index",
                "steps_since_improvement",
                "nan_reseeds",
                "evaluations",
                "kernel_seed",
            ):
                if key not in swarm and key not in ("step", "gbest_index"):
                    continue  # older checkpoints: filled with defaults on load
                value = swarm.get(key)
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(
                        f"state['swarm'][{key!r}] must be a non-negative int, got {value!r}"
                    )
            if swarm["gbest_index"] >= n:
                raise ValueError(
                    f"state['swarm']['gbest_index']={swarm['gbest_index']} is out of range "
                    f"for num_particles={n}"
                )
            for key in ("gbest_loss", "success_rate", "best_loss_ema", "lr_scale"):
                if key not in swarm:
                    continue
                value = swarm[key]
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"state['swarm'][{key!r}] must be a number, got {value!r}")
            ema = swarm.get("loss_ema")
            if ema is not None and (isinstance(ema, bool) or not isinstance(ema, (int, float))):
                raise ValueError("state['swarm']['loss_ema'] must be a number or None")
            self._validate_buffer_state(swarm)
        for k, (group, saved) in enumerate(zip(self.param_groups, saved_groups, strict=True)):
            ids = saved.get("params", [])
            if len(ids) != len(group["params"]):
                raise ValueError(
                    f"param group {k} of the state_dict has {len(ids)} parameters, this "
                    f"optimizer's {len(group['params'])}"
                )
            for j, (pid, p) in enumerate(zip(ids, group["params"], strict=True)):
                entry = state.get(pid)
                where = f"parameter {j} of param group {k} (shape {tuple(p.shape)})"
                if swarm is None or not p.requires_grad:
                    continue
                if not isinstance(entry, dict):
                    raise ValueError(f"the state_dict has no swarm state for {where}")
                if "gbest" not in entry and "pbest" not in entry:
                    raise ValueError(
                        f"the state_dict lacks 'gbest' for {where} (and has no 'pbest' to "
                        "take it from)"
                    )
                # pbest: only saved with forget < 1; gbest: absent in older checkpoints
                m = len(self._rows)  # this rank's particles (all N unless sharded)
                for key, shape in (
                    ("position", (m, *p.shape)),
                    ("velocity", (m, *p.shape)),
                    ("pbest", (m, *p.shape)),
                    ("gbest", tuple(p.shape)),
                ):
                    if key not in entry and key in ("pbest", "gbest"):
                        continue
                    self._validate_state_tensor(entry.get(key), key, where, shape, p)

    def _validate_shard(self, saved: Any) -> None:
        """A sharded swarm loads only the shard it holds itself: saved by the same rank of
        the same number of ranks (resharding is not supported); an unsharded swarm loads
        no shard."""
        if not self._sharded:
            if saved is not None:
                raise ValueError(
                    "the state_dict holds one rank's shard of a swarm sharded over "
                    f"{saved.get('world_size')} ranks (distributed='sharded'), but this "
                    f"optimizer is distributed={self.distributed!r}: build it with "
                    "distributed='sharded' on as many ranks"
                )
            return
        mine = self._shard_info()
        if not isinstance(saved, dict):
            raise ValueError(
                "this optimizer is distributed='sharded', but the state_dict holds an "
                "unsharded swarm (saved with distributed='replicated' or 'independent', whose "
                "random streams differ): load it into an optimizer of the mode it was saved with"
            )
        if saved.get("world_size") != mine["world_size"]:
            raise ValueError(
                f"the state_dict holds rank {saved.get('rank')}'s shard of a swarm sharded "
                f"over {saved.get('world_size')} ranks, but this optimizer is sharded over "
                f"{mine['world_size']} ranks: resume on {saved.get('world_size')} ranks "
                "(resharding a checkpoint to another world size is not supported)"
            )
        if [saved.get("start"), saved.get("stop")] != [mine["start"], mine["stop"]]:
            raise ValueError(
                f"the state_dict holds rank {saved.get('rank')}'s shard (particles "
                f"{saved.get('start')} to {saved.get('stop')}), but this is rank {mine['rank']} "
                f"(particles {mine['start']} to {mine['stop']}): every rank loads the state_dict "
                "its own rank saved"
            )

    @staticmethod
    def _validate_state_tensor(
        t: Any, key: str, where: str, shape: tuple[int, ...], p: Tensor
    ) -> None:
        if not isinstance(t, Tensor):
            raise ValueError(f"the state_dict lacks {key!r} for {where}")
        if t.device.type == "meta" or t.layout != torch.strided:
            raise ValueError(
                f"{key!r} of {where} holds no usable data (device {t.device.type}, layout "
                f"{t.layout}; a checkpoint saved from a model on the meta device?): swarm "
                "state must be dense tensors with values"
            )
        if tuple(t.shape) != shape:
            raise ValueError(f"{key!r} of {where} has shape {tuple(t.shape)}, expected {shape}")
        if not t.is_floating_point() and not t.is_complex():
            raise ValueError(f"{key!r} of {where} has dtype {t.dtype}, not floating")
        if t.dtype != p.dtype:
            raise ValueError(f"{key!r} of {where} has dtype {t.dtype}, the parameter {p.dtype}")

    def _settle_layout(self) -> None:
        """After loading: ``gbest`` for checkpoints that lack it (the personal best of
        particle ``gbest_index``), and no stored personal bests when ``forget = 1``."""
        i = self.state[_SWARM]["gbest_index"]
        for p in self._trainable():
            st = self.state[p]
            if "gbest" not in st:
                st["gbest"] = st["pbest"][i].clone()
            if not self._keeps_pbest():
                st.pop("pbest", None)

    def _validate_buffer_state(self, swarm: dict[str, Any]) -> None:
        """The per-particle buffers of a state_dict: consistent with each other and with
        ``num_particles`` and, when this optimizer already knows its model's per-particle
        buffers, with those (names, shapes, dtypes). Otherwise they are matched to the
        model's on the next step, before anything changes."""
        n = len(self._rows)  # this rank's particles (all N unless sharded)
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
                held = f"num_particles={n}" if not self._sharded else f"{n} on this rank"
                raise ValueError(
                    f"{what} must be a tensor with one row per particle ({held}), got {got}"
                )
            shape = tuple(t.shape[1:])
            gbest = swarm["gbest_buffers"][name]
            _check_buffer(f"the global best's {what}", gbest, shape, t.dtype)
            if "pbest_buffers" in swarm:
                pbest = swarm["pbest_buffers"][name]
                _check_buffer(f"the personal bests' {what}", pbest, (n, *shape), t.dtype)
        slots = self.__dict__.get("_buffer_slots")
        if slots is None:
            return
        targets = resolve([(m, k) for _, m, k in slots])
        live = dict(zip([name for name, _, _ in slots], targets, strict=True))
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
            _check_buffer(f"per-particle buffer {name!r}", rows[name], (n, *b.shape), b.dtype)

    def _wrap_param_groups(self) -> None:
        """Loaded or unpickled groups become :class:`_ParamGroup` (``momentum`` aliasing
        ``inertia``; older checkpoints lack ``momentum``)."""
        if "inertia" in self.defaults:
            self.defaults.setdefault("momentum", self.defaults["inertia"])
        self.param_groups = [_ParamGroup(g) for g in self.param_groups]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._validate_state_dict(state_dict)
        self._validate_groups(state_dict["param_groups"], "param group")
        options = state_dict.get(_OPTIONS)  # absent in checkpoints from older versions
        if options is not None:
            if not isinstance(options, dict) or not set(options) <= set(_OPTION_KEYS):
                raise ValueError(f"state_dict[{_OPTIONS!r}] must hold only {_OPTION_KEYS}")
            for key, value in options.items():
                if key in ("forget", "ema_beta", "lr_factor", "min_lr_scale"):
                    _check_number(key, value, high=1.0)
                elif key == "tol":
                    _check_number(key, value)
                elif key in ("patience", "lr_patience"):
                    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                        raise ValueError(f"{key} must be a positive int, got {value!r}")
                elif key == "adaptive" and not isinstance(value, bool):
                    raise ValueError(f"adaptive must be a bool, got {value!r}")
                elif key == "seed" and value is not None and not isinstance(value, int):
                    raise ValueError(f"seed must be an int or None, got {value!r}")
        swarm = state_dict["state"].get(_SWARM)
        state_dict = {k: v for k, v in state_dict.items() if k != _OPTIONS}
        super().load_state_dict(state_dict)
        for key, value in (options or {}).items():
            setattr(self, key, value)
        if swarm is None:
            return
        self._members = {id(p) for p in self._trainable()}
        swarm = copy.deepcopy(swarm)
        swarm["pbest_losses"] = swarm["pbest_losses"].to(self._device(), torch.float32)
        for key, default in _SWARM_DEFAULTS.items():  # checkpoints from older versions
            swarm.setdefault(key, default)
        self.state[_SWARM] = swarm
        self._reset_buffer_tracking(from_checkpoint="buffers" in swarm)
        if swarm.get("rng_state") is not None:
            self.random.set_state(swarm["rng_state"])
        self._settle_layout()
