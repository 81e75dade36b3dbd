"""The swarm optimizer base: the step, orchestrated from the parts of :mod:`hgpso.optim`.

:class:`~hgpso.optim.HGPSO` and :class:`~hgpso.optim.PSO` differ only in whether the
gradient enters the velocity; everything else is defined once, one job per module:

=================================  ========================================================
:mod:`~hgpso.optim.options`        the swarm-wide options (one spec, kept in the state) and
                                   the groups' hyperparameters
:mod:`~hgpso.optim.layout`         the state tensors: what is stored, allocation, fill-in
:mod:`~hgpso.optim.contract`       what a step refuses before anything moves, ``p.grad``
:mod:`~hgpso.optim.bookkeeping`    valid particles, scores, bests, adaptation, re-seeding
:mod:`~hgpso.optim.move`           the velocity and position update (reference or fused)
:mod:`~hgpso.optim.placement`      replicated or sharded particles, behind one interface
:mod:`~hgpso.optim.particle_buffers`  the per-particle buffers (BatchNorm statistics)
:mod:`~hgpso.optim.checkpoint`     loading: validation, older layouts, resharding
=================================  ========================================================

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
from hgpso.evaluate.request import active_request
from hgpso.optim import bookkeeping, checkpoint, contract, layout
from hgpso.optim import move as move_
from hgpso.optim.options import (
    GROUP_KEYS,
    OLD_DEFAULTS,
    OPTIONS_KEY,
    Option,
    ParamGroup,
    check_group,
    check_options,
    merge_aliases,
)
from hgpso.optim.particle_buffers import ParticleBuffers
from hgpso.optim.placement import Placement, Sharded, make_placement
from hgpso.optim.random import SwarmRandom

__all__ = ["SwarmOptimizer"]

_SWARM = layout.SWARM_KEY


def _keeps_buffers(opt: Optimizer) -> bool:
    """Whether the swarm's state holds per-particle buffers (matched on the next step)."""
    return _SWARM in opt.state and "buffers" in opt.state[_SWARM]


