"""The swarm optimizer base: state layout, the step contract, bookkeeping and adaptation.

:class:`~hgpso.optim.HGPSO` and :class:`~hgpso.optim.PSO` differ only in whether the
gradient enters the velocity; everything else (how particles are stored, scored, accepted
as bests, guarded against NaN, adapted and saved) is defined once, here.

State layout (the single definition of it):

``optimizer.state[p]`` for every trainable parameter ``p`` (shape ``S``):
    ``position``, ``velocity``, ``pbest``: tensors of shape ``(N, *S)`` in ``p``'s dtype
    and device; row ``i`` is particle ``i``.
``optimizer.state["swarm"]`` (one per optimizer, since a particle spans all groups):
    ``step`` (int), ``pbest_losses`` (``(N,)`` float32 on the parameters' device),
    ``gbest_index`` (int), ``gbest_loss`` (float), ``rng_state`` (the state of the swarm's
    :class:`~hgpso.optim.random.SwarmRandom`, refreshed by :meth:`state_dict`),
    ``kernel_seed`` (int, for the fused kernel's counter-based randoms), ``success_rate``,
    ``loss_ema``, ``best_loss_ema`` (floats),
    ``steps_since_improvement`` (int), ``lr_scale`` (float), ``nan_reseeds`` (int),
    ``evaluations`` (int: forward passes spent).
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
from hgpso.optim.random import SwarmRandom

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
        self._last_gbest: list[Tensor] | None = None
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

    # ----------------------------------------------------------------- validation
    def _validate_value(self, key: str, value: Any) -> None:
        if key == "max_velocity":
            _check_number(key, value, low=0.0, low_open=True, allow_none=True)
        elif key in ("lr", "inertia", "cognitive", "social", "init_spread"):
            _check_number(key, value)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
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
        """The swarm's own random stream (initial scatter, ``r1``, ``r2``, re-seeding)."""
        if self._random is None:
            seed = self.seed
            if seed is None:  # follow torch.manual_seed, like torch's own initialisers
                seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
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
            self._allocate_swarm(rng, n)
        except (RuntimeError, MemoryError) as error:
            for p in self._trainable():
                self.state.pop(p, None)
            self._members = None
            if isinstance(error, RuntimeError) and "memory" not in str(error).lower():
                raise
            need = 3 * n * sum(p.numel() * p.element_size() for p in self._trainable())
            raise RuntimeError(
                f"cannot allocate a swarm of num_particles={n}: its position, velocity and "
                f"personal-best tensors need {need} bytes ({need / 2**30:.2f} GiB) on "
                f"{self._device()}; lower num_particles"
            ) from error
        self.state[_SWARM] = {
            "step": 0,
            "pbest_losses": torch.full((n,), math.inf, device=self._device()),
            "gbest_index": 0,
            **_SWARM_DEFAULTS,
            "kernel_seed": rng.integer(),
        }

    def _allocate_swarm(self, rng: SwarmRandom, n: int) -> None:
        """Per-parameter state: ``position``, ``velocity``, ``pbest`` of shape ``(N, *S)``."""
        with torch.no_grad():
            for group in self.param_groups:
                for p in self._group_trainable(group):
                    if p.is_sparse:
                        raise RuntimeError("HGPSO does not support sparse parameters")
                    position = p.detach().unsqueeze(0).repeat((n,) + (1,) * p.dim())
                    # particle 0 is the model as given; the others scatter around it
                    noise = rng.normal((n - 1, *p.shape), p.dtype)
                    F.perturb_([position[1:]], [p.detach()], group["init_spread"], [noise])
                    self.state[p] = {
                        "position": position,
                        "velocity": torch.zeros_like(position),
                        "pbest": position.clone(),
                    }

    # -------------------------------------------------------------- public views
    @property
    def stalled(self) -> bool:
        """True when the smoothed best loss has not improved by more than ``tol``
        (relative) for ``patience`` consecutive steps: a loop may stop early."""
        if _SWARM not in self.state:
            return False
        return self.state[_SWARM]["steps_since_improvement"] >= self.patience

    def gbest(self) -> list[Tensor]:
        """The global best position, one tensor per trainable parameter (views)."""
        i = self.swarm["gbest_index"]
        return [x[i] for x in self._all("pbest")]

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
        for p, g in zip(self._trainable(), self.gbest(), strict=True):
            p.copy_(g)

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

        After the step the model's parameters hold the swarm's global best.
        """
        if closure is None:
            raise RuntimeError(
                f"{type(self).__name__}.step() needs a closure: a swarm scores N candidate "
                "weight sets per step, so it must be able to re-evaluate the loss for each. "
                "Pass `optimizer.step(closure)` (or `hgpso.vectorized_closure(...)`)."
            )
        self._init_swarm()
        params = self._trainable()
        if not params:
            return torch.tensor(math.nan)
        swarm = self.state[_SWARM]
        request = EvaluationRequest(params, self._all("position"), self.uses_gradients)
        try:
            losses, grads = evaluate_particles(closure, request)
            if losses.shape != (self.num_particles,):
                raise ValueError(
                    f"expected {self.num_particles} particle losses, got shape "
                    f"{tuple(losses.shape)}"
                )
        except BaseException as error:
            # the model goes back to the last good global best; the swarm is untouched
            self._write_gbest_into_params()
            if self._comm is not None:  # distributed: tell the other ranks, then re-raise
                self._comm.report_failure(error)
            raise
        if self._comm is not None:
            # distributed: losses (and gradients) averaged over ranks; raises if a peer failed
            try:
                losses, grads = self._comm.exchange(losses, grads)
            except BaseException:
                self._write_gbest_into_params()
                raise
        # the bookkeeping runs under the same protection: a failure restores the swarm-wide
        # state and the random stream (cheap copies) and puts the model back on the gbest
        saved = {**swarm, "pbest_losses": swarm["pbest_losses"].clone()}
        saved_rng = self.random.get_state()
        self._last_gbest = None
        try:
            self._advance(losses, grads)
        except BaseException:
            swarm.clear()
            swarm.update(saved)
            self.random.set_state(saved_rng)
            if self._last_gbest is None:  # failed before the commit: the swarm is untouched
                self._write_gbest_into_params()
            else:
                for p, g in zip(self._trainable(), self._last_gbest, strict=True):
                    p.copy_(g)
            raise
        finally:
            self._last_gbest = None
        self._write_gbest_into_params()
        swarm["evaluations"] += self.num_particles
        finite = losses[torch.isfinite(losses)]
        return finite.min() if finite.numel() else losses.min()

    def _advance(self, losses: Tensor, grads: list[Tensor] | None) -> None:
        """Bookkeeping, then the move. Everything that can be computed without touching the
        per-parameter state is computed first (validity, new best losses, the one host read,
        adaptation); the in-place commit comes last."""
        swarm = self.state[_SWARM]
        losses = losses.to(self._device())
        valid = self._valid_particles(losses, grads)
        improved, pbest_losses = self._score(losses, valid)
        # one host read per step for everything the bookkeeping needs
        n_valid, n_improved, best_now, gbest_loss, gbest_index = torch.stack(
            [
                valid.sum().float(),
                improved.sum().float(),
                torch.where(valid, losses, math.inf).min(),
                pbest_losses.min(),
                pbest_losses.argmin().float(),
            ]
        ).tolist()
        self._adapt(n_improved / self.num_particles, best_now)
        # commit: from here on the per-parameter state changes in place; keep the last
        # global best (one model's worth) so a failure can still put the model back on it
        self._last_gbest = [g.clone() for g in self.gbest()]
        self._accept_bests(improved)
        swarm["pbest_losses"].copy_(pbest_losses)
        swarm["gbest_index"] = int(gbest_index)
        swarm["gbest_loss"] = gbest_loss
        gbests = self.gbest()
        self._move(gbests, grads)
        n_bad = self.num_particles - int(n_valid)
        if n_bad:
            self._reseed(~valid, gbests)
            swarm["nan_reseeds"] += n_bad
        swarm["step"] += 1

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
        """This step's improved mask and new best losses, into temporaries."""
        pbest_losses = self.state[_SWARM]["pbest_losses"].clone()
        improved = F.accept_personal_bests_([], [], pbest_losses, losses, valid, forget=self.forget)
        return improved, pbest_losses

    def _accept_bests(self, improved: Tensor) -> None:
        """``pbest_i <- x_i`` for every improved particle, in place."""
        positions, pbests = self._all("position"), self._all("pbest")
        rows = improved.nonzero().flatten()
        if rows.numel() == improved.numel():  # every particle improved: plain copies
            torch._foreach_copy_(pbests, positions)
        elif rows.numel():
            for x, p in zip(positions, pbests, strict=True):
                p.index_copy_(0, rows, x.index_select(0, rows))

    def _move(self, gbests: list[Tensor], grads: list[Tensor] | None) -> None:
        """The velocity and position update, group by group."""
        params = self._trainable()
        g_by_param = dict(zip(map(id, params), gbests, strict=True))
        grad_by_param = dict(zip(map(id, params), grads, strict=True)) if grads else None
        for k, group in enumerate(self.param_groups):
            trainable = self._group_trainable(group)
            if not trainable:
                continue
            hp = self.effective_hyperparameters(group)
            self._update_group(
                group_index=k,
                positions=[self.state[p]["position"] for p in trainable],
                velocities=[self.state[p]["velocity"] for p in trainable],
                pbests=[self.state[p]["pbest"] for p in trainable],
                gbests=[g_by_param[id(p)] for p in trainable],
                grads=None if grad_by_param is None else [grad_by_param[id(p)] for p in trainable],
                lr=hp["lr"] if self.uses_gradients else 0.0,
                inertia=hp["inertia"],
                cognitive=hp["cognitive"],
                social=hp["social"],
                max_velocity=group["max_velocity"],
            )

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
    ) -> None:
        swarm = self.state[_SWARM]
        device = positions[0].device
        use_fused = self.fused is True or (
            self.fused is None and device.type == "cuda" and kernels.is_available()
        )
        if use_fused:
            kernels.fused_hgpso_update_(
                positions,
                velocities,
                pbests,
                gbests,
                grads,
                seed=swarm["kernel_seed"],
                offset=swarm["step"] * len(self.param_groups) + group_index,
                lr=lr,
                inertia=inertia,
                cognitive=cognitive,
                social=social,
                max_velocity=max_velocity,
            )
            return
        rng = self.random
        r1 = [rng.uniform(x.shape, x.dtype) for x in positions]
        r2 = [rng.uniform(x.shape, x.dtype) for x in positions]
        F.hgpso_update_(
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

    def _reseed(self, bad: Tensor, gbests: list[Tensor]) -> None:
        """Put non-finite particles back near the global best, at rest."""
        idx = bad.nonzero().flatten()
        rng = self.random
        index = {id(p): i for i, p in enumerate(self._trainable())}
        # one pass in parameter order, so the random stream is deterministic
        for group in self.param_groups:
            for p in self._group_trainable(group):
                st = self.state[p]
                fresh = torch.empty_like(st["position"][idx])
                noise = rng.normal(tuple(fresh.shape), fresh.dtype)
                F.perturb_([fresh], [gbests[index[id(p)]]], group["init_spread"], [noise])
                st["position"][idx] = fresh
                st["velocity"][idx] = 0.0

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
        self.__dict__.setdefault("_last_gbest", None)
        self.__dict__.setdefault("_members", None)

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
            if pl.numel() != n:
                raise ValueError(
                    f"the state_dict holds a swarm of {pl.numel()} particles but this "
                    f"optimizer was built with num_particles={n}"
                )
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
                for key in ("position", "velocity", "pbest"):
                    t = entry.get(key)
                    if not isinstance(t, Tensor):
                        raise ValueError(f"the state_dict lacks {key!r} for {where}")
                    if tuple(t.shape) != (n, *p.shape):
                        raise ValueError(
                            f"{key!r} of {where} has shape {tuple(t.shape)}, expected "
                            f"{(n, *p.shape)}"
                        )
                    if not t.is_floating_point() and not t.is_complex():
                        raise ValueError(f"{key!r} of {where} has dtype {t.dtype}, not floating")
                    if t.dtype != p.dtype:
                        raise ValueError(
                            f"{key!r} of {where} has dtype {t.dtype}, the parameter {p.dtype}"
                        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._validate_state_dict(state_dict)
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
        if swarm.get("rng_state") is not None:
            self.random.set_state(swarm["rng_state"])