class SwarmOptimizer(Optimizer):
    """Common machinery of the particle-swarm optimizers (not used directly)."""

    #: whether the velocity has a gradient term (and so the closure must call backward)
    uses_gradients: bool = True

    # the swarm-wide options, kept in ``state["swarm_options"]`` (see hgpso.optim.options)
    num_particles: Option[int] = Option()
    forget: Option[float] = Option()
    adaptive: Option[bool] = Option()
    ema_beta: Option[float] = Option()
    tol: Option[float] = Option()
    patience: Option[int] = Option()
    lr_patience: Option[int] = Option()
    lr_factor: Option[float] = Option()
    min_lr_scale: Option[float] = Option()
    seed: Option[int | None] = Option()
    fused: Option[bool | None] = Option()
    distributed: Option[str] = Option()

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        defaults: dict[str, Any],
        *,
        process_group: Any = None,
        **options: Any,
    ) -> None:
        options = check_options(options)
        if options["distributed"] == "sharded" and options["fused"]:
            raise ValueError(
                "fused=True cannot be combined with distributed='sharded': the fused kernel's "
                "counter-based randoms depend on a particle's row in its tensor, which "
                "sharding changes; use fused=None or fused=False"
            )
        check_group(defaults, "the defaults")
        defaults = {**defaults, "momentum": defaults["inertia"]}
        self._members: list[Tensor] | None = None
        super().__init__(params, defaults)
        # in ``defaults``, which torch pickles and deep-copies (not in ``state``, which stays
        # empty until the first step, as torch's optimizers keep it)
        self.defaults[OPTIONS_KEY] = options
        if not self._trainable():
            raise ValueError(
                "no parameter has requires_grad=True: a swarm needs at least one trainable "
                "parameter (unfreeze some, or pass only the trainable ones)"
            )
        devices = {p.device for p in self._trainable()}
        if len(devices) > 1:
            raise ValueError(
                f"all parameters must be on one device, got {sorted(map(str, devices))}: "
                "every particle is a full copy of the model kept in one batched swarm"
            )
        if options["fused"] and not kernels.is_available():
            raise RuntimeError(
                "fused=True but the fused HG-PSO kernel is unavailable "
                "(run `python -m hgpso.kernels --build` for details)"
            ) from kernels.load_error()
        if options["fused"] and not kernels.supports_device(self._device()):
            raise ValueError(
                f"fused=True needs CUDA parameters, but they are on {self._device()}; "
                "use fused=None (the default) or fused=False"
            )
        comm = distributed_.SwarmComm.resolve(process_group, options["distributed"])
        if comm is not None:
            # the same model, options and hyperparameters everywhere; rank 0's weights and
            # seed on every rank
            params = self._trainable()
            comm.check_config(
                params=params,
                num_particles=options["num_particles"],
                description=self._description(),
            )
            seed = self.seed
            if seed is None:
                seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
            options["seed"] = comm.agree_start(params, seed)
        self._attach(comm)

    def _attach(self, comm: distributed_.SwarmComm | None) -> None:
        """The runtime parts, which hold no state of their own (rebuilt after unpickling)."""
        self._placement: Placement = make_placement(self.distributed, comm, self.num_particles)
        self._random: SwarmRandom | None = None
        self._buffers = ParticleBuffers(from_checkpoint=_keeps_buffers(self))
        if _SWARM in self.state:
            self._members = [p for p in self._candidates() if p in self.state]
            rng = self.state[_SWARM].get("rng_state")
            if rng is not None:
                self.random.set_state(rng)
        self.register_load_state_dict_pre_hook(checkpoint.prepare_load)
        self.register_load_state_dict_post_hook(SwarmOptimizer._after_load)

    def _description(self) -> dict[str, Any]:
        """Everything the ranks of a distributed swarm must agree on."""
        out: dict[str, Any] = {"optimizer class": type(self).__name__}
        out.update({k: v for k, v in self.defaults[OPTIONS_KEY].items() if k != "seed"})
        for k, group in enumerate(self.param_groups):
            for key in GROUP_KEYS:
                if key in self.defaults:
                    out[f"param group {k} {key}"] = group[key]
        out["parameter shapes"] = [list(p.shape) for p in self._trainable()]
        out["parameter dtypes"] = [str(p.dtype) for p in self._trainable()]
        return out

    # ------------------------------------------------------------------ groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        where = f"param group {len(self.param_groups)}"
        check_group(param_group, where)
        param_group = merge_aliases(param_group, where)
        if getattr(self, "_members", None) is not None or _SWARM in self.state:
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
        group = ParamGroup(self.param_groups[-1])
        group.pop(OPTIONS_KEY, None)  # swarm-wide, not a group value (torch copies defaults)
        self.param_groups[-1] = group

    def _candidates(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _trainable(self) -> list[Tensor]:
        """The swarm's parameters: fixed (and saved) when the swarm is created, so that
        freezing a layer later cannot reshape it; the ``requires_grad`` ones before that."""
        if self._members is not None:
            return self._members
        return [p for p in self._candidates() if p.requires_grad]

    def _group_trainable(self, group: dict[str, Any]) -> list[Tensor]:
        members = {id(p) for p in self._trainable()}
        return [p for p in group["params"] if id(p) in members]

    def _group_slices(self) -> list[tuple[int, dict[str, Any], list[int]]]:
        """``(group index, group, indices of its swarm parameters)`` of every group with any."""
        index = {id(p): k for k, p in enumerate(self._trainable())}
        out = []
        for gi, group in enumerate(self.param_groups):
            ks = [index[id(p)] for p in group["params"] if id(p) in index]
            if ks:
                out.append((gi, group, ks))
        return out

    def _device(self) -> torch.device:
        params = self._trainable()
        return params[0].device if params else torch.device("cpu")

    def _all(self, key: str) -> list[Tensor]:
        return [self.state[p][key] for p in self._trainable()]

    @property
    def _rows(self) -> range:
        """This process's particles (all ``N`` unless ``distributed="sharded"``)."""
        return self._placement.rows

    @property
    def _comm(self) -> distributed_.SwarmComm | None:
        return self._placement.comm

    def _keeps_pbest(self) -> bool:
        """Personal bests are stored only with memory across batches (``forget < 1``)."""
        return self.forget < 1.0

    def _has_pbest(self) -> bool:
        return all("pbest" in self.state[p] for p in self._trainable())

    # -------------------------------------------------------------- the swarm
    @property
    def random(self) -> SwarmRandom:
        """The swarm's own random stream (initial scatter, ``r1``, ``r2``, re-seeding): one
        for the whole swarm, or one per particle when ``distributed="sharded"``."""
        if self._random is None:
            seed = self.seed
            if seed is None:  # follow torch.manual_seed, like torch's own initialisers
                seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
            self._random = self._placement.random(self._device(), seed)
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
        members = self._trainable()
        groups = [(g, self._group_trainable(g)) for g in self.param_groups]
        try:
            tensors = self._allocate_swarm(groups, rng)
        except (RuntimeError, MemoryError) as error:
            if isinstance(error, RuntimeError) and "memory" not in str(error).lower():
                raise
            raise RuntimeError(self._out_of_memory("allocating")) from error
        self.state.update(tensors)
        self._members = members
        self.state[_SWARM] = layout.new_swarm_state(
            self.num_particles, self._device(), rng.integer()
        )
        shard = self._placement.shard_info()
        if shard is not None:
            self.state[_SWARM]["shard"] = shard
        self._buffers = ParticleBuffers()

    def _allocate_swarm(
        self, groups: list[tuple[dict[str, Any], list[Tensor]]], rng: SwarmRandom
    ) -> dict[Tensor, dict[str, Tensor]]:
        return layout.allocate(groups, rng, self._rows, keep_pbest=self._keeps_pbest())

    def _out_of_memory(self, during: str) -> str:
        return layout.out_of_memory_message(
            self._trainable(),
            len(self._rows),
            keep_pbest=self._keeps_pbest(),
            device=self._device(),
            during=during,
        )

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
        self._buffers.write_into_model(self.state[_SWARM])

    @property
    def _step_supports_amp_scaling(self) -> bool:
        """True outside a step, so that ``torch.amp.GradScaler.step`` hands its scale to
        :meth:`step` (which refuses it) instead of unscaling and stepping silently; False
        while particles are scored, so that Lightning's precision plugins keep clipping
        each particle's gradients."""
        return active_request() is None

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
        state is left as it was, the model back on the global best and ``p.grad`` on the
        global best's gradient of the last step that succeeded.

        After the step the model's parameters hold the swarm's global best, and ``p.grad``
        its gradient on this batch (``None`` when the global best was not scored on it).
        """
        contract.refuse_grad_scaler(self)
        for k, group in enumerate(self.param_groups):  # a scheduler or callback wrote them
            check_group(group, f"param group {k}")
        contract.refuse_accumulated_grads(self._trainable(), type(self).__name__)
        if closure is None:
            raise RuntimeError(
                f"{type(self).__name__}.step() needs a closure: a swarm scores N candidate "
                "weight sets per step, so it must be able to re-evaluate the loss for each. "
                "Pass `optimizer.step(closure)` (or `hgpso.vectorized_closure(...)`)."
            )
        self._init_swarm()
        params = self._trainable()
        contract.check_members(self.param_groups, {id(p) for p in params})
        scored = contract.scoring_closure(closure, params, refuse_ddp=self._placement.refuses_ddp)
        swarm = self.state[_SWARM]
        grads_before = [p.grad for p in params]
        losses, grads = self._score_particles(scored, params, grads_before)
        # the bookkeeping and the move are prepared out of place and committed by swapping
        # references (see _advance): the swarm-wide numbers and the random stream are
        # restored from these cheap copies if anything fails
        saved, saved_rng = dict(swarm), self.random.get_state()
        try:
            gbest_grad = self._advance(losses, grads)
        except BaseException as error:
            swarm.clear()
            swarm.update(saved)
            self.random.set_state(saved_rng)
            self._restore_model(params, grads_before)
            if isinstance(error, MemoryError) or "out of memory" in str(error).lower():
                raise RuntimeError(self._out_of_memory("in a step of")) from error
            raise
        self._write_gbest_into_params()
        swarm["evaluations"] += self.num_particles
        for k, p in enumerate(params):
            p.grad = None if gbest_grad is None else gbest_grad[k]
        contract.mark_grads(params)
        finite = losses[torch.isfinite(losses)]
        return finite.min() if finite.numel() else losses.min()

    def _restore_model(self, params: list[Tensor], grads: list[Tensor | None]) -> None:
        """After a failed step: the model on the last global best, ``p.grad`` as it was."""
        self._write_gbest_into_params()
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        contract.mark_grads(params)

    def _score_particles(
        self, closure: Callable[[], Any], params: list[Tensor], grads_before: list[Tensor | None]
    ) -> tuple[Tensor, list[Tensor] | None]:
        """Every particle's loss (all ``N``, agreed over ranks) and this process's particles'
        gradients; on failure the model goes back to the global best, the peers are told."""
        placement = self._placement
        request = EvaluationRequest(params, self._all("position"), self.uses_gradients)
        request.want_fingerprint = placement.wants_fingerprint
        self._buffers.prepare(
            request, self.state[_SWARM], keep=self._keeps_pbest(), n=len(self._rows)
        )
        try:
            losses, grads = evaluate_particles(closure, request)
            if losses.shape != (len(self._rows),):
                raise ValueError(
                    f"expected {len(self._rows)} particle losses, got shape {tuple(losses.shape)}"
                )
            losses = placement.before_exchange(losses, grads)
        except BaseException as error:
            self._restore_model(params, grads_before)
            placement.report_failure(error)
            raise
        try:
            return placement.exchange(losses, grads, request.batch_fingerprint)
        except BaseException:
            self._restore_model(params, grads_before)
            raise

    def _advance(self, losses: Tensor, grads: list[Tensor] | None) -> list[Tensor] | None:
        """Bookkeeping, then the move: prepared into new tensors, then committed; returns
        the new global best's gradient on this batch (``None`` when it was not scored).

        Computed first, without writing to ``self.state``: validity, the new best losses,
        one host read, adaptation, personal and global bests, the move, re-seeded rows,
        the buffers. The commit only assigns references (and launches the fused kernel).
        """
        swarm, placement = self.state[_SWARM], self._placement
        losses = losses.to(self._device())
        valid = placement.valid(losses, grads)
        improved, pbest_losses = bookkeeping.score(
            swarm["pbest_losses"],
            losses,
            valid,
            forget=self.forget,
            keep_pbest=self._keeps_pbest(),
            has_pbest=self._has_pbest(),
        )
        best = pbest_losses.argmin()
        stats = torch.stack(
            [  # one host read per step for everything the bookkeeping needs
                valid.sum().float(),
                improved.sum().float(),
                torch.where(valid, losses, math.inf).min(),
                pbest_losses[best],
                best.float(),
                placement.local(improved).sum().float(),
                improved[best].float(),
                losses[best],
            ]
        ).tolist()
        n_valid, n_improved, best_now, gbest_loss, b, mine_improved, b_improved, b_loss = stats
        bookkeeping.adapt(
            swarm, self.defaults[OPTIONS_KEY], n_improved / self.num_particles, best_now
        )
        fused = move_.wants_fused(self.fused, self._device(), allowed=placement.fused_allowed)
        olds = self._all("pbest") if self._keeps_pbest() and self._has_pbest() else None
        pbests = bookkeeping.accept_bests(
            self._all("position"),
            olds,
            placement.local(improved),
            int(mine_improved),
            keep_pbest=self._keeps_pbest(),
            in_place_move=fused,
        )
        gbests, gbest_grad, change = self.gbest(), None, None
        if math.isfinite(gbest_loss):  # else no particle has a finite best: the last one stays
            b = int(b)
            change = (b, self._gbest_changed(b, bool(b_improved)))
            scored = grads if grads is not None and b_loss == gbest_loss else None
            gbests, gbest_grad = placement.global_best(b, change[1], pbests, scored, gbests)
        else:
            b, gbest_loss = swarm["gbest_index"], swarm["gbest_loss"]
        moved, launches = move_.move(
            self._group_moves(gbests, grads, pbests),
            fused=fused,
            rng=self.random,
            kernel_seed=swarm["kernel_seed"],
            step=swarm["step"],
            num_groups=len(self.param_groups),
        )
        n_bad = self.num_particles - int(n_valid)
        rows = self._fresh_rows(~placement.local(valid), gbests) if n_bad else []
        if not launches:  # the moved tensors are new: re-seed them before the commit
            bookkeeping.write_rows(moved, rows)
        self._buffers.advance(
            swarm,
            placement,
            placement.local(improved),
            placement.local(valid),
            change,
            self._keeps_pbest(),
        )
        self._commit(moved, pbests, gbests)
        swarm.update(pbest_losses=pbest_losses, gbest_index=int(b), gbest_loss=gbest_loss)
        for launch in launches:  # the fused kernel writes in place: after every check
            launch()
        if launches:
            bookkeeping.write_rows(moved, rows)
        swarm["nan_reseeds"] += n_bad
        swarm["step"] += 1
        return gbest_grad

    def _commit(
        self, moved: list[tuple[Tensor, Tensor]], pbests: list[Tensor], gbests: list[Tensor]
    ) -> None:
        """Swap the new tensors into the state: reference assignments only."""
        keep = self._keeps_pbest()
        for p, (x, v), pb, g in zip(self._trainable(), moved, pbests, gbests, strict=True):
            st = self.state[p]
            st["position"], st["velocity"], st["gbest"] = x, v, g
            if keep:
                st["pbest"] = pb
            else:
                st.pop("pbest", None)  # forget was raised to 1: the stored bests are unused

    def _gbest_changed(self, b: int, improved_b: bool) -> bool:
        """Whether the new global best (particle ``b``'s personal best) may differ from the
        stored one (a sharded swarm's owner of ``b`` then sends it)."""
        swarm = self.state[_SWARM]
        return (
            not self._keeps_pbest()  # forget = 1: the bests are the positions just scored
            or not self._has_pbest()
            or improved_b
            or b != swarm["gbest_index"]
            or not math.isfinite(swarm["gbest_loss"])
        )

    def _group_moves(
        self, gbests: list[Tensor], grads: list[Tensor] | None, pbests: list[Tensor]
    ) -> list[move_.GroupMove]:
        positions, velocities = self._all("position"), self._all("velocity")
        out = []
        for gi, group, ks in self._group_slices():
            hp = self.effective_hyperparameters(group)
            out.append(
                move_.GroupMove(
                    index=gi,
                    ks=ks,
                    positions=[positions[k] for k in ks],
                    velocities=[velocities[k] for k in ks],
                    pbests=[pbests[k] for k in ks],
                    gbests=[gbests[k] for k in ks],
                    grads=None if grads is None else [grads[k] for k in ks],
                    lr=hp["lr"] if self.uses_gradients else 0.0,
                    inertia=hp["inertia"],
                    cognitive=hp["cognitive"],
                    social=hp["social"],
                    max_velocity=group["max_velocity"],
                )
            )
        return out

    def _fresh_rows(self, bad: Tensor, gbests: list[Tensor]) -> list[tuple[int, Tensor, Tensor]]:
        ids = self._placement.particle_ids(bad.nonzero().flatten())
        groups = [(group, ks) for _, group, ks in self._group_slices()]
        return bookkeeping.fresh_rows(bad, groups, self._all("position"), gbests, self.random, ids)

    # --------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        if _SWARM in self.state:
            self.state[_SWARM]["rng_state"] = self.random.get_state()
        sd = super().state_dict()
        if _SWARM in sd["state"]:  # a snapshot, not the live dict the next step mutates
            sd["state"][_SWARM] = copy.deepcopy(sd["state"][_SWARM])
        # the options beside the state, as checkpoints have always kept them
        sd[OPTIONS_KEY] = dict(self.defaults[OPTIONS_KEY])
        sd[checkpoint.CLASS_KEY] = type(self).__name__
        return sd

    def consolidated_state_dict(self, to: int = 0) -> dict[str, Any] | None:
        """A state_dict holding **all** particles, on rank ``to`` (``None`` on the others).

        A collective under ``distributed="sharded"``: every rank of the swarm's process
        group must call it (like ``ZeroRedundancyOptimizer.consolidate_state_dict``). The
        result loads on any number of ranks, and into a single process (see
        :mod:`hgpso.optim.checkpoint`). Without sharding it is :meth:`state_dict`.
        """
        own = self.state_dict()
        placement = self._placement
        if not isinstance(placement, Sharded) or placement.comm is None:
            return own
        shards = placement.gather(own, to)
        if shards is None:
            return None
        return checkpoint.merge_shards(shards, self.num_particles)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a checkpoint; it is checked whole (see :mod:`hgpso.optim.checkpoint`) before
        anything changes, so a refused one leaves this optimizer as it was."""
        super().load_state_dict(state_dict)

    @staticmethod
    def _after_load(opt: Optimizer) -> None:
        assert isinstance(opt, SwarmOptimizer)
        opt.defaults[OPTIONS_KEY] = opt.__dict__.pop("_loaded_options")
        opt.param_groups = [ParamGroup(g) for g in opt.param_groups]
        opt._members = None
        opt._random = None
        opt._buffers = ParticleBuffers(from_checkpoint=_keeps_buffers(opt))
        if _SWARM not in opt.state:
            return
        members = opt._trainable()
        swarm = opt.state[_SWARM]
        swarm["pbest_losses"] = swarm["pbest_losses"].to(opt._device(), torch.float32)
        layout.fill_in(opt.state, members, keep_pbest=opt._keeps_pbest())
        opt._members = members
        if swarm.get("rng_state") is not None:
            opt.random.set_state(swarm["rng_state"])

    def __getstate__(self) -> dict[str, Any]:
        if _SWARM in self.state:  # the live random stream travels with the state
            self.state[_SWARM]["rng_state"] = self.random.get_state()
        return super().__getstate__()

    def __setstate__(self, state: dict[str, Any]) -> None:
        loading = "_placement" in self.__dict__  # torch's load_state_dict calls this too
        super().__setstate__(state)
        self.param_groups = [ParamGroup(g) for g in self.param_groups]
        if loading:
            return
        # unpickled (or deep-copied): the options are in the state; older pickles lack them
        if OPTIONS_KEY not in self.defaults:
            n = self.state[_SWARM]["pbest_losses"].numel() if _SWARM in self.state else 1
            self.defaults[OPTIONS_KEY] = {"num_particles": n, **OLD_DEFAULTS}
        if "inertia" in self.defaults:
            self.defaults.setdefault("momentum", self.defaults["inertia"])
        self._members = None
        # a process group does not pickle: the copy shares the default group, if any
        mode = distributed_.check_mode(self.distributed)
        self._attach(distributed_.SwarmComm.resolve(None, mode))
